"""`bench profile`: the harness's own distillation step, timed by phase on real data."""

import json

import pytest
import torch

from bench.cli import main
from bench.grid.profile import PHASES, PhaseTimer, TimedLoader


def profile(capsys, data_dir, tmp_path, *args):
    out = tmp_path / "profile.json"
    code = main(["profile", "--suite", "amazon", "--preset", "smoke", "--data-dir", str(data_dir),
                 "--steps", "3", "--warmup", "1", "--json", str(out), *args])
    captured = capsys.readouterr()
    return code, captured.out + captured.err, (json.loads(out.read_text()) if out.exists() else None)


def test_kd_step_is_timed_by_phase(capsys, data_dir, tmp_path):
    code, text, figures = profile(capsys, data_dir, tmp_path, "--method", "kd", "--domains", "books",
                                  "--batch-per-domain", "4", "--max-len", "64")
    assert code == 0
    assert text.strip().splitlines()[-1] == f"examples/s: {figures['examples_per_second']:.2f}"
    assert figures["steps"] == 3 and figures["examples"] == 3 * 4  # warm-up steps are not counted
    assert figures["max_len"] == 64 and figures["batch"] == "4"
    assert set(figures["phases"]) == set(PHASES)
    assert all(v > 0 for v in figures["phases"].values())
    assert sum(figures["phases"].values()) <= figures["wall_seconds"]
    assert figures["peak_memory_mb"] > 0
    for phase in (*PHASES, "other"):
        assert any(line.startswith(phase) for line in text.splitlines())
    machine = figures["machine"]
    assert machine["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert f"torch CPU kernels {machine['cpu_capability']}" in text
    if "cpu_flags" in machine:  # Linux
        assert f"machine: {machine['cpu_model']} (flags: " in text


def test_a_bf16_profile_on_an_emulating_cpu_is_refused(capsys, data_dir, tmp_path, fake_cpu):
    fake_cpu("avx2")
    code, text, figures = profile(capsys, data_dir, tmp_path, "--method", "kd", "--teacher-precision", "bf16")
    assert code == 2 and "no native bf16" in text and figures is None


def test_a_multi_domain_student_takes_a_sub_batch_of_every_domain(capsys, data_dir, tmp_path):
    code, text, figures = profile(capsys, data_dir, tmp_path, "--method", "finetune-mtl", "--domains", "books,dvd",
                                  "--batch-per-domain", "2", "--teacher", "random:tiny")
    assert code == 0
    assert figures["batch"] == "2 domains x 2" and figures["examples"] == 3 * 2 * 2
    assert "teacher" not in figures["phases"]  # fine-tuning has no teacher to run
    assert figures["teacher"] == "none"


def test_models_given_by_reference_replace_the_presets(capsys, data_dir, tmp_path):
    code, text, figures = profile(capsys, data_dir, tmp_path, "--method", "kd", "--domains", "books",
                                  "--teacher", "random:tinybert-4l312", "--student", "random:tiny")
    assert code == 0
    assert figures["teacher"] == "random:tinybert-4l312" and figures["student"] == "random:tiny"


def test_bad_requests_are_refused(capsys, data_dir, tmp_path):
    code, text, _ = profile(capsys, data_dir, tmp_path, "--method", "kd", "--steps", "0")
    assert code == 2 and "give --steps >= 1" in text
    code, text, _ = profile(capsys, data_dir, tmp_path, "--method", "metakd")
    assert code == 2 and "its own objective" in text


def test_the_timed_loader_counts_only_after_warm_up():
    timer = PhaseTimer(torch.device("cpu"))
    batches = [torch.zeros(n, 3) for n in (7, 5, 4, 3)]  # anything with a length counts as rows
    loader = TimedLoader(batches, timer, warmup=2)
    assert [len(b) for b in loader] == [7, 5, 4, 3]
    assert loader.taken == 4 and loader.examples == 4 + 3
    assert timer.counting and set(timer.seconds) == {"data"}
    with timer("student"):
        pass
    assert timer.seconds["student"] >= 0 and timer.ended >= timer.started


def test_a_bf16_teacher_is_compared_with_the_fp32_one(capsys, data_dir, tmp_path, fake_cpu):
    fake_cpu("avx2", "avx512f", "avx512_bf16")  # so that the test runs on any CPU, if slowly
    code, text, figures = profile(capsys, data_dir, tmp_path, "--method", "tinybert", "--domains", "books",
                                  "--batch-per-domain", "4", "--teacher-precision", "bf16")
    assert code == 0
    a = figures["agreement"]
    assert figures["teacher_precision"] == "bf16" and a["precision"] == "bf16"
    assert a["rows"] == 8 * 4  # eight batches of four rows
    assert 0.0 <= a["argmax_agreement"] <= 1.0 and a["loss_fp32"] > 0 and a["loss_bf16"] > 0
    assert a["loss_relative_difference"] == pytest.approx(abs(a["loss_bf16"] - a["loss_fp32"]) / a["loss_fp32"])
    assert "bf16 teacher against fp32 on 32 rows: argmax agreement" in text


def test_the_operators_of_a_bf16_students_steps_are_listed(capsys, data_dir, tmp_path, fake_cpu):
    fake_cpu("avx2", "avx512f", "avx512_bf16")  # so that the test runs on any CPU, if slowly
    code, text, figures = profile(capsys, data_dir, tmp_path, "--method", "kd", "--domains", "books",
                                  "--batch-per-domain", "4", "--student-precision", "bf16", "--ops", "5")
    assert code == 0
    assert figures["student_precision"] == "bf16" and f"student {figures['student']} (bf16)" in text
    ops = figures["ops"]
    assert len(ops) == 5 and all(o["op"] and o["ms_per_step"] > 0 and o["calls_per_step"] > 0 for o in ops)
    assert [o["ms_per_step"] for o in ops] == sorted((o["ms_per_step"] for o in ops), reverse=True)
    assert 0 < sum(o["share"] for o in ops) <= 1
    assert "operators by self time" in text and ops[0]["op"][:40] in text
    assert any(o["op"] == "aten::_fused_adamw_" or "mm" in o["op"] for o in ops)  # a real step's work


def test_a_negative_operator_count_is_refused(capsys, data_dir, tmp_path):
    code, text, _ = profile(capsys, data_dir, tmp_path, "--method", "kd", "--ops", "-1")
    assert code == 2 and "--ops >= 0" in text
