"""The pkd, tinybert and minilm distillers: each loss against values computed independently here
with numpy in float64 (padding and layer maps included), the errors they raise before training,
their stages, and a smoke run of each through the CLI on both suites."""

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from bench.api import Batch, ModelOutputs
from bench.cli import main
from bench.errors import BenchError
from bench.losses import fit_layer_map, parse_layer_map, uniform_layer_map
from bench.plugins import get_registry

N_TEACHER, N_STUDENT = 4, 2  # the skip map is g = 2, 4
BATCH, SEQ, HEADS, CLASSES = 3, 6, 2, 3
LENGTHS = (6, 4, 3)  # rows 1 and 2 are padded


# -- numpy references -------------------------------------------------------------------------
def np_log_softmax(z, axis=-1):
    z = z - z.max(axis, keepdims=True)
    return z - np.log(np.exp(z).sum(axis, keepdims=True))


def np_softmax(z, axis=-1):
    return np.exp(np_log_softmax(z, axis))


def np_sce(zs, zt, t):
    return (-np_softmax(zt / t) * np_log_softmax(zs / t)).mean()


def np_cut(x, lengths=LENGTHS):
    """Each example's (heads, n, n) block of real query rows and real keys: padded positions are cut
    away rather than masked, so the references share nothing with the code's masking."""
    return [x[b, :, :n, :n] for b, n in enumerate(lengths)]


def np_row_kl(p_t, p_s):
    """Mean over heads and real query rows of KL(p_t || p_s), from lists of (heads, n, n) rows."""
    total = sum((t * np.log(t / s)).sum() for t, s in zip(p_t, p_s))
    return total / sum(t.shape[0] * t.shape[1] for t in p_t)


