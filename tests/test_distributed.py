"""A grid under `accelerate launch` with 2 CPU processes (gloo) ends as the 1-process grid does:
each result written once, by the main process, with world size 2 recorded; every batch split
between the processes, so the same steps, examples, dev curve and test accuracy.

Dropout is switched off in both runs (a launcher script sets the smoke shapes' dropout to 0, then
runs the ordinary CLI): each process draws its own masks, so with dropout a 2-process run is
another sample of the same training, and on the smoke preset's 16 test rows a sample can differ
from another by half the rows. Without it the two runs compute the same steps, up to rounding.
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

from bench import models

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
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
              "--main_process_port", str(free_port()), str(launcher), "run", *GRID, "--results-dir", str(root / "two")]
    double = subprocess.run(launch, env=bench_env(data_dir, root / "cache2"), capture_output=True, text=True,
                            timeout=600)
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
