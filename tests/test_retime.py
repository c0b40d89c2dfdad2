"""`bench retime`: one sitting's timings written into every stored result of the same architecture."""

import json

import pytest

import bench.results.retime
from bench.cli import main
from bench.errors import BenchError
from bench.plugins import get_registry

TIMED = ("latency", "throughput", "speedup")


@pytest.fixture(scope="module")
def smoke_results(tmp_path_factory, data_dir):
    """kd (single students, one head) and finetune-mtl (one student with a head per domain)."""
    results = tmp_path_factory.mktemp("results")
    mp = pytest.MonkeyPatch()
    mp.setenv("BENCH_CACHE_DIR", str(tmp_path_factory.mktemp("store")))
    assert main(["run", "--methods", "kd,finetune-mtl", "--suite", "amazon", "--preset", "smoke",
                 "--domains", "books,dvd", "--results-dir", str(results), "--data-dir", str(data_dir)]) == 0
    mp.undo()
    return results


def read_all(results):
    return {p.relative_to(results).as_posix(): json.loads(p.read_text()) for p in sorted(results.rglob("*.json"))}


@pytest.fixture
def results(smoke_results, tmp_path):
    """A copy of the smoke store for a test to rewrite."""
    results = tmp_path / "runs"
    for path, record in read_all(smoke_results).items():
        (results / path).parent.mkdir(parents=True, exist_ok=True)
        (results / path).write_text(json.dumps(record))
    return results


def test_one_timing_per_architecture_written_into_every_result(results, monkeypatch):
    before = read_all(results)
    sittings = []
    measure = bench.results.retime.measure_latencies

    def counting(models, config, device):
        sittings.append(sorted(len(model.heads) for model in models))
        return measure(models, config, device)

    monkeypatch.setattr(bench.results.retime, "measure_latencies", counting)
    assert main(["retime", "--results-dir", str(results)]) == 0

    # the teacher, the one-head student, the two-head student: each timed once for four results,
    # all three in turns
    assert sittings == [[1, 1, 2]]
    after = read_all(results)
    assert sorted(after) == sorted(before)
    by_heads = {}
    for path, record in after.items():
        old = before[path]
        old_latency = old["metrics"]["latency"]
        for name in TIMED:
            old["metrics"].pop(name)
        new_metrics = {k: v for k, v in record["metrics"].items() if k not in TIMED}
        assert new_metrics == old["metrics"]  # accuracy, F1, compression as they were
        assert {k: v for k, v in record.items() if k not in ("metrics", "teacher", "retimed")} == \
            {k: v for k, v in old.items() if k not in ("metrics", "teacher")}
        assert record["retimed"]["git"] and record["retimed"]["machine"]["cpu_count"]
        kind = record["method"]["student_kind"]
        by_heads.setdefault(kind, []).append((json.dumps(record["metrics"]["latency"]),
                                              json.dumps(record["teacher"]["latency"] if record["teacher"] else None)))
        lat, teacher = record["metrics"]["latency"], record["teacher"]
        if teacher is not None:
            for b in (1, 8):
                assert record["metrics"]["speedup"][f"batch_{b}"] == pytest.approx(
                    teacher["latency"][f"batch_{b}"]["median_ms"] / lat[f"batch_{b}"]["median_ms"], abs=1e-3)
        assert record["metrics"]["throughput"]["examples_per_second"] == pytest.approx(
            8 / (lat["batch_8"]["median_ms"] / 1e3), abs=0.01)
        conditions = ("seq_len", "repeats", "warmup", "threads", "device")  # those it was timed under
        assert {k: lat[k] for k in conditions} == {k: old_latency[k] for k in conditions}
    assert len(set(by_heads["single"])) == 1 and len(set(by_heads["multi"])) == 1  # one sitting each
    sittings = {r["retimed"]["created"] for r in after.values()}
    assert len(sittings) == 1


def test_the_report_says_when_all_latencies_come_from_one_sitting(results, capsys):
    assert main(["report", "--results-dir", str(results), "--versus", "none"]) == 0
    assert "both timed in the same run" in capsys.readouterr().out
    assert main(["retime", "--results-dir", str(results), "--suite", "amazon"]) == 0
    day = json.loads(next(results.rglob("*.json")).read_text())["retimed"]["created"][:10]
    assert main(["report", "--results-dir", str(results), "--versus", "none"]) == 0
    assert f"all timed in one sitting (`bench retime`, {day})" in capsys.readouterr().out

    one = next(results.rglob("*.json"))  # a run timed again in a sitting of its own
    record = json.loads(one.read_text())
    record["retimed"]["created"] = "2027-01-01T00:00:00+00:00"
    one.write_text(json.dumps(record))
    assert main(["report", "--results-dir", str(results), "--versus", "none"]) == 0
    assert "timed in several sittings (`bench retime` times them all in one)" in capsys.readouterr().out


def test_a_result_timed_on_a_device_this_machine_lacks_stops_the_sitting_with_nothing_rewritten(
        smoke_results, tmp_path, monkeypatch):
    results = tmp_path / "runs"
    files = read_all(smoke_results)
    for i, (path, record) in enumerate(files.items()):
        if i == len(files) - 1:  # the last one read: the others were checked, none written
            record["metrics"]["latency"]["device"] = "cuda"
        (results / path).parent.mkdir(parents=True, exist_ok=True)
        (results / path).write_text(json.dumps(record))
    before = {p: p.read_bytes() for p in results.rglob("*.json")}
    monkeypatch.setattr(bench.results.retime.torch.cuda, "is_available", lambda: False)
    with pytest.raises(BenchError, match="was timed on cuda, which this machine lacks") as err:
        bench.results.retime.retime_results(results, get_registry())
    assert "retime it on a machine like the one that ran it" in str(err.value)
    assert {p: p.read_bytes() for p in results.rglob("*.json")} == before


def test_a_suite_filter_leaves_other_suites_alone(results):
    before = {p: p.read_bytes() for p in results.rglob("*.json")}
    assert bench.results.retime.retime_results(results, get_registry(), suite="mnli") == []
    assert {p: p.read_bytes() for p in results.rglob("*.json")} == before
