"""A bf16 teacher while distilling, and a student trained under bf16 autocast: their outputs
reach the method in fp32, close to fp32's but not equal, and their runs are stored and reported
apart (`kd@bf16`, `kd@student-bf16`)."""

import json

import pytest
import torch

from bench.api import Batch, LazyLayers, ModelOutputs
from bench.cli import main
from bench.errors import BenchError
from bench.models.classifier import ModelSpec, build_classifier
from bench.models.precision import AutocastTeacher, as_fp32, check_native, check_precision
from bench.plugins import get_registry
from bench.training.step import StudentStep

NEEDS = frozenset({"logits", "hidden", "attentions"})


def batch(rows=3, length=12):
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, 30000, (rows, length), generator=g)
    mask = torch.ones_like(ids)
    mask[0, 8:] = 0  # a padded row: its masked scores must survive the casts
    return Batch(input_ids=ids, attention_mask=mask, token_type_ids=torch.zeros_like(ids),
                 labels=torch.zeros(rows, dtype=torch.long), domain_ids=torch.zeros(rows, dtype=torch.long))


def test_as_fp32_casts_every_output():
    bf = torch.ones(2, 3, dtype=torch.bfloat16)
    out = as_fp32(ModelOutputs(logits=bf, hidden_states=(bf, bf), attention_scores=None))
    assert out.logits.dtype == torch.float32 and {h.dtype for h in out.hidden_states} == {torch.float32}
    assert out.attention_scores is None and out.values is None


def test_as_fp32_casts_a_lazy_output_layer_by_layer_when_read():
    read = []
    lazy = LazyLayers(3, lambda i: read.append(i) or torch.full((2,), float(i), dtype=torch.bfloat16))
    out = as_fp32(ModelOutputs(logits=torch.ones(1), attention_probs=lazy))
    assert isinstance(out.attention_probs, LazyLayers) and read == []
    assert out.attention_probs[2].dtype == torch.float32 and out.attention_probs[2].tolist() == [2.0, 2.0]
    assert read == [2]


def test_a_bf16_teacher_gives_fp32_outputs_close_to_the_fp32_teachers():
    torch.manual_seed(0)
    teacher = build_classifier(ModelSpec("random:tinybert-4l312", init="random"), 3).eval()
    with torch.no_grad():
        full, half = teacher(batch(), NEEDS), AutocastTeacher(teacher)(batch(), NEEDS)
    for a, b in [(full.logits, half.logits), *zip(full.hidden_states, half.hidden_states)]:
        assert b.dtype == torch.float32 and a.shape == b.shape
        assert torch.allclose(a, b, atol=0.1, rtol=0.05)
    # the embedding output has no matrix product; every layer after it ran in bf16
    assert torch.equal(full.hidden_states[0], half.hidden_states[0])
    assert not torch.equal(full.logits, half.logits) and not torch.equal(full.hidden_states[1], half.hidden_states[1])
    for a, b in zip(full.attention_scores, half.attention_scores):
        real = a > -100  # the additive mask's entries stay masked
        assert torch.equal(real, b > -100)
        assert torch.allclose(a[real], b[real], atol=0.1, rtol=0.05)
    assert AutocastTeacher(teacher).config is teacher.config


def test_a_bf16_student_step_hands_the_loss_fp32_outputs_and_trains_fp32_weights():
    """The student's forward runs under autocast; the method's loss (tinybert's: logits, hidden
    states, attention scores) reads fp32 tensors close to the fp32 step's; gradients land on the
    fp32 weights."""
    distiller = get_registry().distiller("tinybert")(None)
    distiller.domains = ("books",)
    torch.manual_seed(0)
    teacher = build_classifier(ModelSpec("random:tiny"), 3).eval()
    student = build_classifier(ModelSpec("random:tiny"), 3)
    student.load_state_dict(teacher.state_dict())
    extra = distiller.extra_modules(teacher.config, student.config)
    seen = {}

    def loss(batch, student_out, teacher_out, stage):
        seen[len(seen)] = {student_out.logits.dtype, *(h.dtype for h in student_out.hidden_states),
                           *(s.dtype for s in student_out.attention_scores)}
        return real_loss(batch, student_out, teacher_out, stage)

    real_loss, distiller.loss = distiller.loss, loss
    parts = {}
    for precision in ("fp32", "bf16"):
        student.zero_grad(set_to_none=True)
        torch.manual_seed(1)
        step = StudentStep(distiller, student.train(), {"books": teacher}, precision=precision)
        parts[precision] = step(batch(rows=4), distiller.stages[0])
        sum(parts[precision].values()).backward()
        assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in student.encoder.parameters()
                   if p.requires_grad and p.grad is not None)
    assert seen == {0: {torch.float32}, 1: {torch.float32}}
    assert extra is None or all(p.dtype == torch.float32 for p in extra.parameters())
    full, half = (sum(float(v.detach()) for v in parts[p].values()) for p in ("fp32", "bf16"))
    assert half != full and abs(half - full) <= 0.05 * abs(full)


