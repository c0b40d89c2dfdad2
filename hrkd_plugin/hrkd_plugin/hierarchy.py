"""The hierarchical compare-aggregate of HRKD (Dong et al., EMNLP 2021).

HRKD weighs each domain's per-layer distillation loss by a score that a graph over the domains gives. With the
hierarchy on, the node feature a layer's graph sees is not that layer's domain prototype alone but an attention-
weighted blend of the domain's prototypes from the embedding output up to that layer, so that lower-layer relations
inform higher-layer ones. For layer m >= 1, with P_k in R^{D x H} the prototypes of layer k (one row per domain):

    alpha      = softmax_rows(P_m W1_m P_m^T)                   (D x D)    compare: how alike the domains are at m
    R          = alpha P_m                                      (D x H)    each domain's reference, mixed by likeness
    H_d        = [P_0[d]; P_1[d]; ...; P_m[d]]                  ((m+1) x H)
    beta_d     = softmax(H_d W2_{m,d} r_d)                      (m+1)      which of the layers 0..m matter for d
    aggregated = beta_d^T H_d                                   (H)        the node feature of domain d at layer m

H_d is built from the original prototypes of layers 0..m, never from the aggregates of earlier layers (as in the
reference code, cheneydon/hrkd, models/gnn.py).
"""

from __future__ import annotations

import torch
from torch import nn

from bench.errors import BenchError

XAVIER_GAIN = 1.414  # the reference's gain (about sqrt(2)) for every graph weight


class CompareAggregate(nn.Module):
    """Per layer m: W1_m (H x H) for the compare step, W2_{m,d} (H x H) per domain for the aggregate step."""

    def __init__(self, hidden_size: int, num_layers: int, num_domains: int):
        super().__init__()
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.num_domains = num_domains
        self.w1 = nn.Parameter(torch.empty(num_layers, hidden_size, hidden_size))
        self.w2 = nn.Parameter(torch.empty(num_layers, num_domains, hidden_size, hidden_size))
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        # Xavier on each layer's slice, W1 first, then W2, like the reference (same draws under the same seed). A
        # layer's W2 slice is (D, H, H), so its Xavier bound uses fan_in = H*H and fan_out = D*H: far smaller entries
        # than a per-domain (H, H) init would give. Kept, since it is what the paper's numbers were run with.
        for m in range(self.num_layers):
            nn.init.xavier_uniform_(self.w1[m], gain=XAVIER_GAIN)
        for m in range(self.num_layers):
            nn.init.xavier_uniform_(self.w2[m], gain=XAVIER_GAIN)

    def aggregate(self, prototypes: torch.Tensor, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        """prototypes (L, D, H) -> (aggregated node features (D, H), layer weights beta (D, layer+1)) for layer >= 1."""
        if not 1 <= layer < self.num_layers:
            raise BenchError(
                f"HRKD compare-aggregate asked for layer {layer}; it has layers 1..{self.num_layers - 1}",
                "layer 0 (the embedding output) has no lower layers to aggregate; use its prototypes as they are",
            )
        current = prototypes[layer]  # P_m (D, H)
        alpha = torch.softmax(current @ self.w1[layer] @ current.T, dim=-1)  # (D, D)
        reference = alpha @ current  # R (D, H)
        stack = prototypes[: layer + 1]  # (m+1, D, H): row d of each layer gives H_d
        # H_d W2_{m,d} r_d for every d at once: first W2_{m,d} r_d (D, H), then its dot with each of H_d's rows.
        keys = torch.einsum("dij,dj->di", self.w2[layer], reference)
        beta = torch.softmax(torch.einsum("kdi,di->dk", stack, keys), dim=-1)  # (D, m+1)
        aggregated = torch.einsum("dk,kdi->di", beta, stack)  # (D, H)
        return aggregated, beta
