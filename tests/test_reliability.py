"""A grid that goes on past failed runs and says what failed; two grids sharing one results dir
and one teacher store at once; a grid split into shards (`--shard K/N`) and merged by `report`."""

import io
import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter

import pandas as pd
import pytest

from bench.api import DataConfig
from bench.cli import main
from bench.errors import BenchError
from bench.grid.jobs import grid_jobs, parse_shard, shard_jobs
from bench.grid.spec import Grid
from bench.grid.workers import cores
from bench.locks import FileLock
from bench.plugins import get_registry
from bench.presets import get_preset
from bench.results.records import SCHEMA_VERSION, iter_results, write_result

# A third party's plugin: three methods that are Hinton KD until they fail, one with a NaN loss part
# from its 3rd step on, one with an exception in its loss (unless CRASH_OFF is set: then it is kd),
# one whose process, given HOLD_AT_STEP, stops there until HOLD_RELEASE exists and then dies by SIGKILL.
FAULTY = '''
import os
import signal
import time
from pathlib import Path

from bench.hookspecs import hookimpl
from bench_plugins.distillers.kd import KD


class NanKD(KD):
    name = "nan-kd"

    def loss(self, batch, student_out, teacher_out, stage):
        self.calls = getattr(self, "calls", 0) + 1
        parts = super().loss(batch, student_out, teacher_out, stage)
        if self.calls >= 3:
            parts["kd"] = parts["kd"] * float("nan")
        return parts


class CrashKD(KD):
    name = "crash-kd"

    def loss(self, batch, student_out, teacher_out, stage):
        if not os.environ.get("CRASH_OFF"):
            raise RuntimeError("boom")
        return super().loss(batch, student_out, teacher_out, stage)


class HeldKD(KD):
    name = "held-kd"

    def loss(self, batch, student_out, teacher_out, stage):
        self.calls = getattr(self, "calls", 0) + 1
        if os.environ.get("HOLD_AT_STEP") == str(self.calls):
            Path(os.environ["HOLD_MARKER"]).touch()  # the run's lock is held, its training half done
            deadline = time.monotonic() + 300
            while not Path(os.environ["HOLD_RELEASE"]).exists() and time.monotonic() < deadline:
                time.sleep(0.05)
            os.kill(os.getpid(), signal.SIGKILL)
        return super().loss(batch, student_out, teacher_out, stage)


@hookimpl
def bench_register_distillers(register):
    register(NanKD)
    register(CrashKD)
    register(HeldKD)
'''

# `<method> on <suite>/<domain> seed <N>: accuracy <x> -> <path>`: the line of each result written
WRITTEN = re.compile(r"INFO bench\.grid\.recording: (\S+) on (\S+)/(\S+) seed (\d+): accuracy \S+ -> ")
TRAINING_TEACHER = re.compile(r"training teacher (\w+) ")


def bench_env(data_dir, cache, plugin_root=None):
    """The environment of a `python -m bench` subprocess: entry points on (the test session turns
    them off), the plugin's folder on the path, its own teacher store."""
    env = {k: v for k, v in os.environ.items() if k not in ("BENCH_NO_ENTRY_POINTS", "BENCH_LOAD_PLUGINS")}
    if plugin_root is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(plugin_root), env.get("PYTHONPATH", "")])
    env.update(OMP_NUM_THREADS="1", BENCH_CACHE_DIR=str(cache), BENCH_DATA_DIR=str(data_dir))
    return env


def run_args(methods, domains, results, *extra):
    return [sys.executable, "-m", "bench", "run", "--methods", methods, "--suite", "amazon", "--preset", "smoke",
            "--domains", domains, "--results-dir", str(results), *extra]


def bench_run(env, methods, domains, results, *extra):
    return subprocess.run(run_args(methods, domains, results, *extra), env=env, capture_output=True, text=True,
                          timeout=600)


def result_path(results, method, domain, seed=1):
    return results / "amazon" / "smoke" / method / domain / f"seed{seed}.json"


def failure_path(results, method, domain, seed=1):
    return results / ".failed" / "amazon" / "smoke" / method / domain / f"seed{seed}.json"


