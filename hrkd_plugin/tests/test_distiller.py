"""The HRKD distillers (hrkd, hrkd-nohier, hrkd-nograph) against numpy: the loss its docstring states, the prototypes,
the gradients, the trace, the errors, discovery and one smoke run on the real Amazon data."""

from __future__ import annotations

import json
from importlib import metadata
from types import SimpleNamespace

import hrkd_plugin.distiller as hrkd_module
import numpy as np
import pytest
import torch
from hrkd_plugin.distiller import HRKD, HRKDNoGraph, HRKDNoHierarchy

from bench.api import Batch, ModelOutputs
from bench.errors import BenchError
from bench.testing import check_distiller

DOMAINS = ("books", "dvd", "kitchen")
LENGTHS = ([5, 3], [7, 2, 4], [4, 2])  # per domain, each row's real tokens: sub-batches differ in size and length
M, N = 2, 4  # student and teacher layers: g(m) = m * N / M = 2m
HS, HT, HEADS, CLASSES = 8, 12, 2, 3
FP32_MIN = float(np.finfo(np.float32).min)



# ---- synthetic inputs, kept as float64 numpy for the expected values --------------------------------------------


def configs(student_heads=HEADS):
    teacher = SimpleNamespace(num_hidden_layers=N, hidden_size=HT, num_attention_heads=HEADS)
    student = SimpleNamespace(num_hidden_layers=M, hidden_size=HS, num_attention_heads=student_heads,
                              initializer_range=0.02)
    return teacher, student


def build(cls=HRKD, options=None, seed=0):
    """A distiller over DOMAINS with its extra modules built (and returned)."""
    torch.manual_seed(seed)
    distiller = cls(options)
    distiller.domains = DOMAINS
    modules = distiller.extra_modules(*configs())
    with torch.no_grad():  # non-zero biases and larger weights, so a missing bias or a swapped projection shows
        for p in distiller.projections.parameters():
            p.normal_(0.0, 0.5)
    return distiller, modules


def make_distiller(cls=HRKD, options=None, seed=0):
    return build(cls, options, seed)[0]


def scores(rng, mask, masked_value):
    """Pre-softmax attention scores (batch, heads, seq, seq) with the additive mask at padded keys."""
    raw = rng.normal(0.0, 3.0, (mask.shape[0], HEADS, mask.shape[1], mask.shape[1]))
    return np.where(mask[:, None, None, :] > 0, raw, raw + masked_value)


def make_domain(rng, lengths, student_mask=-1e4, teacher_mask=-1e4):
    """One domain's batch, and numpy student/teacher outputs (hidden: embeddings + layers; attentions: per layer)."""
    b, s = len(lengths), max(lengths)
    mask = (np.arange(s)[None, :] < np.array(lengths)[:, None]).astype(np.int64)
    student = dict(hidden=[rng.normal(size=(b, s, HS)) for _ in range(M + 1)],
                   attn=[scores(rng, mask, student_mask) for _ in range(M)], logits=rng.normal(0, 2, (b, CLASSES)))
    teacher = dict(hidden=[rng.normal(size=(b, s, HT)) for _ in range(N + 1)],
                   attn=[scores(rng, mask, teacher_mask) for _ in range(N)], logits=rng.normal(0, 2, (b, CLASSES)))
    ids = torch.tensor(np.where(mask > 0, 1000, 0))
    batch = Batch(ids, torch.tensor(mask), torch.zeros_like(ids), torch.zeros(b, dtype=torch.long),
                  torch.zeros(b, dtype=torch.long))
    return batch, mask, student, teacher


def to_outputs(out, requires_grad=False):
    # float32 as the models give; the numpy side re-reads these values in float64.
    t = lambda x: torch.tensor(x, dtype=torch.float32, requires_grad=requires_grad)  # noqa: E731
    return ModelOutputs(logits=t(out["logits"]), hidden_states=tuple(t(h) for h in out["hidden"]),
                        attention_scores=tuple(torch.tensor(a, dtype=torch.float32) for a in out["attn"]))


def as64(out):
    """The float64 values of what the torch side sees (the float32 rounding), masked scores included."""
    f = lambda x: np.asarray(x, dtype=np.float32).astype(np.float64)  # noqa: E731
    return dict(hidden=[f(h) for h in out["hidden"]], attn=[f(a) for a in out["attn"]], logits=f(out["logits"]))


