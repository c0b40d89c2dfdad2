"""The HRKD domain graph against a plain numpy reading of the paper's equations, and the reference's layout."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from hrkd_plugin.graph import DomainRelationalGraph, GraphAttentionLayer, domain_prototypes
from hrkd_plugin.hierarchy import CompareAggregate

from bench.errors import BenchError

ALPHA = 0.2  # LeakyReLU slope used throughout



# ---- numpy, float64, written from the equations with explicit loops ----------------------------------------------


def np_softmax(x: np.ndarray) -> np.ndarray:
    z = np.exp(x - x.max(axis=-1, keepdims=True))
    return z / z.sum(axis=-1, keepdims=True)


def np_elu(x: np.ndarray) -> np.ndarray:
    return np.where(x > 0, x, np.expm1(np.minimum(x, 0)))


def np_gat_layer(h: np.ndarray, W: np.ndarray, a: np.ndarray) -> np.ndarray:
    wh = h @ W
    n = wh.shape[0]
    e = np.empty((n, n))
    for i in range(n):
        for j in range(n):
            s = float(a[:, 0] @ np.concatenate([wh[i], wh[j]]))
            e[i, j] = s if s > 0 else ALPHA * s
    return np_elu(np_softmax(e) @ wh)


def np_domain_gat(nodes: np.ndarray, p: dict, layer: int, heads: int) -> np.ndarray:
    cat = np.concatenate([np_gat_layer(nodes, p[f"gats.{layer}.heads.{k}.W"], p[f"gats.{layer}.heads.{k}.a"])
                          for k in range(heads)], axis=1)
    return np_gat_layer(cat, p[f"gats.{layer}.out.W"], p[f"gats.{layer}.out.a"])[:, 0]


def np_compare_aggregate(protos: np.ndarray, w1: np.ndarray, w2: np.ndarray, m: int):
    pm = protos[m]
    alpha = np_softmax(pm @ w1[m] @ pm.T)
    ref = alpha @ pm
    feats, betas = [], []
    for d in range(protos.shape[1]):
        hd = protos[: m + 1, d, :]
        beta = np_softmax(hd @ (w2[m, d] @ ref[d]))
        feats.append(beta @ hd)
        betas.append(beta)
    return np.stack(feats), np.stack(betas)


def np_forward(protos: np.ndarray, p: dict, heads: int, hierarchical: bool):
    ratios, hier = [], []
    for m in range(protos.shape[0]):
        nodes = protos[m]
        if hierarchical and m > 0:
            nodes, beta = np_compare_aggregate(protos, p["hierarchy.w1"], p["hierarchy.w2"], m)
            hier.append(beta)
        ratios.append(np_softmax(np_domain_gat(nodes, p, m, heads)))
    return ratios, hier


def params64(module: torch.nn.Module) -> dict:
    return {name: p.detach().double().numpy() for name, p in module.named_parameters()}


def make_graph(hidden=16, layers=4, domains=4, hierarchical=True, heads=8, seed=0) -> DomainRelationalGraph:
    torch.manual_seed(seed)
    return DomainRelationalGraph(hidden, layers, domains, hierarchical=hierarchical, heads=heads).eval()


def make_prototypes(hidden=16, layers=4, domains=4, seed=1) -> torch.Tensor:
    return torch.randn(layers, domains, hidden, generator=torch.Generator().manual_seed(seed))


# ---- the numerics -------------------------------------------------------------------------------------------------


def test_gat_layer_matches_numpy():
    torch.manual_seed(0)
    layer = GraphAttentionLayer(16, 8, dropout=0.1, alpha=ALPHA).eval()
    h = torch.randn(5, 16)
    expected = np_gat_layer(h.double().numpy(), layer.W.detach().double().numpy(), layer.a.detach().double().numpy())
    np.testing.assert_allclose(layer(h).detach().numpy(), expected, atol=1e-5)


def test_compare_aggregate_matches_numpy():
    torch.manual_seed(0)
    agg = CompareAggregate(16, 4, 5)
    protos = make_prototypes(layers=4, domains=5)
    for m in range(1, 4):
        feats, beta = agg.aggregate(protos, m)
        exp_feats, exp_beta = np_compare_aggregate(
            protos.double().numpy(), agg.w1.detach().double().numpy(), agg.w2.detach().double().numpy(), m
        )
        np.testing.assert_allclose(feats.detach().numpy(), exp_feats, atol=1e-5)
        np.testing.assert_allclose(beta.detach().numpy(), exp_beta, atol=1e-5)
    with pytest.raises(BenchError):
        agg.aggregate(protos, 0)


@pytest.mark.parametrize("heads", [8, 2])
def test_domain_gat_scores_match_numpy(heads):
    # The scores before the softmax over domains: the ratios themselves sit close to 1/D and would hide errors.
    graph = make_graph(domains=5, heads=heads)
    protos = make_prototypes(domains=5) * 3
    p = params64(graph)
    for m, gat in enumerate(graph.gats):
        expected = np_domain_gat(protos[m].double().numpy(), p, m, heads)
        np.testing.assert_allclose(gat(protos[m]).detach().numpy(), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("hierarchical", [True, False])
@pytest.mark.parametrize("heads,domains", [(8, 4), (2, 5)])
def test_forward_matches_numpy(hierarchical, heads, domains):
    graph = make_graph(domains=domains, hierarchical=hierarchical, heads=heads)
    protos = make_prototypes(domains=domains)
    ratios, hier = graph(protos)
    exp_ratios, exp_hier = np_forward(protos.double().numpy(), params64(graph), heads, hierarchical)
    assert len(ratios) == len(exp_ratios) and len(hier) == len(exp_hier)
    for got, exp in zip(ratios + hier, exp_ratios + exp_hier):
        np.testing.assert_allclose(got.detach().numpy(), exp, atol=1e-5)


@pytest.mark.parametrize("hierarchical", [True, False])
def test_ratio_shapes_and_sums(hierarchical):
    layers, domains = 5, 3
    graph = make_graph(layers=layers, domains=domains, hierarchical=hierarchical)
    ratios, hier = graph(make_prototypes(layers=layers, domains=domains))
    assert [tuple(r.shape) for r in ratios] == [(domains,)] * layers
    for r in ratios:
        assert float(r.detach().sum()) == pytest.approx(1.0, abs=1e-6) and bool((r > 0).all())
    if not hierarchical:
        assert hier == []
        return
    assert [tuple(b.shape) for b in hier] == [(domains, m + 1) for m in range(1, layers)]
    for b in hier:
        np.testing.assert_allclose(b.sum(dim=1).detach().numpy(), np.ones(domains), atol=1e-6)


def test_bad_prototype_shape_is_a_two_line_error():
    graph = make_graph()
    with pytest.raises(BenchError) as info:
        graph(make_prototypes(layers=3))
    assert info.value.hint and "(4, 4, 16)" in info.value.what


def test_train_mode_is_stochastic_and_eval_deterministic():
    graph = make_graph()
    protos = make_prototypes()
    first, second = graph(protos)[0], graph(protos)[0]
    assert all(torch.equal(a, b) for a, b in zip(first, second))
    graph.train()
    torch.manual_seed(5)
    first = torch.cat(graph(protos)[0])
    second = torch.cat(graph(protos)[0])
    assert not torch.allclose(first, second)


def test_gradients_reach_the_prototypes():
    graph = make_graph().train()
    protos = make_prototypes().requires_grad_(True)
    ratios, hier = graph(protos)
    weights = torch.arange(4, dtype=torch.float32)
    (sum((r * weights).sum() for r in ratios) + sum(b[:, 0].sum() for b in hier)).backward()
    assert protos.grad is not None and bool(protos.grad.abs().sum() > 0)
    assert graph.hierarchy.w2.grad is not None


# ---- the reference's parameter layout -----------------------------------------------------------------------------


def reference_layout(hidden, layers, domains, heads, hierarchical):
    """(reference name, shape), written out by hand from models/gnn.py, in our order: GATs first, then W1, W2.

    (MetaGraph's own named_parameters list w_attn_1 and w_attn_2 first, as they sit on the module itself; the weights
    are initialised in the order here, though.)
    """
    rows = []
    for m in range(layers):
        for k in range(heads):
            rows += [(f"all_gnn.{m}.attentions.{k}.W", (hidden, hidden))]
            rows += [(f"all_gnn.{m}.attentions.{k}.a", (2 * hidden, 1))]
        rows += [(f"all_gnn.{m}.out_att.W", (heads * hidden, 1)), (f"all_gnn.{m}.out_att.a", (2, 1))]
    if hierarchical:
        rows += [("w_attn_1", (layers, hidden, hidden)), ("w_attn_2", (layers, domains, hidden, hidden))]
    return rows


@pytest.mark.parametrize("hierarchical", [True, False])
def test_parameter_order_and_shapes_match_the_reference(hierarchical):
    graph = make_graph(hidden=8, layers=5, domains=5, hierarchical=hierarchical)
    ours = [(name, tuple(p.shape)) for name, p in graph.named_parameters()]
    layout = reference_layout(8, 5, 5, 8, hierarchical)
    assert [shape for _, shape in ours] == [shape for _, shape in layout]
    assert list(graph.reference_state_dict()) == [name for name, _ in layout]


def state_dict_by_hand(graph: DomainRelationalGraph, heads: int, prefix: str = "") -> dict:
    """Our parameters under the reference's names, mapped here without the module's own name mapping."""
    sd = {}
    for m, gat in enumerate(graph.gats):
        for k in range(heads):
            sd[f"{prefix}all_gnn.{m}.attentions.{k}.W"] = gat.heads[k].W.detach().clone()
            sd[f"{prefix}all_gnn.{m}.attentions.{k}.a"] = gat.heads[k].a.detach().clone()
        sd[f"{prefix}all_gnn.{m}.out_att.W"] = gat.out.W.detach().clone()
        sd[f"{prefix}all_gnn.{m}.out_att.a"] = gat.out.a.detach().clone()
    if graph.hierarchy is not None:
        sd[f"{prefix}w_attn_1"] = graph.hierarchy.w1.detach().clone()
        sd[f"{prefix}w_attn_2"] = graph.hierarchy.w2.detach().clone()
    return sd


@pytest.mark.parametrize("prefix", ["", "module."])
def test_load_reference_state_dict_round_trip(prefix):
    a, b = make_graph(heads=2, seed=0), make_graph(heads=2, seed=1)
    protos = make_prototypes()
    flat_a, flat_b = (torch.cat([x.flatten() for x in sum(g(protos), [])]) for g in (a, b))
    assert not torch.allclose(flat_a, flat_b)
    b.load_reference_state_dict(state_dict_by_hand(a, heads=2, prefix=prefix))
    (ra, ha), (rb, hb) = a(protos), b(protos)
    assert all(torch.equal(x, y) for x, y in zip(ra + ha, rb + hb))


def test_load_reference_state_dict_refuses_what_does_not_fit():
    graph = make_graph(heads=2)
    sd = state_dict_by_hand(graph, heads=2)
    wrong = dict(sd, w_attn_1=torch.zeros(4, 16, 8))
    with pytest.raises(BenchError, match="w_attn_1"):
        graph.load_reference_state_dict(wrong)
    flat = make_graph(heads=2, hierarchical=False)
    with pytest.raises(BenchError, match="unexpected w_attn_1"):
        flat.load_reference_state_dict(sd)
    with pytest.raises(BenchError, match="missing w_attn_1"):
        graph.load_reference_state_dict(state_dict_by_hand(flat, heads=2))


# ---- prototypes ---------------------------------------------------------------------------------------------------


def test_domain_prototypes_plain_and_masked_means():
    gen = torch.Generator().manual_seed(3)
    layers, hidden, shapes = 3, 6, [(2, 5), (3, 7)]  # each domain its own batch size and padded length
    states = [[torch.randn(b, s, hidden, generator=gen) for _ in range(layers)] for b, s in shapes]
    masks = [
        torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]]),
        torch.tensor([[1] * 7, [1, 1, 0, 0, 0, 0, 0], [1] * 4 + [0] * 3]),
    ]

    plain = domain_prototypes(states)
    masked = domain_prototypes(states, attention_masks=masks)
    assert plain.shape == masked.shape == (layers, 2, hidden)
    for d, (layer_states, mask) in enumerate(zip(states, masks)):
        keep = mask.numpy().astype(bool)
        for m, h in enumerate(layer_states):
            x = h.double().numpy()
            np.testing.assert_allclose(plain[m, d].numpy(), x.reshape(-1, hidden).mean(axis=0), atol=1e-6)
            np.testing.assert_allclose(masked[m, d].numpy(), x[keep].mean(axis=0), atol=1e-6)

    with pytest.raises(BenchError):
        domain_prototypes(states, attention_masks=masks[:1])
    with pytest.raises(BenchError):
        domain_prototypes(states, attention_masks=[masks[1], masks[0]])
    with pytest.raises(BenchError):
        domain_prototypes([states[0], states[1][:2]])


# ---- parity with the reference implementation (opt-in) ------------------------------------------------------------


def load_reference_gnn():
    root = os.environ.get("HRKD_REFERENCE_DIR")
    path = Path(root, "models", "gnn.py") if root else None
    if path is None or not path.is_file():
        pytest.skip("set HRKD_REFERENCE_DIR to a checkout of cheneydon/hrkd (it needs models/gnn.py)")
    spec = importlib.util.spec_from_file_location("hrkd_reference_gnn", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("hierarchical", [True, False])
def test_parity_with_the_reference(hierarchical):
    gnn = load_reference_gnn()
    hidden, layers, domains = 16, 4, 5
    torch.manual_seed(11)
    theirs = gnn.MetaGraph(hidden, layers, domains, hierarchical).eval()
    torch.manual_seed(11)  # built in the same order from the same seed: the same initial weights
    ours = DomainRelationalGraph(hidden, layers, domains, hierarchical=hierarchical).eval()
    mine = ours.reference_state_dict()
    assert sorted(mine) == sorted(theirs.state_dict())
    for key, p in theirs.state_dict().items():
        assert torch.equal(p, mine[key]), key
    ours.load_reference_state_dict(make_graph(hidden, layers, domains, hierarchical, seed=3).reference_state_dict())
    ours.load_reference_state_dict(theirs.state_dict())

    worst = 0.0
    for seed in range(3):
        protos = make_prototypes(hidden, layers, domains, seed=seed)
        with torch.no_grad():
            (r1, h1), (r2, h2) = theirs(protos), ours(protos)
            # The raw GAT scores too: the ratios sit near 1/D and would hide a difference.
            everywhere = torch.ones(domains, domains)
            r1 = r1 + [theirs.all_gnn[m](3 * protos[m], everywhere).squeeze(-1) for m in range(layers)]
            r2 = r2 + [ours.gats[m](3 * protos[m]) for m in range(layers)]
        assert len(r1) == len(r2) and len(h1) == len(h2)
        for x, y in zip(r1 + h1, r2 + h2):
            assert x.shape == y.shape
            worst = max(worst, float((x - y).abs().max()))
    print(f"max abs difference to the reference (hierarchical={hierarchical}): {worst:.3g}")
    assert worst <= 1e-5
