"""A run killed with SIGKILL mid-training (also while it fills the teacher-output cache) and resumed
with --resume ends exactly as an uninterrupted run: same dev curve, same selected checkpoints, same
test metrics."""

import json
import os
import shutil
import signal
import subprocess
import sys

import pytest
import torch

from bench.cli import main

# A third party's plugin, as a killed job would load it: two methods that kill their own process
# with SIGKILL once, at a chosen training step (the marker file makes the resumed run live on).
DOOMED = '''
import os
import signal
from pathlib import Path

from bench.hookspecs import hookimpl
from bench_plugins.distillers.finetune import FineTuneMTL
from bench_plugins.distillers.tinybert import TinyBERT


def _step(distiller):
    distiller.calls = getattr(distiller, "calls", 0) + 1
    at, marker = os.environ.get("DIE_AT_STEP"), Path(os.environ.get("DIE_MARKER", "unused"))
    if at and distiller.calls == int(at) and not marker.exists():
        marker.touch()
        os.kill(os.getpid(), signal.SIGKILL)


class DoomedTinyBERT(TinyBERT):
    name = "doomed-tinybert"

    def __init__(self, options=None):
        super().__init__({"two_stage": True, **(options or {})})

    def loss(self, batch, student_out, teacher_out, stage):
        _step(self)
        return super().loss(batch, student_out, teacher_out, stage)


class DoomedMTL(FineTuneMTL):
    name = "doomed-mtl"

    def multi_domain_loss(self, batch, student_out, teacher_out, stage):
        _step(self)
        return super().multi_domain_loss(batch, student_out, teacher_out, stage)


@hookimpl
def bench_register_distillers(register):
    register(DoomedTinyBERT)
    register(DoomedMTL)
'''


@pytest.fixture(scope="module")
def plugin_env(tmp_path_factory, install_fake_plugin):
    root = install_fake_plugin(tmp_path_factory.mktemp("doomed"), "doomed_plugin", DOOMED)
    env = {k: v for k, v in os.environ.items() if k not in ("BENCH_NO_ENTRY_POINTS", "BENCH_LOAD_PLUGINS")}
    env.update(PYTHONPATH=os.pathsep.join([str(root), env.get("PYTHONPATH", "")]), OMP_NUM_THREADS="1",
               BENCH_CACHE_DIR=str(root / "cache"))  # teachers trained once for every run here
    return env


def bench_run(env, method, domains, results, *extra, die_at=None, marker=None):
    env = dict(env)
    if die_at:
        env.update(DIE_AT_STEP=str(die_at), DIE_MARKER=str(marker))
    return subprocess.run([sys.executable, "-m", "bench", "run", "--methods", method, "--suite", "amazon",
                           "--preset", "smoke", "--domains", domains, "--results-dir", str(results), *extra],
                          env=env, capture_output=True, text=True, timeout=600)


def outcome(results, method, domain):
    record = json.loads((results / "amazon" / "smoke" / method / domain / "seed1.json").read_text())
    history = [{k: v for k, v in h.items()} for h in record["train"]["history"]]
    return record["metrics"]["accuracy"], record["metrics"]["macro_f1"], record["train"]["selected_step"], history


def predictions(results, method, domain):
    record = json.loads((results / "amazon" / "smoke" / method / domain / "seed1.json").read_text())
    return record["test"]


# (method, domains, the step to die at): in the second stage after a checkpoint at its step 4; right
# after an epoch's last step (step 7: the checkpoint at step 6 ends epoch one); in a joint training.
CASES = [("doomed-tinybert", "books", 17), ("doomed-tinybert", "books", 7), ("doomed-mtl", "books,dvd", 5)]


@pytest.mark.parametrize("method,domains,die_at", CASES)
def test_a_killed_run_resumes_to_the_same_result(method, domains, die_at, plugin_env, data_dir, tmp_path):
    plugin_env = {**plugin_env, "BENCH_DATA_DIR": str(data_dir)}
    whole = bench_run(plugin_env, method, domains, tmp_path / "whole")
    assert whole.returncode == 0, whole.stderr[-2000:]

    killed = bench_run(plugin_env, method, domains, tmp_path / "killed", "--checkpoint-every", "2",
                       die_at=die_at, marker=tmp_path / "died")
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert (tmp_path / "died").exists()
    assert list((tmp_path / "killed" / ".checkpoints").rglob("*.pt"))

    resumed = bench_run(plugin_env, method, domains, tmp_path / "killed", "--checkpoint-every", "2", "--resume")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resuming at step" in resumed.stderr
    for domain in domains.split(","):
        assert outcome(tmp_path / "killed", method, domain) == outcome(tmp_path / "whole", method, domain)
        record = json.loads((tmp_path / "killed" / "amazon" / "smoke" / method / domain / "seed1.json").read_text())
        # the training time counts what the killed process spent too, as the fits' wall time does
        assert record["timings"]["train_seconds"] >= record["train"]["wall_seconds"] > 0
    assert not list((tmp_path / "killed" / ".checkpoints").rglob("*.pt"))  # a finished run keeps none