def make_inputs(seed=0, student_mask=-1e4, teacher_mask=-1e4):
    rng = np.random.default_rng(seed)
    made = [make_domain(rng, lengths, student_mask, teacher_mask) for lengths in LENGTHS]
    batch = {d: m[0] for d, m in zip(DOMAINS, made)}
    masks = [m[1] for m in made]
    student = [as64(m[2]) for m in made]
    teacher = [as64(m[3]) for m in made]
    return batch, masks, student, teacher, [m[2] for m in made], [m[3] for m in made]


# ---- numpy, float64 ---------------------------------------------------------------------------------------------


def np_log_softmax(x):
    z = x - x.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def np_sce(zs, zt, t):
    return float(np.mean(-np.exp(np_log_softmax(zt / t)) * np_log_softmax(zs / t)))


def np_mse(a, b):
    return float(np.mean((a - b) ** 2))


def np_projections(distiller):
    return [(p.weight.detach().double().numpy(), p.bias.detach().double().numpy()) for p in distiller.projections]


def np_domain_parts(student, teacher, mask, proj, padding=False):
    """TinyBERT's parts of one domain, per student layer m = 0..M: embedding (m = 0), attention and hidden (m >= 1).
    Means over real tokens (attention: real query-key pairs), on the real parts cut out of each row; with `padding`,
    the reference's means over the padded sub-batch."""
    project = lambda h, m: h @ proj[m][0].T + proj[m][1]  # noqa: E731
    keys = mask[:, None, None, :] > 0  # padded keys count as 0 on both sides: what the <= -100 rule is for
    lengths = [int(n) for n in (mask > 0).sum(-1)]

    def hidden_mse(a, b):
        if padding:
            return np_mse(a, b)
        return float(np.concatenate([((a[i, :n] - b[i, :n]) ** 2).ravel() for i, n in enumerate(lengths)]).mean())

    def attention_mse(a, b):
        if padding:
            return np_mse(np.where(keys, a, 0.0), np.where(keys, b, 0.0))
        return float(np.concatenate([((a[i, :, :n, :n] - b[i, :, :n, :n]) ** 2).ravel()
                                     for i, n in enumerate(lengths)]).mean())

    embedding = hidden_mse(project(student["hidden"][0], 0), teacher["hidden"][0])
    attention = [attention_mse(student["attn"][m - 1], teacher["attn"][2 * m - 1]) for m in range(1, M + 1)]
    hidden = [hidden_mse(project(student["hidden"][m], m), teacher["hidden"][2 * m]) for m in range(1, M + 1)]
    return embedding, attention, hidden


def np_expected(student, teacher, masks, proj, ratios, pred_weight, t, padding=False):
    """The docstring's loss, part by part, summed over domains; ratios[m][d] (all 1 without the graph)."""
    parts = dict(embedding=0.0, attention=0.0, hidden=0.0, prediction=0.0)
    for d in range(len(student)):
        embedding, attention, hidden = np_domain_parts(student[d], teacher[d], masks[d], proj, padding)
        parts["embedding"] += ratios[0][d] * embedding
        parts["attention"] += sum(ratios[m][d] * attention[m - 1] for m in range(1, M + 1))
        parts["hidden"] += sum(ratios[m][d] * hidden[m - 1] for m in range(1, M + 1))
        parts["prediction"] += pred_weight * np_sce(student[d]["logits"], teacher[d]["logits"], t)
    return parts


def np_prototypes(student, masks, proj, padding):
    """(M+1, D, HT): the projected student hidden states averaged over each domain's real tokens (or every position)."""
    out = np.zeros((M + 1, len(student), HT))
    for d, (s, mask) in enumerate(zip(student, masks)):
        for m in range(M + 1):
            projected = s["hidden"][m] @ proj[m][0].T + proj[m][1]
            out[m, d] = projected.reshape(-1, HT).mean(0) if padding else projected[mask > 0].mean(0)
    return out