def test_unknown_precisions_are_refused():
    assert check_precision("bf16") == "bf16"
    with pytest.raises(BenchError, match="unknown teacher precision 'fp8'"):
        check_precision("fp8")
    with pytest.raises(BenchError, match="unknown student precision 'fp16'"):
        check_precision("fp16", "student")


def test_bf16_is_refused_where_the_cpu_would_emulate_it():
    avx2 = {"cpu_model": "AMD EPYC 7B13", "cpu_flags": ["avx2"]}
    with pytest.raises(BenchError) as refused:
        check_native("bf16", torch.device("cpu"), avx2)
    what, todo = str(refused.value).splitlines()
    assert "AMD EPYC 7B13" in what and "no native bf16" in what and "hundreds of times slower" in what
    assert "--teacher-precision fp32" in todo
    check_native("fp32", torch.device("cpu"), avx2)
    check_native("bf16", torch.device("cuda"), avx2)  # a GPU's bf16 does not depend on the host CPU
    for flags in (["avx2", "avx512f", "avx512_bf16"], ["avx2", "amx_bf16"]):
        check_native("bf16", torch.device("cpu"), {"cpu_model": "x", "cpu_flags": flags})
    check_native("bf16", torch.device("cpu"), {})  # flags unknown (not Linux): let through
    with pytest.raises(BenchError, match="run with --student-precision fp32"):
        check_native("bf16", torch.device("cpu"), avx2, option="--student-precision")


def test_a_bf16_run_on_an_emulating_cpu_stops_before_training(data_dir, tmp_path, fake_cpu, capsys):
    fake_cpu("avx2", "avx512f")
    code = main(["run", "--methods", "kd", "--suite", "amazon", "--preset", "smoke", "--domains", "books",
                 "--results-dir", str(tmp_path), "--data-dir", str(data_dir), "--teacher-precision", "bf16"])
    err = capsys.readouterr().err
    assert code == 2 and "Test CPU, which has no native bf16" in err and "--teacher-precision fp32" in err
    assert not any(tmp_path.iterdir())  # nothing trained, nothing written


def test_bf16_runs_are_stored_apart_and_record_their_precision(data_dir, tmp_path, fake_cpu):
    fake_cpu("avx2", "avx512f", "avx512_bf16")  # so that the test runs on any CPU, if slowly
    args = ["run", "--methods", "kd,finetune", "--suite", "amazon", "--preset", "smoke", "--domains", "books",
            "--results-dir", str(tmp_path), "--data-dir", str(data_dir)]
    assert main(args) == 0
    assert main([*args, "--teacher-precision", "bf16"]) == 0
    runs = tmp_path / "amazon" / "smoke"
    assert sorted(p.name for p in runs.iterdir()) == ["finetune", "kd", "kd@bf16"]  # no teacher: no precision
    full = json.loads((runs / "kd" / "books" / "seed1.json").read_text())
    half = json.loads((runs / "kd@bf16" / "books" / "seed1.json").read_text())
    assert full["teacher"]["precision"] == "fp32" and half["teacher"]["precision"] == "bf16"
    assert half["method"]["label"] == "kd@bf16" and half["method"]["name"] == "kd"
    assert half["teacher"]["key"] == full["teacher"]["key"]  # the same stored teacher, queried in bf16
    assert [h["step"] for h in half["train"]["history"]] == [h["step"] for h in full["train"]["history"]]


def test_bf16_student_runs_are_stored_apart_and_record_their_precision(data_dir, tmp_path, fake_cpu):
    fake_cpu("avx2", "avx512f", "avx512_bf16")
    args = ["run", "--methods", "kd,finetune", "--suite", "amazon", "--preset", "smoke", "--domains", "books",
            "--results-dir", str(tmp_path), "--data-dir", str(data_dir)]
    assert main(args) == 0
    assert main([*args, "--student-precision", "bf16"]) == 0
    runs = tmp_path / "amazon" / "smoke"
    assert sorted(p.name for p in runs.iterdir()) == ["finetune", "finetune@student-bf16", "kd", "kd@student-bf16"]
    full = json.loads((runs / "kd" / "books" / "seed1.json").read_text())
    half = json.loads((runs / "kd@student-bf16" / "books" / "seed1.json").read_text())
    assert full["student"]["precision"] == "fp32" and half["student"]["precision"] == "bf16"
    assert half["teacher"]["precision"] == "fp32" and half["teacher"]["key"] == full["teacher"]["key"]
    assert half["method"]["label"] == "kd@student-bf16" and half["method"]["name"] == "kd"
    losses = [[h["loss"] for h in r["train"]["history"]] for r in (full, half)]
    assert len(losses[0]) == len(losses[1]) and losses[0] != losses[1]  # trained apart, not copied


def test_a_bf16_student_on_an_emulating_cpu_stops_before_training(data_dir, tmp_path, fake_cpu, capsys):
    fake_cpu("avx2")
    code = main(["run", "--methods", "finetune", "--suite", "amazon", "--preset", "smoke", "--domains", "books",
                 "--results-dir", str(tmp_path), "--data-dir", str(data_dir), "--student-precision", "bf16"])
    err = capsys.readouterr().err
    assert code == 2 and "--student-precision bf16 on Test CPU" in err and "--student-precision fp32" in err
    assert not any(tmp_path.iterdir())
