"""`data prepare`, `data stats` and where the data dir comes from."""

import shutil

import pytest

from bench.cli import main
from bench.data import datadir
from bench.errors import BenchError
from bench.plugins import get_registry


def test_resolution_order(tmp_path, monkeypatch):
    (tmp_path / "env").mkdir()
    (tmp_path / "flag").mkdir()
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("BENCH_DATA_DIR", raising=False)
    with pytest.raises(BenchError, match="data dir 'data' does not exist") as err:
        datadir.resolve_data_dir(None)
    assert "data prepare" in str(err.value)
    (tmp_path / "data").mkdir()
    assert datadir.resolve_data_dir(None) == "data"
    monkeypatch.setenv("BENCH_DATA_DIR", "env")
    assert datadir.resolve_data_dir(None) == "env"
    assert datadir.resolve_data_dir("flag") == "flag"


def test_prepare_copies_a_local_copy_and_leaves_it_alone_after(tmp_path, data_dir, capsys):
    target = tmp_path / "data"
    assert main(["data", "prepare", "--from", str(data_dir), "--to", str(target)]) == 0
    out = capsys.readouterr().out
    assert "amazon: copied from" in out and "mnli: copied from" in out
    review = "amazon/books/positive.review"
    assert (target / review).read_bytes() == (data_dir / review).read_bytes()
    assert (target / "mnli/MNLI/train.tsv").stat().st_size == (data_dir / "mnli/MNLI/train.tsv").stat().st_size
    assert main(["data", "prepare", "--from", str(data_dir), "--to", str(target)]) == 0
    assert "amazon: already in" in capsys.readouterr().out


def test_a_failed_copy_leaves_nothing_half_written(tmp_path, data_dir, monkeypatch):
    calls, real_copy = [], shutil.copyfile

    def failing_copy(src, dst, **kwargs):
        calls.append(src)
        if len(calls) == 3:
            raise OSError("disk full")
        return real_copy(src, dst)

    monkeypatch.setattr(shutil, "copyfile", failing_copy)
    target = tmp_path / "data"
    with pytest.raises(OSError, match="disk full"):
        datadir.prepare([get_registry().suite("amazon")], target, data_dir)
    assert list(target.iterdir()) == []


def test_offline_with_no_copy_says_what_to_provide(tmp_path):
    with pytest.raises(BenchError, match="'amazon' has no local copy") as err:
        datadir.prepare([get_registry().suite("amazon")], tmp_path / "data", None)
    assert "--from DIR" in str(err.value)


def test_stats_table_for_amazon(data_dir, capsys):
    assert main(["data", "stats", "--suite", "amazon", "--data-dir", str(data_dir)]) == 0
    lines = [l for l in capsys.readouterr().out.splitlines() if l.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    rows = {r[0]: r for r in ([c.strip() for c in l.strip("|").split("|")] for l in lines[2:])}
    want = {"books": (1631, 170, 199), "dvd": (1621, 194, 185), "electronics": (1615, 172, 213),
            "kitchen": (1613, 184, 203)}
    for domain, sizes in want.items():
        row = dict(zip(header, rows[domain]))
        assert (int(row["train"]), int(row["dev"]), int(row["test"])) == sizes
        neg, pos = (int(x.split(":")[1]) for x in row["train labels"].split())
        assert neg + pos == sizes[0] and neg > 0 and pos > 0