def capture_graph(distiller, replace=None):
    """Record the graph's input and output on every call; `replace` swaps its ratios for fixed ones."""
    seen = {"inputs": [], "ratios": [], "hier": []}

    def pre(module, args):
        seen["inputs"].append(args[0].detach().double().numpy())

    def post(module, args, output):
        ratios, hier = output
        if replace is not None:
            ratios = [torch.tensor(r, dtype=torch.float32) for r in replace]
        seen["ratios"].append([r.detach().double().numpy() for r in ratios])
        seen["hier"].append([h.detach().double().numpy() for h in hier])
        return ratios, hier

    distiller.graph.register_forward_pre_hook(pre)
    distiller.graph.register_forward_hook(post)
    return seen


def run_loss(distiller, batch, s_out, t_out, requires_grad=False):
    student_out = {d: to_outputs(o, requires_grad) for d, o in zip(DOMAINS, s_out)}
    teacher_out = {d: to_outputs(o) for d, o in zip(DOMAINS, t_out)}
    return distiller.multi_domain_loss(batch, student_out, teacher_out, "main"), student_out


def assert_parts(parts, expected):
    assert set(parts) == set(expected)
    for name, value in expected.items():
        assert torch.is_tensor(parts[name]) and parts[name].dim() == 0
        assert parts[name].item() == pytest.approx(value, rel=2e-5, abs=1e-6), name


# ---- 1. the loss with the graph ------------------------------------------------------------------------------------

# Distinct per layer and domain: the eval-mode graph gives ratios within 1e-3 of 1/D (its docstring says why), which
# would hide a ratio applied to the wrong domain or layer.
FIXED_RATIOS = np.array([[0.6, 0.3, 0.1], [0.15, 0.25, 0.6], [0.2, 0.7, 0.1]])


@pytest.mark.parametrize("ratios_from", ["graph", "fixed"])
@pytest.mark.parametrize("cls", [HRKD, HRKDNoHierarchy])
@pytest.mark.parametrize("temperature", [1.0, 2.0])
@pytest.mark.parametrize("student_mask,teacher_mask", [(-1e4, -1e4), (FP32_MIN, FP32_MIN), (-1e4, FP32_MIN)])
def test_hrkd_loss_matches_numpy(ratios_from, cls, temperature, student_mask, teacher_mask):
    distiller = make_distiller(cls, {"temperature": temperature})
    distiller.graph.eval()
    seen = capture_graph(distiller, FIXED_RATIOS if ratios_from == "fixed" else None)
    batch, masks, student, teacher, s_out, t_out = make_inputs(1, student_mask, teacher_mask)
    parts, _ = run_loss(distiller, batch, s_out, t_out)

    proj = np_projections(distiller)
    protos = np_prototypes(student, masks, proj, padding=False)
    assert len(seen["inputs"]) == 1
    np.testing.assert_allclose(seen["inputs"][0], protos, rtol=1e-5, atol=1e-5)
    if ratios_from == "graph":  # the graph itself is checked against numpy in test_graph.py
        with torch.no_grad():
            ratios = [r.double().numpy() for r in distiller.graph.forward(torch.tensor(protos, dtype=torch.float32))[0]]
    else:
        ratios = FIXED_RATIOS
    np.testing.assert_allclose(np.array(seen["ratios"][0]), ratios, atol=1e-6)
    assert_parts(parts, np_expected(student, teacher, masks, proj, ratios, 1 / len(DOMAINS), temperature))


def test_the_mask_rule_matters_here():
    # Guards the inputs above: without zeroing padded keys the attention part would differ (or overflow).
    batch, masks, student, teacher, _, _ = make_inputs(1)
    keys = masks[0][:, None, None, :] > 0
    with_rule = np_mse(np.where(keys, student[0]["attn"][0], 0), np.where(keys, teacher[0]["attn"][1], 0))
    assert np_mse(student[0]["attn"][0], teacher[0]["attn"][1]) > with_rule * 1.05


def test_prototypes_with_padding_are_the_plain_mean():
    distiller = make_distiller(HRKD, {"prototype_padding": True})
    distiller.graph.eval()
    seen = capture_graph(distiller)
    batch, masks, student, teacher, s_out, t_out = make_inputs(2)
    run_loss(distiller, batch, s_out, t_out)
    proj = np_projections(distiller)
    plain, masked = (np_prototypes(student, masks, proj, padding=p) for p in (True, False))
    assert np.abs(plain - masked).max() > 0.1  # the padding really moves the mean
    np.testing.assert_allclose(seen["inputs"][0], plain, rtol=1e-5, atol=1e-5)