def np_value_relation(v, relation_heads=0):
    b, h, n, d = v.shape
    if relation_heads:
        v = v.transpose(0, 2, 1, 3).reshape(b, n, relation_heads, h * d // relation_heads).transpose(0, 2, 1, 3)
    return v @ v.transpose(0, 1, 3, 2) / np.sqrt(v.shape[-1])


def np_normalize(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


# -- inputs -----------------------------------------------------------------------------------
def make_batch(labels=(0, 2, 1)):
    mask = torch.zeros(BATCH, SEQ, dtype=torch.long)
    for b, n in enumerate(LENGTHS):
        mask[b, :n] = 1
    ids = torch.randint(5, 100, (BATCH, SEQ)) * mask
    return Batch(ids, mask, torch.zeros_like(ids), torch.tensor(labels), torch.zeros(BATCH, dtype=torch.long))


def make_outputs(rng, n_layers, hidden, heads=HEADS, head_dim=4):
    """Random outputs shaped as bench.models.classifier.Classifier gives them, in float64: scores carry the
    additive mask (the dtype's minimum) on padded keys."""
    additive = np.where(make_batch().attention_mask.numpy()[:, None, None, :] == 1, 0.0, np.finfo(np.float64).min)
    scores = [rng.normal(size=(BATCH, heads, SEQ, SEQ)) * 3 + additive for _ in range(n_layers)]
    as_t = lambda xs: tuple(torch.tensor(x) for x in xs)  # noqa: E731
    return ModelOutputs(
        logits=torch.tensor(rng.normal(size=(BATCH, CLASSES)) * 3),
        hidden_states=as_t(rng.normal(size=(BATCH, SEQ, hidden)) for _ in range(n_layers + 1)),
        attention_scores=as_t(scores),
        attention_probs=as_t(np_softmax(s) for s in scores),
        values=as_t(rng.normal(size=(BATCH, heads, SEQ, head_dim)) for _ in range(n_layers)),
    )


def config(layers, hidden, heads=HEADS):
    return SimpleNamespace(num_hidden_layers=layers, hidden_size=hidden, num_attention_heads=heads,
                           initializer_range=0.02)


def distiller(name, options=None):
    return get_registry().distiller(name)(options or {})


@pytest.fixture
def rng():
    return np.random.default_rng(0)


@pytest.fixture
def teacher_out(rng):
    return make_outputs(rng, N_TEACHER, hidden=8)


@pytest.fixture
def student_out(rng, teacher_out):  # drawn after the teacher's, so the two differ
    return make_outputs(rng, N_STUDENT, hidden=8)


def np_of(t):
    return t.detach().numpy()


# -- layer maps -------------------------------------------------------------------------------
@pytest.mark.parametrize("n_teacher,n_student,want", [(4, 2, (2, 4)), (12, 4, (3, 6, 9, 12)), (6, 3, (2, 4, 6)),
                                                      (12, 6, (2, 4, 6, 8, 10, 12)), (4, 4, (1, 2, 3, 4))])
def test_uniform_layer_map_is_m_times_n_over_m(n_teacher, n_student, want):
    assert uniform_layer_map(n_teacher, n_student, "x") == want


@pytest.mark.parametrize("n_teacher,n_student", [(2, 4), (6, 4), (12, 5)])
def test_uniform_layer_map_refuses_what_does_not_divide(n_teacher, n_student):
    with pytest.raises(BenchError, match="no uniform map") as err:
        uniform_layer_map(n_teacher, n_student, "tinybert")
    assert "layer_map" in err.value.hint


@pytest.mark.parametrize("layer_map", [[], [0, 2], [4, 2], [2, 2], ["2"]])
def test_parse_layer_map_refuses_malformed_maps(layer_map):
    with pytest.raises(BenchError, match="increasing teacher layers"):
        parse_layer_map(layer_map, "pkd")


@pytest.mark.parametrize("layer_map", [[2, 5], [1, 2, 3]])
def test_fit_layer_map_refuses_maps_that_do_not_fit(layer_map):
    with pytest.raises(BenchError, match="does not fit a 4-layer teacher and a 2-layer student"):
        fit_layer_map(layer_map, 4, 2, "pkd")
    assert fit_layer_map([1, 3], 4, 2, "pkd") == (1, 3)


# -- tinybert ---------------------------------------------------------------------------------
def np_tinybert(student_out, teacher_out, projections, teacher_layers, t=1.0, padding=False):
    """The four parts. Means over real tokens (attention: real query-key pairs), on the real parts
    cut out of each row; with `padding`, the references' means over the whole padded batch, padded
    keys masked by the batch's mask (not by a score threshold)."""
    keys = make_batch().attention_mask.numpy()[:, None, None, :] == 1

    def proj(i, x):
        return x @ np_of(projections[i].weight).T + np_of(projections[i].bias)

    def hidden_mse(a, b):
        if padding:
            return ((a - b) ** 2).mean()
        return np.concatenate([(a[i, :n] - b[i, :n]).ravel() ** 2 for i, n in enumerate(LENGTHS)]).mean()

    def attention_mse(a, b):
        if padding:
            return ((np.where(keys, a, 0.0) - np.where(keys, b, 0.0)) ** 2).mean()
        return np.concatenate([((x - y) ** 2).ravel() for x, y in zip(np_cut(a), np_cut(b))]).mean()

    hs, ht = [np_of(h) for h in student_out.hidden_states], [np_of(h) for h in teacher_out.hidden_states]
    attention = hidden = 0.0
    for m, g in enumerate(teacher_layers, start=1):
        a_s, a_t = np_of(student_out.attention_scores[m - 1]), np_of(teacher_out.attention_scores[g - 1])
        attention += attention_mse(a_s, a_t)
        hidden += hidden_mse(proj(m if len(projections) > 1 else 0, hs[m]), ht[g])
    return {"embedding": hidden_mse(proj(0, hs[0]), ht[0]), "attention": attention, "hidden": hidden,
            "prediction": np_sce(np_of(student_out.logits), np_of(teacher_out.logits), t)}


def tinybert_with_projections(options=None, student_hidden=6):
    d = distiller("tinybert", options)
    projections = d.extra_modules(config(N_TEACHER, 8), config(N_STUDENT, student_hidden)).double()
    return d, projections


@pytest.mark.parametrize("options,teacher_layers", [({}, (2, 4)), ({"layer_map": [1, 3]}, (1, 3)),
                                                    ({"shared_projection": True, "temperature": 2.0}, (2, 4)),
                                                    ({"loss_padding": True}, (2, 4))])
def test_tinybert_loss_matches_numpy(rng, teacher_out, options, teacher_layers):
    student_out = make_outputs(rng, N_STUDENT, hidden=6)  # narrower than the teacher: projections map 6 -> 8
    d, projections = tinybert_with_projections(options)
    assert len(projections) == (1 if options.get("shared_projection") else N_STUDENT + 1)
    assert d.teacher_layers == teacher_layers
    got = d.loss(make_batch(), student_out, teacher_out, "main")
    want = np_tinybert(student_out, teacher_out, projections, teacher_layers, options.get("temperature", 1.0),
                       options.get("loss_padding", False))
    assert d.reads_teacher_padding == options.get("loss_padding", False)  # only then no cached teacher outputs
    assert set(got) == set(want)
    for part in want:
        assert got[part].item() == pytest.approx(want[part], rel=1e-10), part


def test_tinybert_ignores_what_padded_keys_hold(rng, teacher_out):
    student_out = make_outputs(rng, N_STUDENT, hidden=6)
    d, _ = tinybert_with_projections()
    before = d.loss(make_batch(), student_out, teacher_out, "main")["attention"].item()
    for scores in student_out.attention_scores:  # other values under the mask: same loss
        scores[1, :, :, LENGTHS[1]:] = -500.0
    assert d.loss(make_batch(), student_out, teacher_out, "main")["attention"].item() == pytest.approx(before)


def test_tinybert_two_stages_split_the_parts(rng, teacher_out):
    student_out = make_outputs(rng, N_STUDENT, hidden=6)
    cls = get_registry().distiller("tinybert")
    assert cls.stages == ("main",) and cls().stages == ("main",)
    d, _ = tinybert_with_projections({"two_stage": True})
    assert d.stages == ("intermediate", "prediction")
    assert set(d.loss(make_batch(), student_out, teacher_out, "intermediate")) == {"embedding", "attention", "hidden"}
    assert set(d.loss(make_batch(), student_out, teacher_out, "prediction")) == {"prediction"}


@pytest.mark.parametrize("teacher,student,what", [
    (config(2, 8), config(4, 8), "no uniform map"),
    (config(4, 8, heads=4), config(2, 8), "teacher has 4 heads and the student 2"),
])
def test_tinybert_refuses_models_it_cannot_map(teacher, student, what):
    with pytest.raises(BenchError, match=what):
        distiller("tinybert").extra_modules(teacher, student)


@pytest.mark.parametrize("layer_map,what", [([4], "names 1 teacher layers for a 2-layer student"),
                                            ([2, 6], "does not fit a 4-layer teacher")])
def test_tinybert_refuses_layer_maps_that_do_not_fit(layer_map, what):
    with pytest.raises(BenchError, match=what) as err:
        distiller("tinybert", {"layer_map": layer_map}).extra_modules(config(4, 8), config(2, 8))
    assert err.value.hint


# -- pkd --------------------------------------------------------------------------------------
def np_pkd(student_out, teacher_out, labels, teacher_layers, alpha=0.7, T=10.0, beta=500.0,
           kd_reduction="elementwise", pt_reduction="mean"):
    zs, zt = np_of(student_out.logits), np_of(teacher_out.logits)
    log_ps, log_pt = np_log_softmax(zs / T), np_log_softmax(zt / T)
    kl = (np.exp(log_pt) * (log_pt - log_ps)).sum(-1)  # per example
    kd = T * T * (kl.mean() / zs.shape[1] if kd_reduction == "elementwise" else kl.mean())
    ce = -np_log_softmax(zs)[np.arange(len(labels)), labels].mean()
    pairs = list(enumerate(teacher_layers, start=1))  # (student layer, teacher layer)
    s = np.stack([np_normalize(np_of(student_out.hidden_states[m])[:, 0]) for m, _ in pairs], 1)
    t = np.stack([np_normalize(np_of(teacher_out.hidden_states[g])[:, 0]) for _, g in pairs], 1)
    pt = ((s - t) ** 2).mean() if pt_reduction == "mean" else ((s - t) ** 2).sum((1, 2)).mean()
    return {"kd": alpha * kd, "ce": (1 - alpha) * ce, "patience": beta * pt}


@pytest.mark.parametrize("options,teacher_layers", [
    ({}, (2,)),  # PKD-skip leaves the student's last layer to KD: student layer 1 <- teacher layer 2
    ({"layer_map": [2, 4]}, (2, 4)),
    ({"kd_reduction": "batchmean", "pt_reduction": "sum", "alpha": 0.5, "beta": 100.0, "temperature": 5.0}, (2,)),
])
def test_pkd_loss_matches_numpy(student_out, teacher_out, options, teacher_layers):
    d = distiller("pkd", options)
    assert d.extra_modules(config(N_TEACHER, 8), config(N_STUDENT, 8)) is None
    assert d.teacher_layers == teacher_layers
    batch = make_batch()
    got = d.loss(batch, student_out, teacher_out, "main")
    want = np_pkd(student_out, teacher_out, batch.labels.numpy(), teacher_layers, **options_without_map(options))
    assert set(got) == set(want)
    for part in want:
        assert got[part].item() == pytest.approx(want[part], rel=1e-10), part


def options_without_map(options):
    renamed = {"temperature": "T"}
    return {renamed.get(k, k): v for k, v in options.items() if k != "layer_map"}


def test_pkd_defaults_are_the_reference_run():
    o = distiller("pkd").options
    assert (o.alpha, o.beta, o.temperature, o.kd_reduction, o.pt_reduction) == (0.7, 500.0, 10.0, "elementwise", "mean")


@pytest.mark.parametrize("teacher,student,what", [
    (config(4, 8), config(2, 6), "teacher is 8 wide and the student 6"),
    (config(4, 8), config(1, 8), "a 1-layer student has none to learn from"),
    (config(2, 8), config(4, 8), "no uniform map"),
])
def test_pkd_refuses_models_it_cannot_map(teacher, student, what):
    with pytest.raises(BenchError, match=what) as err:
        distiller("pkd").extra_modules(teacher, student)
    assert err.value.hint


@pytest.mark.parametrize("options,what", [({"alpha": 1.5}, "alpha"), ({"temperature": 0}, "temperature"),
                                          ({"beta": -1.0}, "beta"), ({"kd_reduction": "sum"}, "kd_reduction"),
                                          ({"layer_map": [3, 1]}, "layer_map"), ({"gamma": 1}, "unknown option")])
def test_pkd_refuses_bad_options_when_built(options, what):
    with pytest.raises(BenchError, match=what):
        distiller("pkd", options)


# -- minilm -----------------------------------------------------------------------------------
def np_minilm(student_out, teacher_out, relation_heads=0, attention=True, t=1.0):
    """Attention transfer from the probabilities the model gives (padded keys hold exactly 0 there),
    value relations recomputed with a softmax over the real keys only."""
    want = {}
    if attention:
        want["attention"] = np_row_kl(np_cut(np_of(teacher_out.attention_probs[-1])),
                                      np_cut(np_of(student_out.attention_probs[-1])))
    relation_t = np_cut(np_value_relation(np_of(teacher_out.values[-1]), relation_heads))
    relation_s = np_cut(np_value_relation(np_of(student_out.values[-1]), relation_heads))
    want["value_relation"] = np_row_kl([np_softmax(r) for r in relation_t], [np_softmax(r) for r in relation_s])
    want["prediction"] = np_sce(np_of(student_out.logits), np_of(teacher_out.logits), t)
    return want


@pytest.mark.parametrize("options", [{}, {"relation_heads": 4, "temperature": 2.0}])
def test_minilm_loss_matches_numpy(student_out, teacher_out, options):
    d = distiller("minilm", options)
    assert d.extra_modules(config(N_TEACHER, 8), config(N_STUDENT, 8)) is None
    got = d.loss(make_batch(), student_out, teacher_out, "main")
    want = np_minilm(student_out, teacher_out, options.get("relation_heads", 0), t=options.get("temperature", 1.0))
    assert set(got) == set(want)
    for part in want:
        assert got[part].item() == pytest.approx(want[part], rel=1e-9), part


def test_minilm_relation_heads_bridge_different_head_counts(rng, teacher_out):
    student_out = make_outputs(rng, N_STUDENT, hidden=8, heads=4, head_dim=2)  # 4 heads of 2 vs 2 heads of 4
    options = {"relation_heads": 2, "attention_transfer": False}
    d = distiller("minilm", options)
    d.extra_modules(config(N_TEACHER, 8, heads=2), config(N_STUDENT, 8, heads=4))
    got = d.loss(make_batch(), student_out, teacher_out, "main")
    want = np_minilm(student_out, teacher_out, relation_heads=2, attention=False)
    assert set(got) == {"value_relation", "prediction"}
    assert got["value_relation"].item() == pytest.approx(want["value_relation"], rel=1e-9)


def test_minilm_padding_does_not_contribute(rng, student_out, teacher_out):
    d = distiller("minilm")
    d.extra_modules(config(N_TEACHER, 8), config(N_STUDENT, 8))
    before = d.loss(make_batch(), student_out, teacher_out, "main")
    b, n = 2, LENGTHS[2]
    student_out.values[-1][b, :, n:] = torch.tensor(rng.normal(size=(HEADS, SEQ - n, 4)) * 100)
    student_out.attention_scores[-1][b, :, n:, :n] += 50.0  # padded query rows: any attention at all
    after = d.loss(make_batch(), student_out, teacher_out, "main")
    for part in before:
        assert after[part].item() == pytest.approx(before[part].item(), rel=1e-12), part


def test_minilm_is_zero_when_student_equals_teacher(teacher_out):
    d = distiller("minilm")
    d.extra_modules(config(N_TEACHER, 8), config(N_TEACHER, 8))
    got = d.loss(make_batch(), teacher_out, teacher_out, "main")
    assert got["attention"].item() == pytest.approx(0.0, abs=1e-12)
    assert got["value_relation"].item() == pytest.approx(0.0, abs=1e-12)


def test_minilm_finetune_option_distils_then_fine_tunes(student_out, teacher_out):
    d = distiller("minilm", {"prediction": "finetune"})
    assert d.stages == ("distill", "finetune") and distiller("minilm").stages == ("main",)
    d.extra_modules(config(N_TEACHER, 8), config(N_STUDENT, 8))
    batch = make_batch()
    assert set(d.loss(batch, student_out, teacher_out, "distill")) == {"attention", "value_relation"}
    ce = d.loss(batch, student_out, teacher_out, "finetune")["ce"].item()
    zs = np_of(student_out.logits)
    assert ce == pytest.approx(-np_log_softmax(zs)[np.arange(BATCH), batch.labels.numpy()].mean(), rel=1e-10)


@pytest.mark.parametrize("options,teacher,student,what", [
    ({}, config(4, 8, heads=4), config(2, 8, heads=2), "teacher has 4 and the student 2"),
    ({"relation_heads": 2}, config(4, 8, heads=4), config(2, 8, heads=2), "teacher has 4 and the student 2"),
    ({"relation_heads": 3}, config(4, 8), config(2, 8), "does not divide the teacher's width 8"),
])
def test_minilm_refuses_models_it_cannot_match(options, teacher, student, what):
    with pytest.raises(BenchError, match=what) as err:
        distiller("minilm", options).extra_modules(teacher, student)
    assert err.value.hint


def test_minilm_refuses_unknown_prediction_when_built():
    with pytest.raises(BenchError, match="prediction 'ce' is not known"):
        distiller("minilm", {"prediction": "ce"})


# -- on the real models -----------------------------------------------------------------------
@pytest.mark.parametrize("name,options", [("pkd", {}), ("tinybert", {}), ("tinybert", {"two_stage": True}),
                                          ("minilm", {}), ("minilm", {"prediction": "finetune"})])
def test_losses_on_the_smoke_models_give_finite_gradients(name, options):
    """The outputs of bench.models.classifier line up with what each loss indexes, and the masked entries
    (about -3.4e38 in float32) leave no nan or inf in the student's gradients."""
    from bench.models.classifier import ModelSpec, build_classifier

    torch.manual_seed(0)
    teacher = build_classifier(ModelSpec("random:tiny"), CLASSES).eval()
    student = build_classifier(ModelSpec("random:tiny", init="random", layers=(0, 1)), CLASSES)
    d = distiller(name, options)
    extra = d.extra_modules(teacher.config, student.config)
    batch = make_batch()
    for stage in d.stages:
        student.zero_grad()
        with torch.no_grad():
            teacher_out = teacher(batch, d.needs)
        parts = d.loss(batch, student(batch, d.needs), teacher_out, stage)
        sum(parts.values()).backward()
        assert all(torch.isfinite(v) for v in parts.values()), parts
        params = list(student.parameters()) + (list(extra.parameters()) if extra is not None else [])
        assert all(torch.isfinite(p.grad).all() for p in params if p.grad is not None)


# -- through the CLI --------------------------------------------------------------------------
METHODS = ("tinybert", "pkd", "minilm")
PARTS = {"tinybert": {"embedding", "attention", "hidden", "prediction"}, "pkd": {"kd", "ce", "patience"},
         "minilm": {"attention", "value_relation", "prediction"}}


@pytest.fixture(scope="module")
def teacher_store(tmp_path_factory):
    return tmp_path_factory.mktemp("teachers")


@pytest.fixture
def same_store(teacher_store, monkeypatch):
    """The runs here share their smoke teachers: each is trained once."""
    monkeypatch.setenv("BENCH_CACHE_DIR", str(teacher_store))


@pytest.mark.parametrize("suite,domain", [("amazon", "books"), ("mnli", "fiction")])
def test_each_distiller_runs_the_smoke_preset(suite, domain, tmp_path, data_dir, same_store):
    assert main(["run", "--methods", ",".join(METHODS), "--suite", suite, "--preset", "smoke", "--domains", domain,
                 "--results-dir", str(tmp_path), "--data-dir", str(data_dir)]) == 0
    for method in METHODS:
        record = json.loads((tmp_path / suite / "smoke" / method / domain / "seed1.json").read_text())
        assert record["method"]["plugin"] == f"bench_plugins.distillers.{method}"
        assert 0.0 <= record["metrics"]["accuracy"] <= 1.0
        assert record["train"]["steps"] == 12
        last = record["train"]["history"][-1]
        assert PARTS[method] <= set(last) and all(np.isfinite(last[p]) for p in PARTS[method])


def test_stages_that_never_train_the_classifier_keep_their_last_weights():
    assert not distiller("tinybert", {"two_stage": True}).selects_on_dev("intermediate")
    assert distiller("tinybert", {"two_stage": True}).selects_on_dev("prediction")
    assert not distiller("minilm", {"prediction": "finetune"}).selects_on_dev("distill")
    assert distiller("minilm").selects_on_dev("main") and distiller("kd").selects_on_dev("main")


def test_two_stage_tinybert_trains_both_stages(tmp_path, data_dir, same_store):
    from bench.api import DataConfig
    from bench.grid.runner import Runner
    from bench.grid.spec import Grid
    from bench.presets import get_preset

    registry = get_registry()
    grid = Grid(suite=registry.suite("amazon"), preset=get_preset("smoke"), methods=[registry.distiller("tinybert")],
                domains=["books"], seeds=[1], data=DataConfig(str(data_dir)), results_dir=str(tmp_path),
                method_options={"tinybert": {"two_stage": True}})
    runner = Runner(grid, registry)
    assert "books: tinybert seed 1: 192 examples (+ teacher forwards)" in runner.plan()  # 2 stages x 2 epochs x 48
    (path,) = runner.run()
    record = json.loads(path.read_text())
    assert record["method"]["config"]["two_stage"] is True
    assert record["train"]["steps"] == 24
    history = record["train"]["history"]
    assert {"embedding", "attention", "hidden"} <= set(history[0]) and "prediction" not in history[0]
    assert set(history[-1]) >= {"prediction"} and "hidden" not in history[-1]


def test_ls_distillers_lists_them(capsys):
    assert main(["ls", "distillers"]) == 0
    out = capsys.readouterr().out
    for method in (*METHODS, "metakd"):
        assert f"[bench_plugins.distillers.{method}]" in out


def test_a_layer_map_that_does_not_fit_fails_before_any_teacher_trains(tmp_path, data_dir, caplog):
    import logging

    from bench.api import DataConfig
    from bench.errors import BenchError
    from bench.grid.runner import Runner
    from bench.grid.spec import Grid
    from bench.plugins import get_registry
    from bench.presets import get_preset

    registry = get_registry()
    grid = Grid(suite=registry.suite("amazon"), preset=get_preset("smoke"), methods=[registry.distiller("tinybert")],
                domains=["books"], seeds=[1], data=DataConfig(str(data_dir)), results_dir=str(tmp_path),
                method_options={"tinybert": {"layer_map": [2, 4, 6]}})  # 3 teacher layers for a 2-layer student
    caplog.set_level(logging.INFO)
    with pytest.raises(BenchError, match=r"tinybert layer_map \[2, 4, 6\] does not fit a 4-layer teacher"):
        Runner(grid, registry).run()
    assert "training teacher" not in caplog.text
    assert not list(tmp_path.iterdir())