def check_record(record, method, domain, seed=1):
    assert record["method"]["name"] == method and record["method"]["label"] == method
    assert record["suite"]["name"] == "amazon" and record["suite"]["domain"] == domain
    assert record["seed"] == seed and record["preset"] == "smoke"
    assert record["schema_version"] == 1
    assert 0.0 <= record["metrics"]["accuracy"] <= 1.0
    assert record["train"]["steps"] == 12 or record["method"]["student_kind"] != "single"


def outcome(record):
    return record["metrics"]["accuracy"], record["metrics"]["macro_f1"], record["train"]["selected_step"], \
        record["train"]["history"]


def result_files(results):
    """Every result file's path under `results`, hidden folders (.failed, .locks) left out."""
    return {p.relative_to(results).as_posix() for p in results.rglob("*.json")
            if not any(part.startswith(".") for part in p.relative_to(results).parts)}


@pytest.fixture(scope="module")
def plugin_root(tmp_path_factory, install_fake_plugin):
    return install_fake_plugin(tmp_path_factory.mktemp("faulty"), "faulty_plugin", FAULTY)


# --- 1. failed runs: the grid goes on, says what failed, keeps a record -------------------------

def test_failed_runs_are_recorded_and_the_grid_goes_on(plugin_root, data_dir, tmp_path, caplog, capsys):
    results, cache = tmp_path / "results", tmp_path / "cache"
    env = bench_env(data_dir, cache, plugin_root)
    proc = bench_run(env, "nan-kd,crash-kd,kd", "books,dvd", results)
    assert proc.returncode == 1, proc.stderr[-3000:]
    err = proc.stderr

    # the end of the log says what failed, where and why
    assert "error: 4 run(s) failed; the other results are written:" in err
    summary = err[err.index("error: 4 run(s) failed"):]
    for domain in ("books", "dvd"):
        assert (f"nan-kd on amazon/{domain} seed 1: NonFiniteLoss: nan-kd {domain} s1: the loss is nan "
                f"at step 3 (kd=nan)") in summary
        assert f"crash-kd on amazon/{domain} seed 1: RuntimeError: boom" in summary
    assert f"under {results / '.failed'}" in summary
    assert len(TRAINING_TEACHER.findall(err)) == 2  # one per domain, shared by the three methods

    # kd's results are there and whole; the failed methods have none
    assert result_files(results) == {f"amazon/smoke/kd/{d}/seed1.json" for d in ("books", "dvd")}
    kd = {d: json.loads(result_path(results, "kd", d).read_text()) for d in ("books", "dvd")}
    for domain, record in kd.items():
        check_record(record, "kd", domain)
        assert record["teacher"]["kind"] == "single"

    # a record and a traceback per failed (method, domain)
    for method, error in (("nan-kd", "NonFiniteLoss"), ("crash-kd", "RuntimeError")):
        for domain in ("books", "dvd"):
            path = failure_path(results, method, domain)
            failure = json.loads(path.read_text())
            assert failure["run"] == {"suite": "amazon", "preset": "smoke", "method": method, "domain": domain,
                                      "seed": 1, "train_ratio": 1.0}
            assert failure["error"]["type"] == error
            assert failure["traceback_file"] == "seed1.traceback.txt"
            trace = path.with_name("seed1.traceback.txt").read_text()
            assert trace.startswith("Traceback (most recent call last):")
            if error == "RuntimeError":
                assert failure["error"] == {"type": "RuntimeError", "message": "boom", "hint": None}
                assert trace.rstrip().endswith("RuntimeError: boom") and "faulty_plugin.py" in trace
            else:
                assert failure["error"]["message"] == f"nan-kd {domain} s1: the loss is nan at step 3 (kd=nan)"
                assert "lower the learning rate" in failure["error"]["hint"]
                assert "NonFiniteLoss: nan-kd" in trace and "check_finite" in trace
    assert sorted(p.relative_to(results / ".failed").as_posix() for p in (results / ".failed").rglob("*")
                  if p.is_file()) == sorted(f"amazon/smoke/{m}/{d}/seed1.{ext}" for m in ("crash-kd", "nan-kd")
                                            for d in ("books", "dvd") for ext in ("json", "traceback.txt"))

    # the report reads the results only: kd and its teacher, not the failed methods
    capsys.readouterr()
    assert main(["report", "--results-dir", str(results), "--format", "csv"]) == 0
    report = pd.read_csv(io.StringIO(capsys.readouterr().out))
    assert list(report["method"]) == ["teacher", "kd"]
    assert report.loc[1, "books_mean"] == pytest.approx(100 * kd["books"]["metrics"]["accuracy"], abs=1e-3)

    # rerunning kd alone does nothing: its results exist (and no teacher is needed for that)
    before = {p: p.stat().st_mtime_ns for p in results.rglob("*") if p.is_file()}
    caplog.set_level(logging.INFO)
    assert main(["run", "--methods", "kd", "--suite", "amazon", "--preset", "smoke", "--domains", "books,dvd",
                 "--results-dir", str(results), "--data-dir", str(data_dir)]) == 0
    assert caplog.text.count("result exists") == 2
    assert "training teacher" not in caplog.text and "reusing teacher" not in caplog.text
    assert {p: p.stat().st_mtime_ns for p in results.rglob("*") if p.is_file()} == before

    # crash-kd with the crash turned off succeeds on books: that failure's record goes, dvd's stays.
    # It is kd by another name, so its result is kd's to the last figure.
    fixed = bench_run({**env, "CRASH_OFF": "1"}, "crash-kd", "books", results)
    assert fixed.returncode == 0, fixed.stderr[-3000:]
    assert "reusing teacher" in fixed.stderr and "training teacher" not in fixed.stderr
    assert not failure_path(results, "crash-kd", "books").exists()
    assert not failure_path(results, "crash-kd", "books").with_name("seed1.traceback.txt").exists()
    assert failure_path(results, "crash-kd", "dvd").exists()
    assert failure_path(results, "nan-kd", "books").exists() and failure_path(results, "nan-kd", "dvd").exists()
    crash = json.loads(result_path(results, "crash-kd", "books").read_text())
    check_record(crash, "crash-kd", "books")
    assert crash["teacher"]["key"] == kd["books"]["teacher"]["key"]
    assert outcome(crash) == outcome(kd["books"])