def test_a_run_killed_while_filling_the_teacher_output_cache_resumes_to_the_same_result(plugin_env, data_dir,
                                                                                       tmp_path):
    """The first epoch of a cached run writes the teacher's outputs chunk by chunk; killed there, the
    resumed run reads what the killed one wrote (batches after its last checkpoint among them), has
    the teacher compute the rest, and ends as the run that was never killed, losses included."""
    cache = tmp_path / "cache"
    env = {**plugin_env, "BENCH_DATA_DIR": str(data_dir), "BENCH_CACHE_DIR": str(cache)}
    outputs = cache / "teacher-outputs"

    def chunks():
        return len(list(outputs.rglob("*.safetensors")))

    whole = bench_run(env, "doomed-tinybert", "books", tmp_path / "whole")  # fills the cache in its first epoch
    assert whole.returncode == 0, whole.stderr[-2000:]
    filled = chunks()
    shutil.rmtree(outputs)  # the teacher stays in the store; its outputs are cached afresh

    # killed at the 4th of the first epoch's 6 steps, after a checkpoint at step 2: batches 1-4 cached
    killed = bench_run(env, "doomed-tinybert", "books", tmp_path / "killed", "--checkpoint-every", "2",
                       die_at=4, marker=tmp_path / "died")
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert 0 < chunks() < filled and not list(outputs.rglob("*.tmp"))

    resumed = bench_run(env, "doomed-tinybert", "books", tmp_path / "killed", "--checkpoint-every", "2", "--resume")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "doomed-tinybert books s1 intermediate: resuming at step 2/12" in resumed.stderr
    assert chunks() == filled  # batches 3 and 4 read from the killed run's chunks, 5 and 6 computed and added
    for what in (outcome, predictions):  # test metrics, selected step, dev history with its losses; predictions
        assert what(tmp_path / "killed", "doomed-tinybert", "books") == what(tmp_path / "whole", "doomed-tinybert",
                                                                             "books"), what.__name__


def test_without_resume_a_killed_runs_checkpoints_are_discarded(plugin_env, data_dir, tmp_path):
    plugin_env = {**plugin_env, "BENCH_DATA_DIR": str(data_dir)}
    killed = bench_run(plugin_env, "doomed-tinybert", "books", tmp_path, "--checkpoint-every", "2",
                       die_at=5, marker=tmp_path / "died")
    assert killed.returncode == -signal.SIGKILL
    again = bench_run(plugin_env, "doomed-tinybert", "books", tmp_path, "--checkpoint-every", "2")
    assert again.returncode == 0, again.stderr[-2000:]
    assert "discarding the checkpoints" in again.stderr and "resuming" not in again.stderr


def test_a_negative_checkpoint_interval_is_refused(data_dir, capsys):
    assert main(["run", "--methods", "kd", "--suite", "amazon", "--preset", "smoke", "--data-dir", str(data_dir),
                 "--checkpoint-every", "-1", "--dry-run"]) == 2
    assert "--checkpoint-every -1 is negative" in capsys.readouterr().err


# Runs the ordinary CLI, with each teacher training's loss wrapped so that the process kills itself
# with SIGKILL at a chosen step (once: the marker file lets the resumed training live on).
TEACHER_KILLER = """
import os
import signal
import sys
from pathlib import Path

from bench.teachers.supply import TeacherSupply

teacher_loss = TeacherSupply.loss


def doomed_teacher_loss(self, view, objective, domains):
    compute_loss, modules, tensors = teacher_loss(self, view, objective, domains)
    calls = []

    def counted(batch):
        calls.append(1)
        at, marker = os.environ.get("DIE_AT_STEP"), Path(os.environ.get("DIE_MARKER", "unused"))
        if at and len(calls) == int(at) and not marker.exists():
            marker.touch()
            os.kill(os.getpid(), signal.SIGKILL)
        return compute_loss(batch)

    return counted, modules, tensors


TeacherSupply.loss = doomed_teacher_loss

from bench.cli import main

sys.exit(main(sys.argv[1:]))
"""


def test_a_killed_teacher_training_resumes_to_the_same_teacher(data_dir, tmp_path):
    from safetensors.torch import load_file

    launcher = tmp_path / "doomed_teacher.py"
    launcher.write_text(TEACHER_KILLER)
    env = {k: v for k, v in os.environ.items() if k not in ("DIE_AT_STEP", "DIE_MARKER")}
    env.update(BENCH_DATA_DIR=str(data_dir), OMP_NUM_THREADS="1")

    def train(cache, *extra, **more):
        command = [sys.executable, str(launcher), "teacher", "train", "--suite", "amazon", "--preset", "smoke",
                   "--domains", "books", *extra]
        return subprocess.run(command, env={**env, "BENCH_CACHE_DIR": str(cache), **more}, capture_output=True,
                              text=True, timeout=600)

    whole = train(tmp_path / "whole")
    assert whole.returncode == 0, whole.stderr[-2000:]
    killed = train(tmp_path / "killed", "--checkpoint-every", "2", DIE_AT_STEP="7", DIE_MARKER=str(tmp_path / "died"))
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    partial = tmp_path / "killed" / "teachers" / ".partial"
    assert [p.name for p in partial.glob("*/*.pt")] == ["train.pt"]
    resumed = train(tmp_path / "killed", "--checkpoint-every", "2", "--resume")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "teacher books: resuming at step 6/12" in resumed.stderr
    assert whole.stdout == resumed.stdout  # the key, dev and test accuracy printed
    (a,), (b,) = ([p for p in (tmp_path / c / "teachers").iterdir() if not p.name.startswith(".")]
                  for c in ("whole", "killed"))
    wa, wb = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    assert not list(partial.glob("*/*.pt"))  # a stored teacher keeps no checkpoint
