"""Measurements of a model itself: parameter counts (latency and throughput come later)."""

from __future__ import annotations

from torch import nn


def count_params(model: nn.Module | None) -> int:
    return 0 if model is None else sum(p.numel() for p in model.parameters())


def param_counts(classifier: nn.Module) -> dict[str, int]:
    """Total parameters of a classifier, and those outside its embedding layer (word, position
    and token-type embeddings and their LayerNorm), the figure compression papers compare."""
    total = count_params(classifier)
    embeddings = count_params(getattr(classifier.encoder, "embeddings", None))
    return {"total": total, "non_embedding": total - embeddings}
