"""A grid under `accelerate launch` with 2 CPU processes (gloo) ends as the 1-process grid does:
each result written once, by the main process, with world size 2 recorded; every batch split
between the processes, so the same steps, examples, dev curve and test accuracy.

Dropout is switched off in both runs (a launcher script sets the smoke shapes' dropout to 0, then
runs the ordinary CLI): each process draws its own masks, so with dropout a 2-process run is
another sample of the same training, and on the smoke preset's 16 test rows a sample can differ
from another by half the rows. Without it the two runs compute the same steps, up to rounding.

What a single process cannot show: an exception on one process only (in its step, in its part of
a dev evaluation, or in the main process's checkpoint write or metrics) fails that run on both in
bounded time and the grid goes on; a batch the processes cannot split is refused with a two-line
error; a dev or test set whose last batch does not split evenly is predicted as by one process,
each row once, in row order.
"""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

GRID = ["--methods", "kd,finetune-mtl", "--suite", "amazon", "--preset", "smoke", "--domains", "books,dvd"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def bench_env(data_dir: Path, cache: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    return {**env, "BENCH_DATA_DIR": str(data_dir), "BENCH_CACHE_DIR": str(cache), "OMP_NUM_THREADS": "1"}


def records(results: Path) -> dict[tuple[str, str], dict]:
    return {(p.parent.parent.name, p.parent.name): json.loads(p.read_text())
            for p in sorted((results / "amazon" / "smoke").glob("*/*/seed1.json"))}


LAUNCHER = """
import sys

from bench.models import classifier as models

for shape in models.SHAPES.values():
    shape.update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)

from bench.cli import main

sys.exit(main(sys.argv[1:]))
"""


@pytest.fixture(scope="module")
def one_and_two(tmp_path_factory, data_dir):
    root = tmp_path_factory.mktemp("distributed")
    launcher = root / "bench_without_dropout.py"
    launcher.write_text(LAUNCHER)
    single = subprocess.run([sys.executable, str(launcher), "run", *GRID, "--results-dir", str(root / "one")],
                            env=bench_env(data_dir, root / "cache1"), capture_output=True, text=True, timeout=600)
    assert single.returncode == 0, single.stderr[-3000:]
    launch = accelerate_launch(launcher, "run", *GRID, "--results-dir", str(root / "two"))
    double = run_launched(launch, bench_env(data_dir, root / "cache2"), timeout=600)
    assert double.returncode == 0, double.stderr[-3000:]
    return records(root / "one"), records(root / "two"), double


def test_two_processes_write_each_result_once_with_world_size_2(one_and_two):
    one, two, double = one_and_two
    expected = {(m, d) for m in ("kd", "finetune-mtl") for d in ("books", "dvd")}
    assert set(one) == set(two) == expected
    assert {r["machine"]["world_size"] for r in one.values()} == {1}
    assert {r["machine"]["world_size"] for r in two.values()} == {2}
    assert double.stdout.count("### amazon (smoke preset)") == 1  # the table, from the main process only
    assert double.stderr.count("kd on amazon/books seed 1: accuracy") == 1  # the others log errors only


def test_two_processes_follow_the_one_process_run(one_and_two):
    one, two, _ = one_and_two
    for run in one:
        a, b = one[run]["train"], two[run]["train"]
        assert (a["steps"], a["examples"], a["selected_step"]) == (b["steps"], b["examples"], b["selected_step"])
        assert [h["step"] for h in a["history"]] == [h["step"] for h in b["history"]]
        assert [h["dev_accuracy"] for h in a["history"]] == [h["dev_accuracy"] for h in b["history"]]
        assert [h["loss"] for h in a["history"]] != [h["loss"] for h in b["history"]]  # each logs its half batch
        assert one[run]["metrics"]["accuracy"] == two[run]["metrics"]["accuracy"]
        assert one[run]["metrics"]["macro_f1"] == pytest.approx(two[run]["metrics"]["macro_f1"])
        assert one[run]["teacher"] is None or one[run]["teacher"]["key"] == two[run]["teacher"]["key"]


def accelerate_launch(script: Path, *args: str) -> list[str]:
    """The command that runs `script args` as 2 CPU processes (gloo) on a free port."""
    return [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
            "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
            "--main_process_port", str(free_port()), str(script), *args]


def run_launched(cmd: list[str], env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess:
    """Run `cmd`; past `timeout` stop it and fail. The launcher is stopped with SIGTERM, on which it
    stops its processes (each in a session of its own: killing the launcher would leave them
    waiting at a collective forever)."""
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.terminate()
        out, err = proc.communicate(timeout=60)
        pytest.fail(f"still running after {timeout} s; its log ends:\n{err[-3000:]}")
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def launch_finetune_books(tmp_path: Path, data_dir: Path, script: str, *extra: str, timeout: float = 300
                          ) -> tuple[subprocess.CompletedProcess, Path]:
    """`script` launched on 2 processes as `run` of finetune on Amazon smoke books, seeds 1 and 2:
    the finished process and its results dir."""
    launcher = tmp_path / "bench_launcher.py"
    launcher.write_text(script)
    results = tmp_path / "results"
    cmd = accelerate_launch(launcher, "run", "--methods", "finetune", "--seeds", "1,2", "--suite", "amazon",
                            "--preset", "smoke", "--domains", "books", *extra, "--results-dir", str(results))
    return run_launched(cmd, bench_env(data_dir, tmp_path / "cache"), timeout=timeout), results


# --- an exception on one process only ends the run on every process -----------------------------

# A method that is finetune until its 2nd step on process 1, where its loss raises; registered by
# the script itself, then the ordinary CLI runs.
CRASH_LAUNCHER = '''
import os
import sys

from bench_plugins.distillers.finetune import FineTune

from bench.cli import main
from bench.hookspecs import hookimpl
from bench.plugins import Registry, make_plugin_manager, set_registry


class CrashOnOne(FineTune):
    name = "crash-on-1"

    def loss(self, batch, student_out, teacher_out, stage):
        self.calls = getattr(self, "calls", 0) + 1
        if os.environ["RANK"] == "1" and self.calls == 2:
            raise RuntimeError("boom on process 1")
        return super().loss(batch, student_out, teacher_out, stage)


@hookimpl
def bench_register_distillers(register):
    register(CrashOnOne)


pm = make_plugin_manager()
pm.register(sys.modules[__name__], name="crash_plugin")
set_registry(Registry.build(pm))
sys.exit(main(sys.argv[1:]))
'''


def test_an_exception_on_one_process_fails_the_run_on_every_process(tmp_path, data_dir):
    """Process 1 raises at step 2; process 0 must not wait for it at the next collective: the run
    is recorded as failed, naming process 1 and its error, and the grid's next run completes."""
    launcher = tmp_path / "bench_crash_on_1.py"
    launcher.write_text(CRASH_LAUNCHER)
    results = tmp_path / "results"
    cmd = accelerate_launch(launcher, "run", "--methods", "crash-on-1,finetune", "--suite", "amazon",
                            "--preset", "smoke", "--domains", "books", "--results-dir", str(results))
    proc = run_launched(cmd, bench_env(data_dir, tmp_path / "cache"))
    assert proc.returncode == 1, proc.stderr[-3000:]
    failed = results / ".failed/amazon/smoke/crash-on-1/books"
    failure = json.loads((failed / "seed1.json").read_text())
    assert failure["error"]["type"] == "ProcessFailed"
    assert failure["error"]["message"] == ("crash-on-1 books s1: process 1 of 2 raised at step 2: "
                                           "RuntimeError: boom on process 1")
    trace = (failed / "seed1.traceback.txt").read_text()  # process 1's traceback, the cause of process 0's
    assert "bench_crash_on_1.py" in trace and "RuntimeError: boom on process 1" in trace
    assert "error: 1 run(s) failed" in proc.stderr
    finetune = json.loads((results / "amazon/smoke/finetune/books/seed1.json").read_text())
    assert finetune["train"]["steps"] == 12 and finetune["machine"]["world_size"] == 2


# The main process's first checkpoint write fails (a full disk); the others write none.
CHECKPOINT_LAUNCHER = '''
import os
import sys

from bench.training.checkpoint import Checkpoint
from bench.cli import main

save = Checkpoint.save


def save_on_a_full_disk_once(self, state):
    if not getattr(Checkpoint, "failed", False):
        Checkpoint.failed = True
        raise OSError(28, "No space left on device")
    return save(self, state)


if os.environ["RANK"] == "0":
    Checkpoint.save = save_on_a_full_disk_once
sys.exit(main(sys.argv[1:]))
'''


def test_a_failed_checkpoint_write_on_the_main_process_fails_the_run_on_every_process(tmp_path, data_dir):
    """Only the main process writes checkpoints: the others hear of its failure at the next step."""
    proc, results = launch_finetune_books(tmp_path, data_dir, CHECKPOINT_LAUNCHER, "--checkpoint-every", "2")
    assert proc.returncode == 1, proc.stderr[-3000:]
    failure = json.loads((results / ".failed/amazon/smoke/finetune/books/seed1.json").read_text())
    assert failure["error"] == {"type": "OSError", "message": "[Errno 28] No space left on device", "hint": None}
    assert "finetune books s1: process 0 of 2 raised at step 3: OSError: [Errno 28]" in proc.stderr  # process 1
    assert json.loads((results / "amazon/smoke/finetune/books/seed2.json").read_text())["train"]["steps"] == 12


# Process 1's first forward in eval mode raises: its part of the first dev evaluation.
PREDICT_CRASH_LAUNCHER = '''
import os
import sys

from bench.cli import main
from bench.models.classifier import Classifier

forward = Classifier.forward


def forward_failing_once_in_eval(self, *args, **kwargs):
    if not self.training and not getattr(Classifier, "failed", False):
        Classifier.failed = True
        raise RuntimeError("boom predicting on process 1")
    return forward(self, *args, **kwargs)


if os.environ["RANK"] == "1":
    Classifier.forward = forward_failing_once_in_eval
sys.exit(main(sys.argv[1:]))
'''


def test_an_exception_on_one_process_while_predicting_fails_the_run_on_every_process(tmp_path, data_dir):
    """Predictions are gathered batch by batch: process 0 must not wait at the next gather for a
    process 1 that raised in its part of the dev evaluation."""
    proc, results = launch_finetune_books(tmp_path, data_dir, PREDICT_CRASH_LAUNCHER, timeout=150)
    assert proc.returncode == 1, proc.stderr[-3000:]
    failed = results / ".failed/amazon/smoke/finetune/books"
    failure = json.loads((failed / "seed1.json").read_text())
    assert failure["error"]["type"] == "ProcessFailed"
    assert failure["error"]["message"] == ("finetune books s1: process 1 of 2 raised while predicting dev: "
                                           "RuntimeError: boom predicting on process 1")
    assert "RuntimeError: boom predicting on process 1" in (failed / "seed1.traceback.txt").read_text()
    finetune = json.loads((results / "amazon/smoke/finetune/books/seed2.json").read_text())
    assert finetune["train"]["steps"] == 12 and finetune["machine"]["world_size"] == 2


# A metric (computed by the main process alone) that raises on its first run.
METRIC_CRASH_LAUNCHER = '''
import sys

from bench.api import MetricSpec
from bench.cli import main
from bench.hookspecs import hookimpl
from bench.plugins import Registry, make_plugin_manager, set_registry


def fragile(ctx):
    if not getattr(fragile, "failed", False):
        fragile.failed = True
        raise ValueError("the metric fails on its first run")
    return 1.0


@hookimpl
def bench_register_metrics(register):
    register(MetricSpec("fragile", "fails on its first run", fragile))


pm = make_plugin_manager()
pm.register(sys.modules[__name__], name="fragile_metric")
set_registry(Registry.build(pm))
sys.exit(main(sys.argv[1:]))
'''


def test_an_exception_on_the_main_process_while_recording_fails_the_run_on_every_process(tmp_path, data_dir):
    """Only the main process computes metrics and writes the result: the others must hear of its
    failure there, not wait for it at the grid's next collective."""
    proc, results = launch_finetune_books(tmp_path, data_dir, METRIC_CRASH_LAUNCHER, timeout=150)
    assert proc.returncode == 1, proc.stderr[-3000:]
    failure = json.loads((results / ".failed/amazon/smoke/finetune/books/seed1.json").read_text())
    assert failure["error"] == {"type": "ValueError", "message": "the metric fails on its first run", "hint": None}
    assert "finetune on amazon/books seed 1: process 0 of 2 raised: ValueError: the metric fails" in proc.stderr
    assert not (results / "amazon/smoke/finetune/books/seed1.json").exists()
    finetune = json.loads((results / "amazon/smoke/finetune/books/seed2.json").read_text())
    assert finetune["metrics"]["fragile"] == 1.0 and finetune["machine"]["world_size"] == 2


# --- batches split over the processes ----------------------------------------------------------

# The smoke preset with a student batch of 7, which 2 processes cannot split.
ODD_BATCH_LAUNCHER = '''
import dataclasses
import sys

from bench import presets
from bench.cli import main

smoke = presets.PRESETS["smoke"]
presets.PRESETS["smoke"] = dataclasses.replace(
    smoke, student_train=dataclasses.replace(smoke.student_train, batch_size=7))
sys.exit(main(sys.argv[1:]))
'''


def test_a_batch_that_does_not_split_over_the_processes_is_refused(tmp_path, data_dir):
    """Each process takes an equal part of every batch: a batch of 7 on 2 processes is refused
    before anything trains, with what is wrong and what to do."""
    launcher = tmp_path / "bench_odd_batch.py"
    launcher.write_text(ODD_BATCH_LAUNCHER)
    cmd = accelerate_launch(launcher, "run", "--methods", "finetune", "--suite", "amazon", "--preset", "smoke",
                            "--domains", "books", "--results-dir", str(tmp_path / "results"))
    proc = run_launched(cmd, bench_env(data_dir, tmp_path / "cache"))
    assert proc.returncode == 1  # the launcher's, for processes that ended with status 2
    assert ("error: the smoke preset's student batch of 7 does not split over 2 processes\n"
            "  launch a number of processes that divides it (each takes an equal part)\n") in proc.stderr
    assert not (tmp_path / "results").exists()  # refused before anything ran


# Each test row's gold label is its row index and its prediction the sum of its token ids mod 16:
# the golds show the row order and any row taken twice or lost, the predictions that each row's
# own reached its place, whatever its part of a batch and that part's padding.
PREDICT_SCRIPT = '''
import json
import sys
from types import SimpleNamespace

import torch

from bench.api import DataConfig
from bench.data.batching import make_loader, tokenize
from bench.models.classifier import load_tokenizer
from bench.plugins import get_registry
from bench.training.predict import predict
from bench.training.loop import make_accelerator


class TokenSum(torch.nn.Module):
    def forward(self, batch):
        total = (batch.input_ids * batch.attention_mask).sum(-1) % 16
        return SimpleNamespace(logits=torch.nn.functional.one_hot(total, 16).float())


data_dir, out = sys.argv[1], sys.argv[2]
accelerator = make_accelerator()
suite = get_registry().suite("amazon")
tokenizer = load_tokenizer("random:tiny")
found = {}
for rows in (15, 79):
    test = suite.load("books", "test", DataConfig(data_dir)).select(range(rows))
    test = tokenize(test.map(lambda row, i: {"label": i}, with_indices=True), tokenizer, 64, suite.domains)
    loader = make_loader(test, 64, tokenizer.pad_token_id, shuffle=False, by_length=True)
    preds, golds = predict(TokenSum(), accelerator.prepare(loader), accelerator)
    found[rows] = {"preds": preds, "golds": golds, "own": [sum(ids) % 16 for ids in test["input_ids"]]}
if accelerator.is_main_process:
    with open(out, "w") as f:
        json.dump(found, f)
'''


def test_two_processes_predict_an_odd_sized_set_as_one_does(tmp_path, data_dir):
    """Sets of 15 and 79 rows, batches of 64: the last batch does not split evenly over 2
    processes (accelerate pads it with repeated rows, which must not reach the predictions)."""
    script = tmp_path / "predict.py"
    script.write_text(PREDICT_SCRIPT)
    env = bench_env(data_dir, tmp_path / "cache")
    for cmd, out in (([sys.executable, str(script)], "one.json"), (accelerate_launch(script), "two.json")):
        proc = run_launched([*cmd, str(data_dir), str(tmp_path / out)], env)
        assert proc.returncode == 0, proc.stderr[-3000:]
    one, two = (json.loads((tmp_path / out).read_text()) for out in ("one.json", "two.json"))
    for rows in ("15", "79"):
        assert two[rows]["golds"] == list(range(int(rows)))  # every row once, in row order
        assert two[rows]["preds"] == two[rows]["own"]  # each row's own prediction
        assert two[rows] == one[rows]
        assert len(set(one[rows]["preds"])) > 1  # the predictions tell rows apart