# --- 2. two grids at once on one results dir and one teacher store ------------------------------

def test_two_grids_at_once_train_each_run_and_teacher_once(data_dir, tmp_path):
    results, cache = tmp_path / "results", tmp_path / "cache"
    env = bench_env(data_dir, cache)
    args = run_args("kd,finetune", "books,dvd", results, "--seeds", "1,2")
    logs = [tmp_path / "a.log", tmp_path / "b.log"]
    procs = []
    for log in logs:
        with open(log, "w") as out:
            procs.append(subprocess.Popen(args, env=env, stdout=out, stderr=subprocess.STDOUT, text=True))
    codes = [p.wait(timeout=600) for p in procs]
    texts = [log.read_text() for log in logs]
    assert codes == [0, 0], "\n\n".join(t[-3000:] for t in texts)

    expected = {(m, d, s) for m in ("kd", "finetune") for d in ("books", "dvd") for s in (1, 2)}
    assert result_files(results) == {f"amazon/smoke/{m}/{d}/seed{s}.json" for m, d, s in expected}
    records = {(m, d, s): json.loads(result_path(results, m, d, s).read_text()) for m, d, s in expected}
    for (m, d, s), record in records.items():
        check_record(record, m, d, s)
    assert not (results / ".failed").exists()

    # each run trained (and written) once across the two processes; the other skipped or left it
    written = Counter((m, d, int(s)) for text in texts for m, suite, d, s in WRITTEN.findall(text))
    assert written == Counter(expected), written
    for text in texts:  # each process wrote, left to the other, or found done every one of the 8 runs
        assert len(WRITTEN.findall(text)) + text.count("was finished by another process") + \
            text.count("result exists (--overwrite to redo)") == 8
    both = "".join(texts)

    # each domain's teacher trained once, by one of them; the other reused it, and so did every kd run
    trained = Counter(TRAINING_TEACHER.findall(both))
    keys = {d: records[("kd", d, 1)]["teacher"]["key"] for d in ("books", "dvd")}
    assert trained == Counter(keys.values()), trained
    assert {records[("kd", d, s)]["teacher"]["key"] for d in ("books", "dvd") for s in (1, 2)} == set(keys.values())
    assert sorted(p.name for p in (cache / "teachers").iterdir() if not p.name.startswith(".")) == sorted(
        keys.values())


def wait_for(condition, proc, log, what, timeout=300):
    """Poll `condition` until it holds; fail with `proc`'s log if it exits first or time runs out."""
    deadline = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(f"{what}: not seen (exit status {proc.poll()})\n{log.read_text()[-3000:]}")
        time.sleep(0.1)