# ---- 2. no graph --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("temperature,padding", [(1.0, False), (2.0, False), (1.0, True)])
def test_nograph_is_tinybert_summed_over_domains(temperature, padding):
    distiller, modules = build(HRKDNoGraph, {"temperature": temperature, "loss_padding": padding})
    assert distiller.graph is None
    assert distiller.reads_teacher_padding == padding  # only then no cached teacher outputs
    assert {name.split(".")[0] for name, _ in modules.named_parameters()} == {"projections"}
    batch, masks, student, teacher, s_out, t_out = make_inputs(3, -1e4, FP32_MIN)
    parts, _ = run_loss(distiller, batch, s_out, t_out)
    ones = np.ones((M + 1, len(DOMAINS)))
    assert_parts(parts, np_expected(student, teacher, masks, np_projections(distiller), ones, 1.0, temperature,
                                    padding))
    assert distiller.trace() is None


# ---- 3. gradients -------------------------------------------------------------------------------------------------


def grads(options):
    distiller = make_distiller(HRKD, options)
    distiller.graph.train()
    batch, _, _, _, s_out, t_out = make_inputs(4)
    torch.manual_seed(7)  # the same dropout masks for every options
    parts, student_out = run_loss(distiller, batch, s_out, t_out, requires_grad=True)
    sum(parts.values()).backward()
    return distiller, student_out


def test_ratios_pass_gradients_to_the_student_unless_detached():
    free, free_out = grads(None)
    detached, detached_out = grads({"detach_ratios": True})
    for a, b in zip(free.projections.parameters(), detached.projections.parameters()):
        assert torch.equal(a, b)  # the same modules: only the option differs
    # The prediction term does not go through the ratios: its gradient is the same either way.
    assert torch.allclose(free_out["books"].logits.grad, detached_out["books"].logits.grad, atol=1e-7)
    # Hidden states feed the prototypes: with free ratios the gradient also comes that way.
    for d in DOMAINS:
        for m in range(M + 1):
            g_free, g_detached = free_out[d].hidden_states[m].grad, detached_out[d].hidden_states[m].grad
            assert g_free is not None and g_detached is not None
            assert not torch.allclose(g_free, g_detached, rtol=1e-4, atol=1e-7), (d, m)


def test_graph_is_frozen_by_default_and_the_projections_train():
    default, _ = grads(None)
    assert all(not p.requires_grad and p.grad is None for p in default.graph.parameters())
    assert all(p.requires_grad and p.grad is not None and p.grad.abs().sum() > 0
               for p in default.projections.parameters())
    trained, _ = grads({"train_graph": True})
    params = list(trained.graph.parameters())
    assert all(p.requires_grad for p in params)
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in params)


# ---- 4. trace -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("cls", [HRKD, HRKDNoHierarchy])
def test_trace_is_the_mean_of_the_steps_ratios_then_resets(cls):
    distiller = make_distiller(cls)
    distiller.graph.train()
    seen = capture_graph(distiller)
    assert distiller.trace() is None
    batch, _, _, _, s_out, t_out = make_inputs(5)
    torch.manual_seed(0)
    run_loss(distiller, batch, s_out, t_out)
    run_loss(distiller, batch, s_out, t_out)
    trace = distiller.trace()
    assert trace["domains"] == list(DOMAINS) and trace["steps_averaged"] == 2
    steps = np.array(seen["ratios"])  # (steps, layers, domains)
    assert np.abs(steps[0] - steps[1]).max() > 1e-4  # dropout moved them, so the mean is a real check
    ratios = np.array(trace["ratios"])
    assert ratios.shape == (M + 1, len(DOMAINS))
    np.testing.assert_allclose(ratios, steps.mean(axis=0), atol=2e-6)
    np.testing.assert_allclose(ratios.sum(axis=1), np.ones(M + 1), atol=1e-5)
    if cls is HRKD:
        hier = trace["hierarchical_ratios"]
        assert [np.array(h).shape for h in hier] == [(len(DOMAINS), m + 1) for m in range(1, M + 1)]
        for m, h in enumerate(hier):
            np.testing.assert_allclose(np.array(h), (seen["hier"][0][m] + seen["hier"][1][m]) / 2, atol=2e-6)
    else:
        assert trace["hierarchical_ratios"] == []
    assert distiller.trace() is None


