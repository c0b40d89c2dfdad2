"""`report --ratios`: heatmaps of the domain ratios a method traced during training."""

import pytest
from test_report import record, store

from bench.cli import main
from bench.errors import BenchError
from bench.results.traces import ratio_traces, write_ratio_plots


def traced(domain: str, label: str = "graphkd") -> dict:
    """A joint training's result: every domain's record carries the same traced history."""
    rec = record(label, domain)
    rec["method"]["label"] = label
    rec["train"]["history"] = [
        {"step": s, "dev_accuracy": 0.5,
         "trace": {"domains": ["books", "dvd"], "steps_averaged": 5,
                   "ratios": [[0.5 + d, 0.5 - d], [0.4, 0.6], [0.7, 0.3]]}}
        for s, d in ((5, 0.0), (10, 0.1), (15, 0.2))]
    return rec


def test_one_heatmap_per_training_not_per_domain(tmp_path):
    records = [traced("books"), traced("dvd"), record("kd", "books")]
    traces = ratio_traces(records)
    assert list(traces) == ["amazon-smoke-graphkd-seed1-ratios"]  # the kd run traced nothing
    written = write_ratio_plots(records, tmp_path)
    assert [p.name for p in written] == ["amazon-smoke-graphkd-seed1-ratios.png"]
    assert written[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert ratio_traces(records, suite="mnli") == {}


def test_report_ratios_from_the_store(tmp_path, capsys):
    root = store(tmp_path / "runs", [traced("books"), traced("dvd")])
    assert main(["report", "--results-dir", str(root), "--ratios", str(tmp_path / "plots")]) == 0
    assert "wrote " in capsys.readouterr().err
    assert (tmp_path / "plots" / "amazon-smoke-graphkd-seed1-ratios.png").is_file()


def test_a_store_without_traces_says_what_to_run(tmp_path):
    with pytest.raises(BenchError, match="no result in the store traced domain ratios"):
        write_ratio_plots([record("kd", "books")], tmp_path)


def test_the_page_links_the_heatmaps_drawn_beside_the_store(tmp_path, capsys):
    """Named links under their table, relative to the page's folder; none for a table whose
    trainings traced nothing, and none before `--ratios` has drawn them."""
    root = store(tmp_path / "runs", [traced("books"), traced("dvd"), record("kd", "books", preset="other")])
    assert main(["report", "--results-dir", str(root), "--write", str(tmp_path / "before.md")]) == 0
    assert "Domain ratios" not in (tmp_path / "before.md").read_text()
    assert main(["report", "--results-dir", str(root), "--ratios", str(tmp_path / "plots")]) == 0
    assert main(["report", "--results-dir", str(root), "--write", str(tmp_path / "page.md")]) == 0
    page = (tmp_path / "page.md").read_text()
    assert page.count("Domain ratios per layer over training:") == 1
    smoke = page.split("## amazon (smoke preset)")[1]
    assert "Domain ratios per layer over training: [graphkd seed 1](plots/amazon-smoke-graphkd-seed1-ratios.png)." \
        in smoke