def test_a_run_held_by_a_killed_grid_is_taken_over_by_the_grid_waiting_for_it(plugin_root, data_dir, tmp_path):
    """The first grid dies by SIGKILL mid-run, the run's lock held; the second, waiting to come back
    to that run, takes it over once the lock goes with the dead process (with --resume, from the
    dead one's checkpoint) and writes its result, once."""
    results = tmp_path / "results"
    env = bench_env(data_dir, tmp_path / "cache", plugin_root)
    held, release = tmp_path / "held", tmp_path / "release"
    args = run_args("held-kd", "books", results, "--checkpoint-every", "2", "--resume")
    logs = [tmp_path / "first.log", tmp_path / "second.log"]
    procs = []
    try:
        for log, extra in zip(logs, ({"HOLD_AT_STEP": "5", "HOLD_MARKER": str(held), "HOLD_RELEASE": str(release)},
                                     {})):
            with open(log, "w") as out:
                procs.append(subprocess.Popen(args, env={**env, **extra}, stdout=out, stderr=subprocess.STDOUT))
            if extra:  # the second grid starts once the first holds the run at its 5th step
                wait_for(held.exists, procs[0], logs[0], "the first grid holding the run")
        first, second = procs
        wait_for(lambda: "is running in another process: coming back to it at the end" in logs[1].read_text(),
                 second, logs[1], "the second grid leaving the run for later")
        release.touch()
        assert first.wait(timeout=300) == -signal.SIGKILL, logs[0].read_text()[-3000:]
        assert second.wait(timeout=600) == 0, logs[1].read_text()[-3000:]
    finally:
        for proc in procs:  # none left behind when the test fails midway
            if proc.poll() is None:
                proc.kill()

    texts = [log.read_text() for log in logs]
    assert [len(WRITTEN.findall(t)) for t in texts] == [0, 1]  # the second wrote it, once
    assert "held-kd on amazon/books seed 1: the other process stopped without its result; running it here" \
        in texts[1] and "was finished by another process" not in texts[1]
    assert "held-kd books s1: resuming at step 4/12" in texts[1]  # the first's last checkpoint
    assert "training teacher" in texts[0] and "training teacher" not in texts[1]  # the teacher the first stored
    assert result_files(results) == {"amazon/smoke/held-kd/books/seed1.json"}
    check_record(json.loads(result_path(results, "held-kd", "books").read_text()), "held-kd", "books")
    assert not (results / ".failed").exists() and not list((results / ".checkpoints").rglob("*.pt"))