def test_nograph_has_no_trace():
    distiller = make_distiller(HRKDNoGraph)
    batch, _, _, _, s_out, t_out = make_inputs(5)
    run_loss(distiller, batch, s_out, t_out)
    assert distiller.trace() is None


# ---- 5. errors ----------------------------------------------------------------------------------------------------


def test_errors_are_clear():
    distiller = make_distiller(HRKD)
    batch, _, _, _, s_out, t_out = make_inputs(6)
    student_out = {d: to_outputs(o) for d, o in zip(DOMAINS, s_out)}
    teacher_out = {d: to_outputs(o) for d, o in zip(DOMAINS, t_out)}
    with pytest.raises(BenchError, match="multi_domain_loss") as info:
        distiller.loss(batch["books"], student_out["books"], teacher_out["books"], "main")
    assert info.value.hint
    reordered = {d: batch[d] for d in reversed(DOMAINS)}
    with pytest.raises(BenchError, match="sub-batches"):
        distiller.multi_domain_loss(reordered, student_out, teacher_out, "main")
    missing = {d: batch[d] for d in DOMAINS[:2]}
    with pytest.raises(BenchError, match="sub-batches"):
        distiller.multi_domain_loss(missing, student_out, teacher_out, "main")

    other_heads = HRKD()
    other_heads.domains = DOMAINS
    with pytest.raises(BenchError, match="heads"):
        other_heads.extra_modules(configs()[0], configs(student_heads=4)[1])
    with pytest.raises(BenchError, match="domains"):
        HRKD().extra_modules(*configs())
    for bad in ({"temperature": 0}, {"graph_dropout": 1.0}, {"leaky_relu_slope": -0.1},
                {"train_graph": True, "detach_ratios": True}):
        with pytest.raises(BenchError) as info:
            HRKD(bad)
        assert info.value.hint


# ---- 6. conformance -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("cls", [HRKD, HRKDNoHierarchy, HRKDNoGraph])
@pytest.mark.parametrize("options", [None, {"train_graph": True}, {"detach_ratios": True}])
def test_conformance(cls, options):
    check_distiller(cls, options)


# ---- 7. discovery -------------------------------------------------------------------------------------------------


def test_discovered_through_the_entry_point(monkeypatch):
    from bench.plugins import Registry, make_plugin_manager, plugin_version, set_registry

    try:
        installed = metadata.version("kd-bench-hrkd")
    except metadata.PackageNotFoundError:
        pytest.skip("kd-bench-hrkd is not installed")
    monkeypatch.delenv("BENCH_NO_ENTRY_POINTS", raising=False)
    monkeypatch.delenv("BENCH_LOAD_PLUGINS", raising=False)
    try:
        registry = Registry.build(make_plugin_manager(load_entry_points=True))
        set_registry(registry)
        for cls in (HRKD, HRKDNoHierarchy, HRKDNoGraph):
            assert registry.distiller(cls.name) is cls
            assert registry.owner("distiller", cls.name) == "hrkd"
        assert plugin_version("hrkd") == installed
    finally:
        set_registry(None)


# ---- 8. end to end ------------------------------------------------------------------------------------------------


