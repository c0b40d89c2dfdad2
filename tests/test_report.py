"""Tables (md, LaTeX, CSV, HTML), paper rows, plots and the generated page, all from result
records written here: nothing is trained."""

import io
import logging
import math
import os
import re
import struct
from html.parser import HTMLParser
from pathlib import Path

import pandas as pd
import pytest

from bench.cli import main
from bench.errors import BenchError
from bench.results.paper import read_paper
from bench.results.plots import pareto_front, write_plots
from bench.results.records import SCHEMA_VERSION, RunKey, iter_results, write_result
from bench.results.render import build_report, render
from bench.results.report import build_tables, with_convergence
from bench.results.tables import summarize

ORDERS = {"amazon": ("books", "dvd", "electronics")}
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def timing(ms):
    return {"device": "cpu", "threads": 2, "seq_len": 128, "warmup": 5, "repeats": 20,
            "batch_1": {"median_ms": ms, "iqr_ms": ms / 10}, "batch_32": {"median_ms": ms * 20, "iqr_ms": ms}}


def record(method="kd", domain="books", seed=1, acc=0.8, *, teacher_acc=0.9, preset="smoke", ratio=1.0,
           params=2_000_000, student_ms=None, teacher_ms=40.0):
    """A stored result; `student_ms` adds the newer fields (latency, speed-up, macro-F1 ...)."""
    rec = {
        "schema_version": SCHEMA_VERSION, "seed": seed, "preset": preset,
        "suite": {"name": "amazon", "domain": domain, "train_ratio": ratio},
        "method": {"name": method, "config": {}},
        "teacher": None if method == "finetune" else {
            "ref": "random:tiny", "key": f"t-{domain}-{ratio}", "test_accuracy": teacher_acc,
            "params": {"total": 4_000_000, "non_embedding": 1_000_000}},
        "machine": {"world_size": 1},
        "train": {"steps": 10, "history": [{"step": 10, "dev_accuracy": 0.5}]},
        "metrics": {"accuracy": acc, "params": {"total": params, "non_embedding": 500_000}},
    }
    if student_ms is not None:
        rec["metrics"] |= {"macro_f1": acc - 0.05, "latency": timing(student_ms),
                           "throughput": {"examples_per_second": 32e3 / (student_ms * 20)},
                           "speedup": {"batch_1": teacher_ms / student_ms, "batch_32": teacher_ms / student_ms},
                           "compression": 4_000_000 / params}
        if rec["teacher"] is not None:
            rec["teacher"]["latency"] = timing(teacher_ms)
    return rec


def store(root, records):
    for r in records:
        key = RunKey(r["suite"]["name"], r["preset"], r["method"]["name"], r["suite"]["domain"], r["seed"],
                     r["suite"]["train_ratio"])
        write_result(key.path(root), r)
    return root


@pytest.fixture
def old_store(tmp_path):
    """Records of the first schema: no latency, speed-up or macro-F1."""
    runs = [record("kd", d, seed, a) for seed, accs in ((1, (0.80, 0.70)), (2, (0.90, 0.60)))
            for d, a in zip(("books", "dvd"), accs)]
    runs += [record("finetune", d, 1, a) for d, a in zip(("books", "dvd"), (0.5, 0.75))]
    return store(tmp_path / "old", runs)


@pytest.fixture
def new_store(tmp_path):
    """kd: 2 seeds, batch-1 latency 9..12 ms; finetune: 12 ms, no teacher; tiny: smaller, 5 ms."""
    runs = [record("kd", d, seed, a, student_ms=ms)
            for (seed, d, a), ms in zip([(1, "books", 0.8), (1, "dvd", 0.7), (2, "books", 0.9), (2, "dvd", 0.6)],
                                        (9.0, 10.0, 11.0, 12.0))]
    runs += [record("finetune", d, 1, a, student_ms=12.0) for d, a in (("books", 0.5), ("dvd", 0.75))]
    runs += [record("tiny", d, 1, a, params=1_500_000, student_ms=5.0) for d, a in (("books", 0.4), ("dvd", 0.65))]
    return store(tmp_path / "new", runs)


def report(root, fmt="md", **kw):
    return build_report(iter_results(root), None, ORDERS, fmt, **kw)