def test_jobs_share_one_grid_among_workers_and_report_once(data_dir, tmp_path):
    """`run --jobs 2`: two workers of one thread each train every run once (the joint job first), their
    lines come marked with the worker, and the parent re-times the runs and prints one table."""
    results, cache = tmp_path / "results", tmp_path / "cache"
    env = bench_env(data_dir, cache)
    env.pop("OMP_NUM_THREADS")
    out = bench_run(env, "kd,finetune-mtl", "books,dvd", results, "--jobs", "2")
    assert out.returncode == 0, out.stderr[-3000:]
    expected = {(m, d) for m in ("kd", "finetune-mtl") for d in ("books", "dvd")}
    assert result_files(results) == {f"amazon/smoke/{m}/{d}/seed1.json" for m, d in expected}
    written = [line for line in out.stderr.splitlines() if WRITTEN.search(line)]
    assert Counter((m, d) for line in written for m, _, d, _ in WRITTEN.findall(line)) == Counter(expected)
    assert all(re.match(r"\[[12]/2\] ", line) for line in written), written
    first = next(line for line in out.stderr.splitlines()
                 if re.search(r"bench\.grid\.(runner|recording)", line) and " on amazon/" in line)
    assert "finetune-mtl on amazon/books+dvd" in first  # the longest job is taken first
    for m, d in expected:
        record = json.loads(result_path(results, m, d).read_text())
        check_record(record, m, d)
        assert record["machine"]["worker"] in ("1/2", "2/2") and record["machine"]["threads"] == max(1, cores() // 2)
        assert record["retimed"]["machine"]["worker"] is None  # timed again by the parent, alone
    assert out.stdout.count("### amazon (smoke preset)") == 1 and not re.search(r"^\[\d/2\]", out.stdout, re.M)


def test_a_job_whose_teacher_another_process_trains_is_left_for_after_the_jobs_that_can_run(data_dir, tmp_path,
                                                                                            caplog):
    """books' teacher is being trained elsewhere (its lock held, here by the test): the grid does
    dvd first (training dvd's teacher) instead of waiting, then comes back to books, which waits
    for the lock and, the teacher not stored, trains it."""
    import threading

    from bench.grid.runner import Runner
    from bench.teachers.supply import teacher_identity

    registry = get_registry()
    results = tmp_path / "results"
    grid = Grid(suite=registry.suite("amazon"), preset=get_preset("smoke"), methods=[registry.distiller("kd")],
                domains=["books", "dvd"], seeds=[1], data=DataConfig(str(data_dir)), results_dir=str(results))
    runner = Runner(grid, registry)
    supply = runner.teachers
    held = supply._lock(supply.with_input_vocab(teacher_identity(grid, "books", runner.ctx.data("books"))))
    assert held.acquire(blocking=False)
    assert supply.training_elsewhere("single", ["books"]) and not supply.training_elsewhere("single", ["dvd"])
    assert not runner.teacher_elsewhere(grid_jobs(grid)[1]) and runner.teacher_elsewhere(grid_jobs(grid)[0])
    caplog.set_level(logging.INFO, logger="bench")
    grid_thread = threading.Thread(target=runner.run)
    try:
        grid_thread.start()
        deadline = time.monotonic() + 300
        while not result_path(results, "kd", "dvd").exists() and grid_thread.is_alive() \
                and time.monotonic() < deadline:
            time.sleep(0.1)
        assert result_path(results, "kd", "dvd").exists() and not result_path(results, "kd", "books").exists()
    finally:
        held.release()
        grid_thread.join(timeout=300)
    assert not grid_thread.is_alive()
    assert result_files(results) == {"amazon/smoke/kd/books/seed1.json", "amazon/smoke/kd/dvd/seed1.json"}
    assert "kd on amazon/books seed 1: another process is training its teacher: coming back to it at the end" \
        in caplog.text
    assert len(TRAINING_TEACHER.findall(caplog.text)) == 2  # dvd's, then books' (none was stored elsewhere)
    assert not supply.training_elsewhere("single", ["books", "dvd"])  # stored now


def test_a_failing_worker_fails_the_run_and_the_others_go_on(plugin_root, data_dir, tmp_path):
    results = tmp_path / "results"
    env = bench_env(data_dir, tmp_path / "cache", plugin_root)
    out = bench_run(env, "kd,crash-kd", "books", results, "--jobs", "2")
    assert out.returncode == 1
    assert "error: worker(s) " in out.stderr and "run the same command again: finished runs are kept" in out.stderr
    assert result_files(results) == {"amazon/smoke/kd/books/seed1.json"}
    assert failure_path(results, "crash-kd", "books").exists()


def test_a_file_lock_excludes_a_second_holder_until_released(tmp_path):
    path = tmp_path / "locks" / "a.lock"
    first, second = FileLock(path), FileLock(path)
    assert first.acquire(blocking=False) and first.held and path.exists()
    assert second.acquire(blocking=False) is False and not second.held
    other = [sys.executable, "-c", "import sys; from bench.locks import FileLock; "
             f"sys.exit(0 if FileLock({str(path)!r}).acquire(blocking=False) else 3)"]
    assert subprocess.run(other, timeout=60).returncode == 3  # nor another process
    with pytest.raises(RuntimeError, match="already locked by this object"):
        first.acquire()
    first.release()
    assert not first.held
    assert second.acquire(blocking=False) and second.held
    assert first.acquire(blocking=False) is False
    second.release()
    assert subprocess.run(other, timeout=60).returncode == 0
    with first:
        assert first.held and not second.acquire(blocking=False)
    assert not first.held and path.exists()  # the lock file stays


# --- 3. shards ----------------------------------------------------------------------------------

@pytest.mark.parametrize("text,expected", [("1/1", (1, 1)), ("1/2", (1, 2)), ("2/2", (2, 2)), (" 3 / 4 ", (3, 4)),
                                           ("10/12", (10, 12))])
def test_parse_shard_reads_k_of_n(text, expected):
    assert parse_shard(text) == expected


@pytest.mark.parametrize("text", ["0/2", "3/2", "1/0", "0/0", "-1/2", "2", "1/2/3", "a/b", "1.5/2", "", "/"])
def test_parse_shard_refuses_what_is_not_k_of_n(text):
    with pytest.raises(BenchError) as info:
        parse_shard(text)
    what, hint = str(info.value).split("\n")
    assert what == f"--shard {text!r} is not K/N with 1 <= K <= N"
    assert hint == "  give this job's part and the number of parts, e.g. --shard 2/4"


def test_the_cli_refuses_a_bad_shard(capsys):
    with pytest.raises(SystemExit) as info:
        main(["run", "--methods", "kd", "--suite", "amazon", "--shard", "3/2", "--dry-run"])
    assert info.value.code == 2
    assert "--shard '3/2' is not K/N with 1 <= K <= N" in capsys.readouterr().err


def make_grid(methods, domains, seeds, results_dir="unused"):
    registry = get_registry()
    suite = registry.suite("amazon")
    return Grid(suite=suite, preset=get_preset("smoke"), methods=[registry.distiller(m) for m in methods],
                domains=domains, seeds=seeds, data=DataConfig("unused"), results_dir=results_dir)


def test_grid_jobs_come_in_a_fixed_order_with_one_job_per_joint_training():
    domains = ["books", "dvd", "electronics", "kitchen"]
    jobs = grid_jobs(make_grid(["kd", "finetune-mtl", "finetune"], domains, [1, 2]))
    assert [(j.key.method, j.key.domain, j.seed, j.joint) for j in jobs] == [
        ("finetune-mtl", "books+dvd+electronics+kitchen", 1, True),
        ("finetune-mtl", "books+dvd+electronics+kitchen", 2, True),
        *((m, d, s, False) for d in domains for m in ("kd", "finetune") for s in (1, 2))]
    assert [k.domain for k in jobs[1].keys] == domains and {k.seed for k in jobs[1].keys} == {2}


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 7, 18, 19, 25])
def test_the_shards_partition_the_jobs_into_contiguous_parts(n):
    grid = make_grid(["kd", "finetune", "finetune-mtl"], ["books", "dvd", "electronics"], [1, 2, 3])
    jobs = grid_jobs(grid)
    assert len(jobs) == 3 * 2 * 3 + 3
    parts = [shard_jobs(jobs, (k, n)) for k in range(1, n + 1)]
    assert [job for part in parts for job in part] == jobs  # in order: contiguous, disjoint, covering
    sizes = [len(part) for part in parts]
    assert max(sizes) - min(sizes) <= 1  # as even as can be
    assert sum(1 for s in sizes if s == 0) == max(0, n - len(jobs))
    for k, part in enumerate(parts, 1):  # the documented bounds: [(K-1)·J/N, K·J/N)
        assert part == [job for i, job in enumerate(jobs) if (k - 1) * len(jobs) <= i * n < k * len(jobs)]
    again = grid_jobs(make_grid(["kd", "finetune", "finetune-mtl"], ["books", "dvd", "electronics"], [1, 2, 3]))
    assert [shard_jobs(again, (k, n)) for k in range(1, n + 1)] == parts  # every machine computes the same