def test_smoke_run_on_amazon(tmp_path, data_dir):
    from bench.cli import main
    from bench.plugins import Registry, make_plugin_manager, set_registry
    from bench.presets import get_preset

    pm = make_plugin_manager(load_entry_points=False)  # registered here, so no entry point is needed
    pm.register(hrkd_module, name="hrkd")
    set_registry(Registry.build(pm))
    code = main(["run", "--methods", "hrkd", "--suite", "amazon", "--preset", "smoke", "--domains", "books,dvd",
                 "--results-dir", str(tmp_path), "--data-dir", str(data_dir)])
    assert code == 0
    files = {p.relative_to(tmp_path).as_posix(): json.loads(p.read_text()) for p in tmp_path.rglob("*.json")}
    assert sorted(files) == ["amazon/smoke/hrkd/books/seed1.json", "amazon/smoke/hrkd/dvd/seed1.json"]
    records = list(files.values())
    assert all(r["method"]["student_kind"] == "multi" and r["teacher"]["kind"] == "multi" for r in records)
    assert all(r["method"]["plugin"] == "hrkd" for r in records)
    assert all(r["suite"]["trained_on"] == ["books", "dvd"] for r in records)
    assert records[0]["teacher"]["key"] == records[1]["teacher"]["key"]

    layers = len(get_preset("smoke").student.layers)
    assert layers == 2
    train = records[0]["train"]
    assert train["history"] == records[1]["train"]["history"]  # one training for both
    traces = [h["trace"] for h in train["history"]]
    assert traces and all(t["domains"] == ["books", "dvd"] for t in traces)
    for t in traces:
        assert len(t["ratios"]) == layers + 1
        for r in t["ratios"]:
            assert len(r) == 2 and sum(r) == pytest.approx(1.0, abs=1e-5)
        assert [np.array(h).shape for h in t["hierarchical_ratios"]] == [(2, 2), (2, 3)]
    assert sum(t["steps_averaged"] for t in traces) == train["steps"]


def numbers(value):
    """Every number in a history entry's value (a loss part, or the trace's nested lists), in order."""
    if isinstance(value, dict):
        return [n for k in sorted(value) for n in numbers(value[k])]
    if isinstance(value, list):
        return [n for v in value for n in numbers(v)]
    return [value] if isinstance(value, (int, float)) else []


def test_runs_with_and_without_the_teacher_cache_agree(tmp_path, data_dir, monkeypatch):
    """hrkd on Amazon smoke, the multi teacher's outputs cached (one cache per domain, filled in the first
    epoch) or not: the same test accuracy, selected step and dev curve; losses and the graph's ratios to the
    tolerance the host's cache test uses."""
    from bench.cli import main
    from bench.plugins import Registry, make_plugin_manager, set_registry

    pm = make_plugin_manager(load_entry_points=False)
    pm.register(hrkd_module, name="hrkd")
    set_registry(Registry.build(pm))
    outputs = tmp_path / "store" / "teacher-outputs"
    monkeypatch.setenv("BENCH_CACHE_DIR", str(tmp_path / "store"))  # one teacher for both runs
    records, folders = {}, {}
    for mode in ("off", "use"):
        assert main(["run", "--methods", "hrkd", "--suite", "amazon", "--preset", "smoke", "--domains", "books,dvd",
                     "--teacher-cache", mode, "--results-dir", str(tmp_path / mode), "--data-dir", str(data_dir)]) == 0
        records[mode] = {d: json.loads((tmp_path / mode / "amazon" / "smoke" / "hrkd" / d / "seed1.json").read_text())
                         for d in ("books", "dvd")}
        folders[mode] = sorted(json.loads(p.read_text())["domain"] for p in outputs.glob("*/cache.json"))
    assert folders == {"off": [], "use": ["books", "dvd"]}  # the cached run read through a cache per domain

    for domain in ("books", "dvd"):
        off, use = records["off"][domain], records["use"][domain]
        assert (off["teacher"]["cache"], use["teacher"]["cache"]) == ("off", "use")
        assert off["teacher"]["key"] == use["teacher"]["key"]
        assert use["metrics"]["accuracy"] == off["metrics"]["accuracy"], domain
        assert use["train"]["selected_step"] == off["train"]["selected_step"], domain
        assert use["train"]["best_dev_accuracy"] == off["train"]["best_dev_accuracy"], domain
        assert len(use["train"]["history"]) == len(off["train"]["history"]) == 4
        for h, h_off in zip(use["train"]["history"], off["train"]["history"]):
            assert set(h) == set(h_off) and h["step"] == h_off["step"]
            assert h["dev_accuracy"] == h_off["dev_accuracy"], (domain, h["step"])
            for part in set(h) - {"step", "dev_accuracy"}:
                assert numbers(h[part]) == pytest.approx(numbers(h_off[part]), rel=1e-3), (domain, part, h["step"])