def parse_markdown(text):
    """{method: {column: cell as read, emphasis taken out}} and the set of bold (method, column)."""
    lines = [l for l in text.splitlines() if l.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    rows, bold = {}, set()
    for line in lines[2:]:
        cells = dict(zip(header, (c.strip() for c in line.strip("|").split("|"))))
        bold |= {(cells["method"], k) for k, v in cells.items() if re.fullmatch(r"\*\*[^*]+\*\*.*", v)}
        rows[cells["method"]] = {k: v.replace("**", "") for k, v in cells.items()}
    return rows, bold


# --- markdown -------------------------------------------------------------------------------

def test_report_rows_columns_and_means(old_store):
    text = build_report(iter_results(old_store), None, ORDERS)
    rows, bold = parse_markdown(text)
    assert list(rows) == ["teacher", "finetune", "kd"]
    assert rows["kd"]["books"] == "85.0 ± 7.1"  # mean and sample std of 80 and 90
    assert rows["kd"]["avg"] == "75.0 ± 0.0"  # seed averages: (80+70)/2 = (90+60)/2 = 75
    assert rows["kd"]["seeds"] == "2"
    assert rows["finetune"]["avg"] == "62.5"
    assert rows["teacher"]["books"] == "90.0" and rows["teacher"]["avg"] == "90.0"
    assert rows["kd"]["params"] == "2.0M" and rows["kd"]["non-emb params"] == "0.5M"
    assert "electronics" not in rows["kd"]  # only domains with results become columns
    assert list(rows["kd"]) == ["method", "books", "dvd", "avg", "seeds", "params", "non-emb params",
                                "latency (ms)", "speed-up"]
    # the mean is bold, the std is not; a column where both students tie (params) has no mark
    assert "| **85.0** ± 7.1 " in text
    assert bold == {("kd", "books"), ("finetune", "dvd"), ("kd", "avg")}


def test_report_of_an_empty_dir_says_what_to_do(tmp_path):
    with pytest.raises(BenchError, match="holds no results"):
        build_report(iter_results(tmp_path), None, {})


def test_old_records_without_the_new_fields_render_dashes(old_store):
    rows, _ = parse_markdown(report(old_store))
    for method in ("teacher", "finetune", "kd"):
        assert rows[method]["latency (ms)"] == "-" and rows[method]["speed-up"] == "-"
    f1_rows, bold = parse_markdown(report(old_store, metric="macro_f1"))
    assert {f1_rows[m]["books"] for m in f1_rows} == {"-"} and {f1_rows[m]["avg"] for m in f1_rows} == {"-"}
    assert f1_rows["kd"]["seeds"] == "2" and not any(c in {"books", "dvd", "avg"} for _, c in bold)
    assert "Latency:" not in report(old_store)  # no timing note without timings


def test_latency_and_speedup_are_medians_over_runs(new_store):
    text = report(new_store)
    rows, _ = parse_markdown(text)
    assert rows["teacher"]["latency (ms)"] == "40.0" and rows["teacher"]["speed-up"] == "1.0×"
    assert rows["kd"]["latency (ms)"] == "10.5"  # median of 9, 10, 11, 12
    assert rows["kd"]["speed-up"] == "3.8×"  # median of 40/9 .. 40/12: (40/11 + 40/10) / 2 = 3.82
    assert rows["finetune"]["latency (ms)"] == "12.0" and rows["finetune"]["speed-up"] == "3.3×"
    assert rows["tiny"]["latency (ms)"] == "5.00" and rows["tiny"]["params"] == "1.5M"
    assert "(cpu, 2 threads, sequence length 128)" in text


def test_latencies_timed_under_different_conditions_are_flagged(new_store, caplog):
    gpu = record("tiny", "electronics", 1, 0.7, student_ms=1.0)
    gpu["metrics"]["latency"].update(device="cuda", threads=1)
    store(new_store, [gpu])
    text = report(new_store)
    assert "(mixed: cpu, 2 threads, sequence length 128; cuda, 1 thread, sequence length 128)" in text
    assert "amazon/smoke: latencies were measured under different conditions" in caplog.text


def test_the_best_measured_student_is_bold_and_the_teacher_is_not_ranked(new_store):
    text = report(new_store)
    _, bold = parse_markdown(text)
    # the teacher has the best accuracy (90) but is the reference, not a contender
    assert bold == {("kd", "books"), ("finetune", "dvd"), ("kd", "avg"), ("tiny", "params"),
                    ("tiny", "latency (ms)"), ("tiny", "speed-up")}
    assert "Bold: the best measured student in each column" in text and "the teacher is not ranked" in text


def test_macro_f1_is_reported_when_asked(new_store):
    text = report(new_store, metric="macro_f1")
    rows, _ = parse_markdown(text)
    assert "test macro-F1 (%)" in text.splitlines()[0]
    assert rows["kd"]["books"] == "80.0 ± 7.1"  # (0.75, 0.85) in the fixture
    assert rows["teacher"]["books"] == "-"  # the teacher's record holds test accuracy only


def test_few_shot_runs_get_their_own_table(new_store):
    store(new_store, [record("kd", d, 1, 0.6, ratio=0.1, student_ms=10.0) for d in ("books", "dvd")])
    tables = build_tables(iter_results(new_store), "amazon", ORDERS)
    assert [(t.title, t.slug) for t in tables] == [
        ("amazon (smoke preset, 0.1 of train): test accuracy (%)", "amazon-r0.1-smoke"),
        ("amazon (smoke preset): test accuracy (%)", "amazon-smoke")]
    assert [r.method for r in tables[0].rows] == ["teacher", "kd"]


# --- CSV, LaTeX, HTML -----------------------------------------------------------------------

def test_csv_is_plain_numbers_one_row_per_method(new_store):
    text = report(new_store, "csv")
    assert "**" not in text and "±" not in text and "×" not in text
    df = pd.read_csv(io.StringIO(text)).set_index("method")
    assert list(df.index) == ["teacher", "finetune", "kd", "tiny"]
    assert list(df.columns) == ["suite", "train_ratio", "preset", "source", "books_mean", "books_std", "dvd_mean",
                                "dvd_std", "avg_mean", "avg_std", "seeds", "unconverged", "params",
                                "non_embedding_params", "latency_ms", "speedup", "train_minutes", "teacher_minutes"]
    kd = df.loc["kd"]
    assert kd["books_mean"] == 85.0 and kd["books_std"] == pytest.approx(50 ** 0.5, abs=1e-4)
    assert kd["avg_mean"] == 75.0 and kd["avg_std"] == 0.0 and kd["seeds"] == 2
    assert kd["params"] == 2_000_000 and kd["latency_ms"] == 10.5
    assert pd.isna(kd["unconverged"])  # one evaluation at the last step: convergence unknown, not 0
    assert kd["speedup"] == pytest.approx((40 / 11 + 40 / 10) / 2, abs=1e-4)
    assert pd.isna(df.loc["finetune", "books_std"])  # one seed: no std, not 0
    assert pd.isna(df.loc["teacher", "seeds"]) and df.loc["teacher", "speedup"] == 1.0
    assert df.loc["teacher", "params"] == 4_000_000 and set(df["source"]) == {"measured"}
    assert df["params"].dtype.kind == "i" and df["books_mean"].dtype.kind == "f"


def latex_rows(text):
    """The tabular's column spec and its rows, each split at unescaped &."""
    spec = re.search(r"\\begin\{tabular\}\{([lcr]+)\}", text).group(1)
    body = text[text.index(r"\toprule"):text.index(r"\bottomrule")]
    lines = [l for l in body.splitlines() if l.strip() not in (r"\toprule", r"\midrule")]
    assert all(l.endswith(r" \\") for l in lines)
    return spec, [[c.strip() for c in re.split(r"(?<!\\)&", l.removesuffix(r" \\"))] for l in lines]


def test_latex_is_booktabs_with_one_spec_per_column_and_escaped(new_store, tmp_path):
    paper = tmp_path / "paper.csv"
    paper.write_text("method,books,avg\nBERT_6 (50% & more),86.1,85.0\n")
    text = report(new_store, "latex", paper=read_paper(paper))
    rules = [l for l in text.splitlines() if l in (r"\toprule", r"\midrule", r"\bottomrule")]
    assert rules == [r"\toprule", r"\midrule", r"\midrule", r"\midrule", r"\bottomrule"]  # teacher|ours|paper
    spec, rows = latex_rows(text)
    assert spec == "l" + "r" * 8 and {len(r) for r in rows} == {len(spec)}
    header = dict(zip(rows[0], range(len(rows[0]))))
    cells = {r[0]: r for r in rows[1:]}
    assert list(cells) == ["teacher", "finetune", "kd", "tiny", r"BERT\_6 (50\% \& more)\textsuperscript{\dag}"]
    assert cells["kd"][header["books"]] == r"\textbf{85.0} $\pm$ 7.1"
    assert cells["tiny"][header["speed-up"]] == r"\textbf{8.0$\times$}"
    assert r"\caption{amazon (smoke preset): test accuracy (\%)}" in text
    assert r"\textsuperscript{\dag} reported in the paper, not measured here" in text
    code = "\n".join(l for l in text.splitlines() if not l.startswith("%"))
    assert not re.search(r"(?<!\\)[%&_#]", code.replace(" & ", " "))  # every special character escaped


class TableParser(HTMLParser):
    """Header cells, body rows (cell text) and the (row, column) cells holding <b>."""

    def __init__(self):
        super().__init__()
        self.header, self.rows, self.bold, self.section, self.cell = [], [], set(), None, None

    def handle_starttag(self, tag, attrs):
        if tag in ("thead", "tbody"):
            self.section = tag
        elif tag == "tr" and self.section == "tbody":
            self.rows.append([])
        elif tag in ("td", "th"):
            self.cell = ""
        elif tag == "b":
            self.bold.add((len(self.rows) - 1, len(self.rows[-1])))

    def handle_endtag(self, tag):
        if tag in ("td", "th"):
            (self.header if self.section == "thead" else self.rows[-1]).append(self.cell)
            self.cell = None

    def handle_data(self, data):
        if self.cell is not None:
            self.cell += data


def test_html_table_parses_back_escaped(new_store, tmp_path):
    paper = tmp_path / "paper.csv"
    paper.write_text("method,books\n<PKD> & co,84.0\n")
    text = report(new_store, "html", paper=read_paper(paper))
    parser = TableParser()
    parser.feed(text)
    assert parser.header == ["method", "books", "dvd", "avg", "seeds", "params", "non-emb params",
                             "latency (ms)", "speed-up"]
    rows = {r[0]: dict(zip(parser.header, r)) for r in parser.rows}
    assert list(rows) == ["teacher", "finetune", "kd", "tiny", "<PKD> & co†"]
    assert "&lt;PKD&gt; &amp; co†" in text
    assert rows["kd"]["books"] == "85.0 ± 7.1" and rows["<PKD> & co†"]["dvd"] == "-"
    bold = {(parser.rows[i][0], parser.header[j]) for i, j in parser.bold}
    assert ("kd", "books") in bold and ("tiny", "latency (ms)") in bold and not any(m == "teacher" for m, _ in bold)


def test_an_unknown_format_is_refused(old_store):
    with pytest.raises(BenchError, match="unknown report format 'pdf'"):
        report(old_store, "pdf")


# --- rows a paper reports -------------------------------------------------------------------

def test_paper_rows_are_marked_reported_and_never_ranked(new_store, tmp_path, caplog):
    paper = tmp_path / "paper.csv"
    paper.write_text("method,books,dvd,avg,params,venue\nTinyBERT,95.5 ± 0.4,96.0,95.75,14.5M,EMNLP\n"
                     "PKD,92%,,,66\n")
    rows = read_paper(paper, ORDERS["amazon"])
    assert "columns venue are not domains; left out" in caplog.text
    text = report(new_store, paper=rows)
    table, bold = parse_markdown(text)
    assert list(table)[-2:] == ["TinyBERT†", "PKD†"]
    assert table["TinyBERT†"]["books"] == "95.5 ± 0.4" and table["TinyBERT†"]["params"] == "14.5M"
    assert table["PKD†"]["books"] == "92.0" and table["PKD†"]["dvd"] == "-" and table["PKD†"]["params"] == "66.0M"
    assert not any(m.endswith("†") for m, _ in bold) and ("kd", "books") in bold  # 95.5 beats kd, unranked
    assert text.rstrip().endswith("† reported in the paper, not measured here")
    df = pd.read_csv(io.StringIO(report(new_store, "csv", paper=rows))).set_index("method")
    assert df.loc["TinyBERT", "source"] == "reported" and df.loc["kd", "source"] == "measured"
    assert df.loc["TinyBERT", "books_std"] == 0.4 and df.loc["TinyBERT", "params"] == 14_500_000


@pytest.mark.parametrize("content,message", [
    (None, "paper file {path} does not exist"),
    ("", "paper file {path} is not a readable CSV"),
    ("name,books\nkd,85\n", "paper file {path} has no `method` column (columns: name, books)"),
    ("method,books\nkd,eighty\n", "{path}:2: books is 'eighty', not a number"),
    ("method,books\nkd,85\npkd,0.85\n", "{path}:3: books = '0.85' is not a score in percent"),
    ("method,books\nkd,85\nkd,86\n", "paper file {path} names kd more than once"),
    ("method,params\nkd,14.5B\n", "{path}:2: params is '14.5B', not a number"),
])
def test_bad_paper_files_say_what_and_what_to_do(tmp_path, content, message):
    path = tmp_path / "paper.csv"
    if content is not None:
        path.write_text(content)
    with pytest.raises(BenchError) as caught:
        read_paper(path)
    what, hint = str(caught.value).split("\n")
    assert what.startswith(message.format(path=path)) and hint.strip()


def test_the_cli_turns_a_bad_paper_file_into_exit_2(old_store, tmp_path, capsys):
    assert main(["report", "--results-dir", str(old_store), "--paper", str(tmp_path / "none.csv")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: paper file {tmp_path / 'none.csv'} does not exist") and "Traceback" not in err


# --- plots ----------------------------------------------------------------------------------

def png_size(path):
    data = Path(path).read_bytes()
    assert data[:8] == PNG_SIGNATURE and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_pareto_front_keeps_the_points_nothing_beats():
    points = [(40.0, 90.0), (10.5, 75.0), (12.0, 62.5), (5.0, 52.5), (10.5, 70.0), (50.0, 89.0)]
    assert pareto_front(points) == [(5.0, 52.5), (10.5, 75.0), (40.0, 90.0)]
    assert pareto_front([]) == []


def test_plots_are_written_as_pngs(new_store, tmp_path):
    tables = build_tables(iter_results(new_store), "amazon", ORDERS)
    written = write_plots(tables, tmp_path / "plots")
    assert written == {"amazon-smoke": [tmp_path / "plots/amazon-smoke-accuracy-latency.png",
                                        tmp_path / "plots/amazon-smoke-domains.png"]}
    for path in written["amazon-smoke"]:
        assert png_size(path) == (768, 480)  # 6.4 x 4.0 inches at 120 dpi
        assert path.stat().st_size > 5_000  # axes, points and labels, not a blank canvas


def test_eleven_and_more_students_get_colours_of_their_own_none_grey_like_the_teachers():
    from matplotlib.colors import to_rgb

    from bench.results.plots import _student_color

    colours = [to_rgb(_student_color(i)) for i in range(18)]
    assert len(set(colours)) == 18
    assert all(max(c) - min(c) > 0.1 for c in colours)  # a grey has equal channels (teachers: 0.55)


def test_a_plot_whose_fields_are_missing_is_skipped_with_a_warning(old_store, tmp_path, caplog):
    caplog.set_level(logging.WARNING)
    written = write_plots(build_tables(iter_results(old_store), None, ORDERS), tmp_path / "plots")
    assert written == {"amazon-smoke": [tmp_path / "plots/amazon-smoke-domains.png"]}
    assert "no method has both a batch-1 latency and an average" in caplog.text
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == ["amazon-smoke-domains.png"]


# --- the CLI and the generated page ---------------------------------------------------------

def test_the_cli_prints_csv_on_stdout_and_names_files_on_stderr(new_store, tmp_path, capsys):
    plots = tmp_path / "plots"
    assert main(["report", "--results-dir", str(new_store), "--suite", "amazon", "--format", "csv",
                 "--plots", str(plots)]) == 0
    out, err = capsys.readouterr()
    df = pd.read_csv(io.StringIO(out))
    assert list(df["method"]) == ["teacher", "finetune", "kd", "tiny"]
    assert f"wrote {plots / 'amazon-smoke-accuracy-latency.png'}" in err.splitlines()


def test_write_gives_the_same_page_for_the_same_store(new_store, tmp_path, capsys):
    out = tmp_path / "site"
    argv = ["report", "--results-dir", str(new_store), "--plots", str(out / "plots")]
    assert main([*argv, "--write", str(out / "A.md")]) == 0
    assert main([*argv, "--write", str(tmp_path / "elsewhere" / "B.md")]) == 0
    page = (out / "A.md").read_bytes()
    assert page == (tmp_path / "elsewhere" / "B.md").read_bytes()  # where a page is written changes nothing
    text = page.decode()
    lines = text.splitlines()
    assert lines[0] == "# kd-bench results"
    assert lines[2] == (f"Generated by `python -m bench report --results-dir {new_store} --plots {out / 'plots'} "
                        "--write <this file>` from the result store; do not edit it by hand, rerun that command.")
    assert "## amazon (smoke preset): test accuracy (%)" in lines
    rows, _ = parse_markdown(text)
    assert rows["kd"]["books"] == "85.0 ± 7.1" and rows["tiny"]["latency (ms)"] == "5.00"
    links = re.findall(r"!\[[^]]*\]\(([^)]+)\)", text)
    base = new_store.resolve().parent  # links are relative to the results dir's parent
    assert links == [os.path.relpath(out / "plots" / f"amazon-smoke-{kind}.png", base)
                     for kind in ("accuracy-latency", "domains")]
    assert all(png_size(base / link) for link in links)


def test_a_page_written_without_plots_links_those_drawn_beside_the_store(new_store, tmp_path, capsys):
    """`report --write OTHER.md` reproduces the committed page byte for byte, plot links included:
    it links the plots an earlier `--plots` drew in plots/ beside the results dir."""
    argv = ["report", "--results-dir", str(new_store)]
    assert main([*argv, "--write", str(tmp_path / "before.md")]) == 0
    assert "![" not in (tmp_path / "before.md").read_text()  # nothing drawn yet, nothing linked
    assert main([*argv, "--plots", str(new_store.parent / "plots")]) == 0
    assert main([*argv, "--write", str(tmp_path / "README.md")]) == 0
    assert main([*argv, "--write", str(tmp_path / "elsewhere" / "OTHER.md")]) == 0
    page = (tmp_path / "README.md").read_text()
    assert page == (tmp_path / "elsewhere" / "OTHER.md").read_text()
    assert f"`python -m bench report --results-dir {new_store} --write <this file>`" in page
    assert re.findall(r"!\[[^]]*\]\(([^)]+)\)", page) == [
        "plots/amazon-smoke-accuracy-latency.png", "plots/amazon-smoke-domains.png"]


def test_teacher_training_counts_each_teachers_recorded_training_once(tmp_path):
    """The runs of one process that shared a teacher's training each record it, a run that reused
    the teacher records 0, and one on a fresh machine that trained it again records another time:
    a teacher's training is the median of its distinct trainings, counted once for a method however
    many seeds distilled from it; 0 for a method without a teacher, unknown ("-") when a teacher's
    training was never recorded; a newer record holds its teacher's training whoever trained it."""
    def trained(rec, seconds):
        rec["timings"] = {"teacher_seconds": seconds}
        return rec

    runs = [trained(record("kd", "books", 1), 120.0), trained(record("tiny", "books", 1), 120.0),  # one training
            trained(record("kd", "books", 2), 0.0),  # the store's teacher, reused
            trained(record("kd", "books", 3), 300.0), trained(record("kd", "books", 4), 150.0),  # trained again
            trained(record("kd", "dvd", 1), 60.0), trained(record("finetune", "books", 1), 0.0)]
    [table] = build_tables(iter_results(store(tmp_path / "r", runs)), None, ORDERS, versus="kd")
    rows = {r.method: r for r in table.rows}
    assert rows["kd"].teacher_minutes == pytest.approx((150 + 60) / 60)  # books: the median of 120, 300, 150
    assert rows["tiny"].teacher_minutes == pytest.approx(2.5)
    assert rows["finetune"].teacher_minutes == 0.0
    assert rows["teacher"].teacher_minutes == pytest.approx(3.5)
    assert {c.method: c.teacher_minutes for c in table.comparisons}["tiny"] == pytest.approx(2.5)
    [summary] = summarize([table])
    assert {r.method: r.teacher_minutes for r in summary.rows}["kd"] == pytest.approx(3.5)

    newer = record("pkd", "electronics", 1)  # a newer record names its teacher's training though it reused it
    newer["teacher"]["train_seconds"], newer["timings"] = 90.0, {"teacher_seconds": 0.0}
    [table] = build_tables(iter_results(store(tmp_path / "n", [*runs, newer])), None, ORDERS)
    assert {r.method: r.teacher_minutes for r in table.rows}["pkd"] == pytest.approx(1.5)
    runs.append(record("kd", "kitchen", 1))  # no timings: its teacher's training is unknown
    [table] = build_tables(iter_results(store(tmp_path / "r", runs)), None, ORDERS)
    rows = {r.method: r for r in table.rows}
    assert rows["kd"].teacher_minutes is None and rows["teacher"].teacher_minutes is None
    assert rows["tiny"].teacher_minutes == pytest.approx(2.5)


def test_a_teacher_trained_again_with_another_result_is_shown_and_named(tmp_path, capsys):
    """books' teacher came out at 90% for kd and, trained again under the same key, 86% for pkd: its
    cell is their mean ± std, the average uses that mean, and the note names the teacher with both
    scores; dvd's teacher, reused by both (the same score), counts once."""
    runs = [record("kd", "books", 1, 0.8, teacher_acc=0.90), record("kd", "dvd", 1, 0.7, teacher_acc=0.80),
            record("pkd", "books", 1, 0.8, teacher_acc=0.86), record("pkd", "dvd", 1, 0.7, teacher_acc=0.80)]
    [table] = build_tables(iter_results(store(tmp_path / "r", runs)), None, ORDERS)
    teacher = next(r for r in table.rows if r.is_teacher)
    assert teacher.scores["books"].mean == pytest.approx(88.0)
    assert teacher.scores["books"].std == pytest.approx(math.sqrt(8.0))
    assert teacher.scores["dvd"].mean == pytest.approx(80.0) and teacher.scores["dvd"].std is None
    assert teacher.scores["avg"].mean == pytest.approx(84.0)
    assert table.retrained_teachers == ["single books (86.0, 90.0)"]
    assert main(["report", "--results-dir", str(tmp_path / "r")]) == 0
    out = capsys.readouterr().out
    assert "1 teacher(s) were trained more than once under one store key" in out
    assert "single books (86.0, 90.0)" in out
    [summary] = summarize([table])
    assert summary.retrained_teachers == table.retrained_teachers
    # one training per teacher: no note
    [table] = build_tables(iter_results(store(tmp_path / "one", runs[:2])), None, ORDERS)
    assert table.retrained_teachers == []
    assert next(r for r in table.rows if r.is_teacher).scores["avg"].mean == pytest.approx(85.0)


def labelled(rec, labels, *, kind=None):
    """`rec` with its test labels stored (as `bench run` writes them) and, given `kind`, its teacher's
    objective and a store key of that teacher's own."""
    rec["test"] = {"labels": labels, "predictions": labels}
    if kind is not None:
        rec["teacher"] |= {"objective": kind, "key": f"{kind}-{rec['suite']['domain']}"}
    return rec


LABELS = {"books": "0011", "dvd": "0001"}  # most frequent label: 50% of books, 75% of dvd; 62.5% averaged


def test_a_teacher_that_had_not_learnt_the_task_is_named_with_the_students_it_taught(tmp_path, capsys):
    """kd's teachers average 72.0%, less than 10 points above the 62.5% of always answering each test
    set's most frequent label: the note names that teacher with kd, whose rank means nothing; metakd's
    meta-teacher (90%) learnt. Beside finetune alone no teacher learnt: the table says it cannot rank
    and bolds no score. At 73.5% kd's teacher counts as learnt; runs that kept no labels are not judged."""
    kd = [labelled(record("kd", d, 1, 0.6, teacher_acc=a), LABELS[d]) for d, a in (("books", 0.70), ("dvd", 0.74))]
    metakd = [labelled(record("metakd", d, 1, 0.8, teacher_acc=0.9), LABELS[d], kind="meta-teacher")
              for d in ("books", "dvd")]
    root = store(tmp_path / "r", kd + metakd)
    [table] = build_tables(iter_results(root), None, ORDERS)
    assert table.majority == pytest.approx(62.5)
    assert table.unlearnt_teachers == ["single 72.0 (kd)"]
    assert main(["report", "--results-dir", str(root), "--versus", "metakd"]) == 0
    text = capsys.readouterr().out
    note = ("1 teacher(s) averaged less than 10 points of test accuracy above the 62.5% of always answering the "
            "test set's most frequent label, so the students distilled from them (in brackets) cannot be ranked: "
            "single 72.0 (kd).")
    assert note in text.splitlines()  # under the table
    assert text.count(note) == 2  # and under the comparison, beside its p-values
    assert "cannot rank the methods" not in text
    [summary] = summarize([table])
    assert summary.unlearnt_teachers == ["amazon: single 72.0 (kd)"]
    assert "so the students distilled from them cannot be ranked there: amazon: single 72.0 (kd)." in render(summary)

    assert table.unranked == frozenset()  # metakd's teacher learnt: its scores may be bold
    [table] = build_tables(iter_results(store(tmp_path / "kd", kd + [record("finetune", d, 1, 0.5)
                                                                       for d in ("books", "dvd")])), None, ORDERS)
    assert table.unranked == {"books", "dvd", "avg"}
    text = render(table)
    assert text.count("No teacher here learnt the task: this table cannot rank the methods (no score is bold). ") == 1
    rows, bold = parse_markdown(text)
    assert bold == set() and rows["kd"]["avg"] == "60.0"  # above finetune's 50.0, yet plain
    [summary] = summarize([table])
    assert summary.unranked == {"amazon"} and " No teacher learnt it in amazon: no score is bold there." in \
        render(summary)
    learnt = [labelled(record("kd", d, 1, 0.6, teacher_acc=a), LABELS[d]) for d, a in (("books", 0.70), ("dvd", 0.77))]
    [table] = build_tables(iter_results(store(tmp_path / "learnt", learnt)), None, ORDERS)
    assert table.unlearnt_teachers == [] and "learnt the task" not in render(table)
    [table] = build_tables(iter_results(store(tmp_path / "old", [record("kd", d, 1, 0.6, teacher_acc=0.5)
                                                                   for d in ("books", "dvd")])), None, ORDERS)
    assert (table.majority, table.unlearnt_teachers) == (None, [])


def test_a_method_is_compared_with_each_other_seed_by_seed(tmp_path, capsys):
    """hrkd (one joint run per seed, 10 min) against kd (a run per domain, 2 min each): their domain
    averages differ by 4.0 and 1.0 points on the seeds both ran (kd's third seed pairs with nothing),
    hrkd leads on books' means only; finetune ran one domain, so no seed pairs."""
    def timed(rec, seconds, kind="single"):
        rec["timings"] = {"train_seconds": seconds}
        rec["method"]["student_kind"] = kind
        return rec

    runs = [timed(record("hrkd", d, s, a), 600.0, "multi")
            for s, accs in ((1, (0.80, 0.70)), (2, (0.84, 0.66))) for d, a in zip(("books", "dvd"), accs)]
    runs += [timed(record("kd", d, s, a), 120.0)
             for s, accs in ((1, (0.70, 0.72)), (2, (0.78, 0.70)), (3, (0.90, 0.90)))
             for d, a in zip(("books", "dvd"), accs)]
    runs.append(timed(record("finetune", "books", 1, 0.5), 60.0))
    root = store(tmp_path / "r", runs)
    [table] = build_tables(iter_results(root), None, ORDERS, versus="hrkd")
    ours, kd, finetune = (next(c for c in table.comparisons if c.method == m) for m in ("hrkd", "kd", "finetune"))
    assert table.comparisons[0] is ours and ours.delta is None and ours.seeds == 2
    assert ours.train_minutes == pytest.approx(10.0) and kd.train_minutes == pytest.approx(4.0)
    assert kd.seeds == 2 and kd.delta.mean == pytest.approx(2.5) and kd.delta.std == pytest.approx(2 ** 0.5 * 1.5)
    assert (kd.leads, kd.domains) == (1, 2)
    assert finetune.seeds == 0 and finetune.delta is None and (finetune.leads, finetune.domains) == (1, 1)

    assert main(["report", "--results-dir", str(root)]) == 0
    text = capsys.readouterr().out
    assert "### amazon (smoke preset): hrkd against each method" in text
    kd_line = next(line for line in text.splitlines() if line.startswith("| kd ") and "of" in line)
    assert [c.strip() for c in kd_line.split("|")[1:-1]] == ["kd", "+2.5 ± 2.1", "2", "1 of 2", "-", "4.0", "-"]
    assert main(["report", "--results-dir", str(root), "--versus", "none"]) == 0
    assert "against each method" not in capsys.readouterr().out
    assert main(["report", "--results-dir", str(root), "--versus", "kd", "--write", str(tmp_path / "page.md")]) == 0
    page = (tmp_path / "page.md").read_text()
    assert "--versus kd --write <this file>" in page and "| hrkd " in page and "-2.5 ± 2.1" in page
    capsys.readouterr()
    assert main(["report", "--results-dir", str(root), "--versus", "hrdk"]) == 2
    assert "--versus hrdk: no table holds runs of that method (they hold finetune, hrkd, kd)" in capsys.readouterr().err


    assert main(["report", "--results-dir", str(root), "--format", "latex"]) == 0
    latex = capsys.readouterr().out
    assert r"\caption{amazon (smoke preset): hrkd against each method}" in latex
    assert r"\label{tab:amazon-smoke-versus}" in latex
    assert r"hrkd $-$ method, avg (points)" in latex  # no bare U+2212, which pdflatex refuses
    assert r"kd & +2.5 $\pm$ 2.1 & 2 & 1 of 2 & - & 4.0 & - \\" in latex
    assert latex.count(r"\begin{table}") == latex.count(r"\end{table}") == 2 and "−" not in latex
    assert main(["report", "--results-dir", str(root), "--format", "html"]) == 0
    page = capsys.readouterr().out
    assert "<h3>amazon (smoke preset): hrkd against each method</h3>" in page
    assert "<tr><td>kd</td><td>+2.5 ± 2.1</td><td>2</td><td>1 of 2</td><td>-</td><td>4.0</td><td>-</td></tr>" in page
    assert main(["report", "--results-dir", str(root), "--format", "latex", "--versus", "none"]) == 0
    assert "against each method" not in capsys.readouterr().out


def test_no_comparison_where_the_versus_method_did_not_run(old_store):
    assert all(t.comparisons == [] and t.versus is None
               for t in build_tables(iter_results(old_store), None, ORDERS, versus="hrkd"))


# --- the summary (a paper's main table) ------------------------------------------------------

def timed(rec, seconds):
    rec["timings"] = {"train_seconds": seconds, "eval_seconds": 1.0}
    return rec


def test_the_summary_holds_each_tables_average_full_data_first(new_store, tmp_path, capsys):
    """A column per (suite, train ratio) of a preset, holding that table's avg cell; a paper's rows
    are left out; the teacher leads; seeds are the fewest of the row's columns; training minutes
    add up over the full-data columns, and are unknown where the row lacks one of them or its runs
    did not record them."""
    store(new_store, [timed(record("kd", d, 1, a, ratio=0.1, student_ms=10.0), 30.0)
                      for d, a in (("books", 0.6), ("dvd", 0.5))])
    store(new_store, [timed(record("tiny", d, 1, 0.6, ratio=0.1, student_ms=5.0), 6.0) for d in ("books", "dvd")])
    store(new_store, [timed(record("tiny", d, 1, a, params=1_500_000, student_ms=5.0), 60.0)  # timed again
                      for d, a in (("books", 0.4), ("dvd", 0.65))])
    store(new_store, [timed(record("fewshot", d, 1, 0.5, ratio=0.1, student_ms=5.0), 6.0) for d in ("books", "dvd")])
    store(new_store, [record("kd", d, 1, 0.7, preset="other", student_ms=10.0) for d in ("books", "dvd")])
    paper = tmp_path / "paper.csv"
    paper.write_text("method,books,dvd,avg\nkd (paper),90,80,85\n")
    argv = ["report", "--results-dir", str(new_store), "--paper", str(paper)]
    assert main([*argv, "--summary"]) == 0
    text = capsys.readouterr().out
    smoke = text.split("### summary (other preset)")[0]
    assert smoke.startswith("### summary (smoke preset): test accuracy (%), the average over each suite's domains")
    rows, bold = parse_markdown(smoke)
    assert list(rows) == ["teacher", "finetune", "kd", "tiny", "fewshot"]  # no paper row
    assert list(rows["kd"])[:3] == ["method", "amazon", "amazon (0.1 of train)"]
    # kd's avg per seed: (80 + 70) / 2 = 75 and (90 + 60) / 2 = 75; few-shot: (60 + 50) / 2 = 55, one seed
    assert rows["kd"]["amazon"] == "75.0 ± 0.0" and rows["kd"]["amazon (0.1 of train)"] == "55.0"
    assert rows["kd"]["seeds"] == "1" and rows["finetune"]["amazon (0.1 of train)"] == "-"
    assert rows["teacher"]["amazon"] == "90.0" and rows["teacher"]["params"] == "4.0M"
    assert bold == {("kd", "amazon"), ("tiny", "amazon (0.1 of train)"), ("tiny", "params")}  # 60 > 55
    # a full-data run per domain: (60 + 60) s a seed, 2.0 min, the few-shot runs not added; kd's
    # full-data runs recorded no time; fewshot has no full-data column, so no cost that compares
    training = "student training (min per seed)"
    assert rows["tiny"][training] == "2.0" and rows["kd"][training] == "-" and rows["teacher"][training] == "-"
    assert rows["fewshot"][training] == "-" and rows["fewshot"]["teacher training (min)"] == "-"
    rows, _ = parse_markdown(text.split("### summary (other preset)")[1])
    assert rows["kd"]["amazon"] == "70.0"
    # the full tables print the domains as before; the summary's cells are their avg cells
    assert main(argv) == 0
    full, _ = parse_markdown(capsys.readouterr().out.split("### amazon (smoke preset)")[1])
    assert full["kd"]["avg"] == "75.0 ± 0.0" and full["tiny"]["avg"] == "52.5"


def test_the_page_opens_with_the_summary_only_where_a_preset_has_several_tables(new_store, tmp_path, capsys):
    argv = ["report", "--results-dir", str(new_store)]
    assert main([*argv, "--write", str(tmp_path / "one.md")]) == 0
    assert "## summary" not in (tmp_path / "one.md").read_text()  # a lone table is its own summary
    store(new_store, [record("kd", d, 1, 0.6, ratio=0.1, student_ms=10.0) for d in ("books", "dvd")])
    assert main([*argv, "--write", str(tmp_path / "two.md")]) == 0
    headings = [l for l in (tmp_path / "two.md").read_text().splitlines() if l.startswith("## ")]
    assert headings == ["## summary (smoke preset): test accuracy (%), the average over each suite's domains",
                        "## amazon (smoke preset, 0.1 of train): test accuracy (%)",
                        "## amazon (smoke preset): test accuracy (%)"]


# --- runs that had not converged ------------------------------------------------------------

def converged(rec, flag, gain):
    """`rec` with its training's convergence recorded, as `bench run` writes it."""
    rec["train"] |= {"converged": flag, "last_quarter_gain": gain}
    return rec


RISING = [{"step": s, "dev_accuracy": a} for s, a in
          ((25, 0.50), (50, 0.60), (60, 0.70), (70, 0.72), (80, 0.74), (90, 0.76), (100, 0.78))]


def test_a_run_that_had_not_converged_marks_its_cells_and_the_summary_counts_it(tmp_path, capsys):
    """kd books seed 2 gained 2.46 points in its last quarter: kd's books cell and average get ‡, a
    footnote names the run; the few-shot table's kd dvd seed 1 too; the summary counts both."""
    runs = [converged(record("kd", d, seed, a), (d, seed) != ("books", 2), 2.46 if (d, seed) == ("books", 2) else 0.2)
            for seed, accs in ((1, (0.80, 0.70)), (2, (0.90, 0.60))) for d, a in zip(("books", "dvd"), accs)]
    runs += [converged(record("finetune", d, 1, a), True, -0.3) for d, a in zip(("books", "dvd"), (0.5, 0.75))]
    runs += [converged(record("kd", d, 1, a, ratio=0.1), d == "books", 1.5 if d == "dvd" else 0.0)
             for d, a in (("books", 0.6), ("dvd", 0.5))]
    root = store(tmp_path / "r", runs)
    few, full = build_tables(iter_results(root), None, ORDERS)
    assert full.unconverged == ["kd books seed 2 (+2.5)"] and few.unconverged == ["kd dvd seed 1 (+1.5)"]
    teacher, finetune, kd = full.rows
    assert (kd.unconverged, kd.unconverged_in) == (1, frozenset({"books", "avg"}))
    assert (finetune.unconverged, finetune.unconverged_in) == (0, frozenset())
    assert (teacher.unconverged, teacher.unconverged_in) == (None, frozenset())

    text = render(full)
    rows, bold = parse_markdown(text)
    assert rows["kd"]["books"] == "85.0 ± 7.1‡" and rows["kd"]["avg"] == "75.0 ± 0.0‡"
    assert rows["kd"]["dvd"] == "65.0 ± 7.1"  # both dvd runs had converged
    assert "| **85.0** ± 7.1‡ " in text and ("kd", "books") in bold  # the mark follows the whole cell
    assert [rows[m][c] for m in ("teacher", "finetune") for c in ("books", "dvd", "avg")] == \
        ["90.0", "90.0", "90.0", "50.0", "75.0", "62.5"]
    assert ("‡ 1 run(s) behind the cell had not converged: the mean dev accuracy of the last quarter of training "
            "was at least 1 point above the quarter before (points gained in brackets): kd books seed 2 (+2.5).") \
        in text.splitlines()
    assert text.count("‡") == 3  # two cells and the footnote
    latex = render(full, "latex")
    assert r"\textbf{85.0} $\pm$ 7.1\textsuperscript{\ddag}" in latex and "‡" not in latex
    df = pd.read_csv(io.StringIO(render(full, "csv"))).set_index("method")
    assert df.loc["kd", "unconverged"] == 1 and df.loc["finetune", "unconverged"] == 0
    assert pd.isna(df.loc["teacher", "unconverged"])

    [summary] = summarize([few, full])
    assert {r.method: r.unconverged for r in summary.rows} == {"teacher": None, "finetune": 0, "kd": 2}
    assert main(["report", "--results-dir", str(root), "--summary"]) == 0
    text = capsys.readouterr().out
    rows, _ = parse_markdown(text)
    assert rows["kd"]["runs not converged"] == "2" and rows["finetune"]["runs not converged"] == "0"
    assert rows["teacher"]["runs not converged"] == "-"
    assert rows["kd"]["amazon"] == "75.0 ± 0.0‡" and rows["kd"]["amazon (0.1 of train)"] == "55.0‡"
    assert rows["finetune"]["amazon"] == "62.5"
    assert ("‡ 2 run(s) behind the cell had not converged: the mean dev accuracy of the last quarter of training "
            "was at least 1 point above the quarter before.") in text.splitlines()


def test_runs_whose_convergence_is_unknown_are_counted_not_taken_for_converged(tmp_path, capsys):
    """A training too short for its eval_every (one dev evaluation, at its last step) cannot be judged:
    the table counts such runs per method and the summary per column; judged runs are not counted."""
    runs = [converged(record("kd", d, 1, 0.7), True, 0.1) for d in ("books", "dvd")]
    runs += [record("pkd", d, 1, 0.7) for d in ("books", "dvd")]  # history: one evaluation, at step 10
    runs += [record("pkd", d, 1, 0.6, ratio=0.1) for d in ("books", "dvd")]
    few, full = build_tables(iter_results(store(tmp_path / "r", runs)), None, ORDERS)
    assert full.unjudged == {"pkd": 2} and few.unjudged == {"pkd": 2}
    assert ("Whether 2 run(s) had converged is unknown (pkd 2): the last two quarters of their training did not "
            "each hold a dev evaluation (too short a training for the preset's eval_every; a smaller one would "
            "judge it).") in render(full).splitlines()
    [summary] = summarize([few, full])
    assert summary.unjudged == {"amazon": 2, "amazon (0.1 of train)": 2}
    assert "Whether 4 run(s) had converged is unknown (amazon 2, amazon (0.1 of train) 2)" in render(summary)
    [table] = build_tables(iter_results(store(tmp_path / "judged", runs[:2])), None, ORDERS)
    assert table.unjudged == {} and "Whether" not in render(table)


def test_records_written_before_convergence_was_recorded_get_it_from_their_dev_history(tmp_path):
    rising = record("kd", "dvd", 1, 0.7)
    rising["train"] = {"steps": 100, "history": RISING}
    judged = with_convergence(rising)
    # (0.74 + 0.76 + 0.78) / 3 - (0.70 + 0.72) / 2 = 5 points
    assert judged["train"]["converged"] is False and judged["train"]["last_quarter_gain"] == 5.0
    assert judged["train"]["history"] == RISING and "converged" not in rising["train"]  # a copy, not an edit
    recorded = converged(record("kd", "dvd", 2, 0.7), True, 0.4)
    recorded["train"] = {**recorded["train"], "steps": 100, "history": RISING}
    assert with_convergence(recorded) is recorded  # what the run recorded stands
    no_history = record("kd", "dvd", 3, 0.7)
    no_history["train"] = {"steps": 100}
    assert with_convergence(no_history) is no_history
    # a joint training is judged on the record's own domain: books flat, dvd rising
    joint = record("hrkd", "books", 1, 0.8)
    joint["suite"]["trained_on"] = ["books", "dvd"]
    joint["train"] = {"steps": 100, "history": [
        {"step": e["step"], "dev_accuracy": (0.8 + e["dev_accuracy"]) / 2,
         "dev": {"books": 0.8, "dvd": e["dev_accuracy"]}} for e in RISING]}
    assert with_convergence(joint)["train"] | {"history": None} == {
        "steps": 100, "history": None, "converged": True, "last_quarter_gain": 0.0}
    joint_dvd = {**joint, "suite": {**joint["suite"], "domain": "dvd"}}
    assert with_convergence(joint_dvd)["train"]["last_quarter_gain"] == 5.0

    # a method of two stages is judged on its last one, whose steps count from 1 again
    staged = record("tinybert", "dvd", 1, 0.7)
    flat_first = [{"step": e["step"], "dev_accuracy": 0.5} for e in RISING]
    staged["train"] = {"steps": 200, "history": flat_first + RISING}
    assert with_convergence(staged)["train"]["last_quarter_gain"] == 5.0

    root = store(tmp_path / "r", [rising, record("kd", "books", 1, 0.8)])
    [table] = build_tables(iter_results(root), None, ORDERS)
    assert table.unconverged == ["kd dvd seed 1 (+5.0)"]
    rows, _ = parse_markdown(render(table))
    assert rows["kd"]["dvd"] == "70.0‡" and rows["kd"]["books"] == "80.0" and rows["kd"]["avg"] == "75.0‡"


# --- the paired significance test of the versus table ----------------------------------------

def outcomes(a_only, b_only, both, neither):
    """Labels (3 classes) and predictions of A and B with those counts, interleaved; where both are
    wrong they answer differently."""
    kinds = ["a"] * a_only + ["b"] * b_only + ["both"] * both + ["neither"] * neither
    kinds = kinds[::2] + kinds[1::2]
    labels = [i % 3 for i in range(len(kinds))]
    a = [y if k in ("a", "both") else (y + 1) % 3 for y, k in zip(labels, kinds)]
    b = [y if k in ("b", "both") else (y + 2 if k == "neither" else y + 1) % 3 for y, k in zip(labels, kinds)]
    return labels, a, b


def sign_test_p(a_only, b_only):
    """The exact two-sided sign test: 2 P(K <= min) for K ~ Bin(a_only + b_only, 1/2), at most 1."""
    n = a_only + b_only
    return min(1.0, 2 * sum(math.comb(n, i) for i in range(min(a_only, b_only) + 1)) / 2 ** n)


def digits(values):
    return "".join(str(v) for v in values)


# (domain, seed) -> hrkd right only, kd right only, both right, both wrong; 10 test examples each
COUNTS = {("books", 1): (4, 1, 4, 1), ("books", 2): (3, 0, 5, 2), ("dvd", 1): (2, 2, 5, 1), ("dvd", 2): (5, 1, 3, 1)}


def predicted_runs():
    """hrkd, kd, tiny (wrong on every example) and finetune (hrkd's predictions) with their test
    predictions; kd also ran a seed 3, which pairs with nothing (all wrong: it would change p)."""
    runs = []
    for (domain, seed), (a_only, b_only, both, neither) in COUNTS.items():
        labels, a, b = outcomes(a_only, b_only, both, neither)
        wrong = [(y + 1) % 3 for y in labels]
        for method, preds, stored_labels in (("hrkd", a, digits(labels)), ("finetune", a, digits(labels)),
                                             ("tiny", wrong, digits(labels)),
                                             ("kd", b, labels if (domain, seed) == ("dvd", 1) else digits(labels))):
            rec = record(method, domain, seed, sum(p == y for p, y in zip(preds, labels)) / len(labels))
            rec["test"] = {"predictions": digits(preds), "labels": stored_labels}  # kd dvd 1: a list, as > 9 classes
            runs.append(rec)
    for domain in ("books", "dvd"):
        rec = record("kd", domain, 3, 0.0)
        rec["test"] = {"predictions": "1" * 10, "labels": "0" * 10}
        runs.append(rec)
    return runs


def versus_rows(text):
    return parse_markdown(text.split("hrkd against each method")[1])


def test_the_versus_table_gives_the_paired_p_value_pooled_over_domains_and_seeds(tmp_path):
    root = store(tmp_path / "r", predicted_runs())
    [table] = build_tables(iter_results(root), None, ORDERS, versus="hrkd")
    c = {v.method: v for v in table.comparisons}
    assert list(c) == ["hrkd", "finetune", "kd", "tiny"]
    # pooled over 2 domains x 2 seeds: hrkd alone right on 4 + 3 + 2 + 5 = 14 examples, kd alone on 4
    assert sum(v[0] for v in COUNTS.values()) == 14 and sum(v[1] for v in COUNTS.values()) == 4
    expected = sign_test_p(14, 4)  # 2 (1 + 18 + 153 + 816 + 3060) / 2^18
    assert expected == pytest.approx(8096 / 2 ** 18, rel=1e-15)
    assert c["kd"].p_value == pytest.approx(expected, rel=1e-12) and c["kd"].examples == 40 and c["kd"].seeds == 2
    # tiny is wrong everywhere: hrkd alone right on all its 8 + 8 + 7 + 8 right answers
    assert c["tiny"].p_value == pytest.approx(sign_test_p(31, 0), rel=1e-12) == 2 / 2 ** 31
    assert (c["finetune"].p_value, c["finetune"].examples) == (1.0, 40)
    assert (c["hrkd"].p_value, c["hrkd"].examples) == (None, 0)

    text = render(table)
    rows, bold = versus_rows(text)
    assert [rows[m]["p"] for m in ("hrkd", "finetune", "kd", "tiny")] == ["-", "1.000", "0.031", "< 0.001"]
    assert {(m, col) for m, col in bold if col == "p"} == {("kd", "p"), ("tiny", "p")}  # bold: p < 0.05
    assert rows["kd"]["hrkd − method, avg (points)"] == "+25.0 ± 14.1"  # seeds: 75 - 60 and 80 - 45
    assert rows["kd"]["domains hrkd leads"] == "2 of 2" and rows["kd"]["paired seeds"] == "2"
    assert re.search(r"\| \*\*0\.031\*\* +\|", text) and re.search(r"\| \*\*< 0\.001\*\* +\|", text)
    latex = render(table, "latex")
    assert r"tiny & +77.5 $\pm$ 3.5 & 2 & 2 of 2 & \textbf{$<$ 0.001} & - & - \\" in latex
    assert r"kd & +25.0 $\pm$ 14.1 & 2 & 2 of 2 & \textbf{0.031} & - & - \\" in latex
    assert "<td>finetune</td><td>+0.0 ± 0.0</td><td>2</td><td>0 of 2</td><td>1.000</td>" in render(table, "html")


def test_the_p_value_is_a_dash_where_a_run_kept_no_predictions(tmp_path):
    runs = predicted_runs()
    for rec in runs:
        if (rec["method"]["name"], rec["suite"]["domain"], rec["seed"]) == ("kd", "dvd", 2):
            del rec["test"]  # written before predictions were recorded
    root = store(tmp_path / "r", runs)
    [table] = build_tables(iter_results(root), None, ORDERS, versus="hrkd")
    c = {v.method: v for v in table.comparisons}
    assert (c["kd"].p_value, c["kd"].examples) == (None, 0)
    assert c["tiny"].p_value == pytest.approx(2 / 2 ** 31)  # the others are still tested
    rows, bold = versus_rows(render(table))
    assert rows["kd"]["p"] == "-" and ("kd", "p") not in bold and rows["tiny"]["p"] == "< 0.001"


def test_runs_tested_on_different_labels_are_refused(tmp_path, capsys):
    runs = predicted_runs()
    for rec in runs:
        if (rec["method"]["name"], rec["suite"]["domain"], rec["seed"]) == ("kd", "dvd", 2):
            labels = digits(outcomes(*COUNTS[("dvd", 2)])[0])
            rec["test"]["labels"] = labels[:-1] + str((int(labels[-1]) + 1) % 3)
    root = store(tmp_path / "r", runs)
    with pytest.raises(BenchError, match="hrkd and kd were tested on different labels for dvd seed 2"):
        build_tables(iter_results(root), None, ORDERS, versus="hrkd")
    assert main(["report", "--results-dir", str(root)]) == 2
    err = capsys.readouterr().err
    assert "error: hrkd and kd were tested on different labels for dvd seed 2" in err and "Traceback" not in err


def test_runs_on_other_data_are_never_averaged(tmp_path):
    """Two seeds of kd on books read other bytes (another suite version): the report stops, naming
    both groups, instead of averaging them into one cell; on the same data they make one cell."""
    def on(version, fingerprint, **kw):
        rec = record(**kw)
        rec["suite"] |= {"version": version, "fingerprint": fingerprint}
        return rec

    same = [on("1", "a" * 64, seed=1, acc=0.6), on("1", "a" * 64, seed=2, acc=0.8),
            on("1", "c" * 64, domain="dvd")]
    (table,) = build_tables(same, None, {"amazon": ["books", "dvd"]})
    assert table.rows[1].scores["books"].mean == pytest.approx(70.0)

    mixed = [on("1", "a" * 64, seed=1, acc=0.6), on("2", "b" * 64, seed=2, acc=0.8)]
    with pytest.raises(BenchError) as info:
        build_tables(mixed, None, {"amazon": ["books"]})
    what, hint = str(info.value).split("\n")
    assert what == ("amazon/smoke: the runs on books were not all on the same data (suite version 1, data "
                    "aaaaaaaaaaaa: kd seed 1; suite version 2, data bbbbbbbbbbbb: kd seed 2)")
    assert hint.strip().startswith("report runs of one data version together")


def test_training_minutes_per_seed_count_only_the_seeds_run_on_every_domain(tmp_path):
    """kd took 2 + 2 min on seeds 1 and 2; its seed 3 has books only (1 min so far): still 4.0 min a
    seed, not (4 + 4 + 1) / 3. finetune, with no seed on both domains, has no figure."""
    def timed(rec, seconds):
        rec["timings"] = {"train_seconds": seconds}
        return rec

    runs = [timed(record("kd", d, s, 0.7), 120.0) for s in (1, 2) for d in ("books", "dvd")]
    runs += [timed(record("kd", "books", 3, 0.7), 60.0), timed(record("finetune", "books", 1, 0.6), 60.0)]
    [table] = build_tables(iter_results(store(tmp_path / "r", runs)), None, ORDERS)
    rows = {row.method: row for row in table.rows}
    assert rows["kd"].train_minutes == pytest.approx(4.0) and rows["finetune"].train_minutes is None