def test_shards_of_no_jobs_are_empty():
    assert shard_jobs([], (1, 1)) == [] and shard_jobs([], (2, 3)) == []


SHARD_GRID = ["--methods", "kd,finetune,finetune-mtl", "--suite", "amazon", "--preset", "smoke",
              "--domains", "books,dvd"]


@pytest.fixture
def one_thread():
    """Torch on one thread, as the subprocesses here run (two threads on a busy 2-core machine crawl)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_two_shards_hold_the_grid_once_and_report_merges_them(data_dir, tmp_path, capsys, one_thread):
    a, b = tmp_path / "a", tmp_path / "b"
    for shard, results in (("1/2", a), ("2/2", b)):
        assert main(["run", *SHARD_GRID, "--shard", shard, "--results-dir", str(results),
                     "--data-dir", str(data_dir)]) == 0
    capsys.readouterr()
    # jobs: finetune-mtl (both domains), kd books, finetune books, kd dvd, finetune dvd: 3 and 2
    assert result_files(a) == {"amazon/smoke/finetune-mtl/books/seed1.json", "amazon/smoke/finetune-mtl/dvd/seed1.json",
                               "amazon/smoke/kd/books/seed1.json", "amazon/smoke/finetune/books/seed1.json"}
    assert result_files(b) == {"amazon/smoke/kd/dvd/seed1.json", "amazon/smoke/finetune/dvd/seed1.json"}
    grid = {f"amazon/smoke/{m}/{d}/seed1.json" for m in ("kd", "finetune", "finetune-mtl") for d in ("books", "dvd")}
    assert result_files(a) | result_files(b) == grid and not result_files(a) & result_files(b)
    for results in (a, b):
        for name in result_files(results):
            _, _, method, domain, _ = name.split("/")
            check_record(json.loads((results / name).read_text()), method, domain)
    mtl = [json.loads(result_path(a, "finetune-mtl", d).read_text()) for d in ("books", "dvd")]
    assert all(r["suite"]["trained_on"] == ["books", "dvd"] and r["method"]["student_kind"] == "multi" for r in mtl)
    assert mtl[0]["train"]["history"] == mtl[1]["train"]["history"]  # one training for both domains

    assert main(["report", "--results-dir", str(a), "--results-dir", str(b), "--format", "csv"]) == 0
    out = capsys.readouterr().out
    table = pd.read_csv(io.StringIO(out)).set_index("method")
    assert list(table.index) == ["teacher", "finetune", "finetune-mtl", "kd"]
    assert set(table["suite"]) == {"amazon"} and set(table["preset"]) == {"smoke"}
    for domain in ("books", "dvd"):
        accuracy = json.loads(result_path(a, "finetune-mtl", domain).read_text())["metrics"]["accuracy"]
        assert table.loc["finetune-mtl", f"{domain}_mean"] == pytest.approx(100 * accuracy, abs=1e-3)
    for method in ("kd", "finetune"):
        for domain, results in (("books", a), ("dvd", b)):
            accuracy = json.loads(result_path(results, method, domain).read_text())["metrics"]["accuracy"]
            assert table.loc[method, f"{domain}_mean"] == pytest.approx(100 * accuracy, abs=1e-3)
    assert table[["books_mean", "dvd_mean", "avg_mean"]].notna().all().all()


def test_a_run_found_in_two_stores_is_taken_from_the_first_with_a_warning(tmp_path, caplog):
    """Stores merged by `report --results-dir A --results-dir B` that both hold a run: A's is kept,
    B's left out with a warning naming both files; a run only B holds is kept."""
    def record(domain, accuracy):
        return {"schema_version": SCHEMA_VERSION, "seed": 1, "preset": "smoke", "metrics": {"accuracy": accuracy},
                "method": {"name": "kd", "label": "kd"}, "suite": {"name": "amazon", "domain": domain,
                                                                  "train_ratio": 1.0}}
    a, b = tmp_path / "a", tmp_path / "b"
    write_result(result_path(a, "kd", "books"), record("books", 0.7))
    write_result(result_path(b, "kd", "books"), record("books", 0.5))
    write_result(result_path(b, "kd", "dvd"), record("dvd", 0.6))
    caplog.set_level(logging.WARNING)
    merged = [(r["suite"]["domain"], r["metrics"]["accuracy"]) for r in iter_results(a, b)]
    assert merged == [("books", 0.7), ("dvd", 0.6)]
    assert (f"{result_path(b, 'kd', 'books')} is the same run as {result_path(a, 'kd', 'books')}: "
            "keeping the first") in caplog.text

# --- 4. the plan of a shard ---------------------------------------------------------------------

def test_a_dry_run_plans_its_shard_only(data_dir, tmp_path, capsys):
    assert main(["run", *SHARD_GRID, "--shard", "2/2", "--results-dir", str(tmp_path),
                 "--data-dir", str(data_dir), "--dry-run"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1] == f"2 run(s) to do, 0 already in {tmp_path} (shard 2/2 of 6 runs)"
    assert lines[2].startswith("dvd: teacher ") and lines[2].endswith(" to train (96 examples)")  # dvd's only
    assert lines[3].startswith("dvd: kd seed 1: ") and lines[4].startswith("dvd: finetune seed 1: ")
    assert lines[5].startswith("examples to process in all: ") and len(lines) == 6
    assert "finetune-mtl" not in "\n".join(lines) and "books" not in "\n".join(lines[1:])
    assert not list(tmp_path.iterdir())  # a plan writes nothing
