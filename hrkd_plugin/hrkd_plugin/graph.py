"""The domain-relational graph of HRKD (Dong et al., EMNLP 2021).

Each training step, every domain is one node of a fully connected graph per student layer; its node feature is the
domain's prototype, the mean of the student's (projected) hidden states over the domain's sub-batch. A graph
attention network (GAT, Velickovic et al., 2018) per layer scores each node, and a softmax over the domains turns the
scores into the weights of the domains' distillation losses at that layer. With the hierarchy on, a layer's node
features first go through the compare-aggregate of `hierarchy.py`.

`domain_prototypes` (here) builds the (L, D, H) prototypes; `DomainRelationalGraph` maps them to the ratios. The
layout and parameter shapes follow the reference code (cheneydon/hrkd, models/gnn.py), and
`DomainRelationalGraph.load_reference_state_dict` reads its parameter names.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from bench.errors import BenchError

from .hierarchy import XAVIER_GAIN, CompareAggregate


class GraphAttentionLayer(nn.Module):
    """One GAT head on a fully connected graph: e_ij = LeakyReLU(a^T [W h_i ; W h_j]), softmax over j, mix W h_j.

    The reference builds an all-ones adjacency and masks e_ij with -9e15 where it is 0; on a full graph that mask
    never applies, so there is no adjacency here.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        dropout: float,
        alpha: float,
        activation: Callable[[torch.Tensor], torch.Tensor] | None = F.elu,
    ):
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.dropout = dropout
        self.alpha = alpha  # LeakyReLU negative slope
        self.activation = activation
        self.W = nn.Parameter(torch.empty(in_features, out_features))
        self.a = nn.Parameter(torch.empty(2 * out_features, 1))
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        nn.init.xavier_uniform_(self.W, gain=XAVIER_GAIN)
        nn.init.xavier_uniform_(self.a, gain=XAVIER_GAIN)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        wh = h @ self.W  # (N, out)
        # a^T [Wh_i ; Wh_j] splits into a source term for row i and a target term for column j.
        source = wh @ self.a[: self.out_features]  # (N, 1)
        target = wh @ self.a[self.out_features :]  # (N, 1)
        e = F.leaky_relu(source + target.T, negative_slope=self.alpha)  # (N, N)
        attention = F.dropout(torch.softmax(e, dim=1), self.dropout, training=self.training)
        out = attention @ wh
        return self.activation(out) if self.activation is not None else out


class DomainGAT(nn.Module):
    """A layer's graph: `heads` GAT heads (H -> H each, concatenated), then one output head (heads*H -> 1)."""

    def __init__(self, hidden_size: int, heads: int, dropout: float, alpha: float):
        super().__init__()
        self.dropout = dropout
        self.heads = nn.ModuleList(GraphAttentionLayer(hidden_size, hidden_size, dropout, alpha) for _ in range(heads))
        self.out = GraphAttentionLayer(heads * hidden_size, 1, dropout, alpha)

    def forward(self, nodes: torch.Tensor) -> torch.Tensor:
        """nodes (N, H) -> one score per node (N,)."""
        x = F.dropout(nodes, self.dropout, training=self.training)
        x = torch.cat([head(x) for head in self.heads], dim=1)
        x = F.dropout(x, self.dropout, training=self.training)
        return self.out(x).squeeze(-1)


# Our parameter names -> the reference's (MetaGraph in models/gnn.py).
_REFERENCE_NAMES = (
    (re.compile(r"^gats\.(\d+)\.heads\.(\d+)\.(W|a)$"), r"all_gnn.\1.attentions.\2.\3"),
    (re.compile(r"^gats\.(\d+)\.out\.(W|a)$"), r"all_gnn.\1.out_att.\2"),
    (re.compile(r"^hierarchy\.w1$"), "w_attn_1"),
    (re.compile(r"^hierarchy\.w2$"), "w_attn_2"),
)


def reference_name(name: str) -> str:
    """The reference's name for one of our parameter names."""
    for pattern, replacement in _REFERENCE_NAMES:
        if pattern.match(name):
            return pattern.sub(replacement, name)
    raise KeyError(name)


class DomainRelationalGraph(nn.Module):
    """Per-layer domain weights from domain prototypes: one DomainGAT per layer, plus the hierarchy if asked.

    forward(prototypes (L, D, H)) -> (ratios, hierarchical_ratios): ratios is L tensors (D,), each a softmax over
    the domains; hierarchical_ratios is, for layers m = 1..L-1, the compare-aggregate's layer weights (D, m+1), or
    an empty list without the hierarchy. Nothing is detached: gradients reach the prototypes, the caller decides.
    In train mode dropout (on the GAT inputs and attentions) makes the ratios stochastic; the reference calls its
    graph in train mode on every training step. GAT attention is "static" (Brody et al., ICLR 2022): every node ranks
    the others alike, so at BERT sizes the attention saturates, all nodes get the same score and the eval-mode
    ratios come out uniform (1/D); in train mode dropout is what moves them.
    """

    def __init__(
        self,
        hidden_size: int,
        num_layers: int,
        num_domains: int,
        hierarchical: bool = True,
        dropout: float = 0.1,
        alpha: float = 0.2,
        heads: int = 8,
    ):
        super().__init__()
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.num_domains = num_domains
        self.hierarchical = hierarchical
        # Built in the reference's order (GATs, then W1, W2), so a seed gives the reference's initial weights.
        self.gats = nn.ModuleList(DomainGAT(hidden_size, heads, dropout, alpha) for _ in range(num_layers))
        self.hierarchy = CompareAggregate(hidden_size, num_layers, num_domains) if hierarchical else None

    def forward(self, prototypes: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        expected = (self.num_layers, self.num_domains, self.hidden_size)
        if not isinstance(prototypes, torch.Tensor) or tuple(prototypes.shape) != expected:
            got = tuple(prototypes.shape) if isinstance(prototypes, torch.Tensor) else type(prototypes).__name__
            raise BenchError(
                f"HRKD domain graph got prototypes {got}; it expects (num_layers, num_domains, hidden) = {expected}",
                "build them with domain_prototypes() from the student's hidden states (embedding output first), "
                "one entry per domain, with the graph sized to match",
            )
        ratios: list[torch.Tensor] = []
        hierarchical_ratios: list[torch.Tensor] = []
        for m, gat in enumerate(self.gats):
            nodes = prototypes[m]
            if self.hierarchy is not None and m > 0:
                # Aggregates the original prototypes of layers 0..m, as the reference does.
                nodes, beta = self.hierarchy.aggregate(prototypes, m)
                hierarchical_ratios.append(beta)
            ratios.append(torch.softmax(gat(nodes), dim=-1))
        return ratios, hierarchical_ratios

    def reference_state_dict(self) -> dict[str, torch.Tensor]:
        """This graph's parameters under the reference's names (detached)."""
        return {reference_name(name): p.detach() for name, p in self.named_parameters()}

    @torch.no_grad()
    def load_reference_state_dict(self, state_dict: Mapping[str, torch.Tensor]) -> None:
        """Load the reference's MetaGraph parameters (names as in models/gnn.py, `module.` prefixes allowed)."""
        given = {re.sub(r"^(module\.)+", "", key): value for key, value in state_dict.items()}
        ours = {reference_name(name): p for name, p in self.named_parameters()}
        missing, unexpected = sorted(ours.keys() - given.keys()), sorted(given.keys() - ours.keys())
        if missing or unexpected:
            raise BenchError(
                f"HRKD reference state dict does not fit this graph: missing {_few(missing)}, "
                f"unexpected {_few(unexpected)}",
                f"build the graph with the reference's sizes and hierarchical flag (here: {self.num_layers} layers, "
                f"{self.num_domains} domains, hidden {self.hidden_size}, {len(self.gats[0].heads)} heads, "
                f"hierarchical={self.hierarchical})",
            )
        wrong = [
            f"{key} {tuple(given[key].shape)} vs {tuple(p.shape)}"
            for key, p in ours.items()
            if tuple(given[key].shape) != tuple(p.shape)
        ]
        if wrong:
            raise BenchError(
                f"HRKD reference state dict has mismatching shapes (given vs expected): {_few(wrong)}",
                "build the graph with the reference's hidden size, number of layers, domains and heads",
            )
        for key, p in ours.items():
            p.copy_(torch.as_tensor(given[key]).to(dtype=p.dtype, device=p.device))


def _few(items: Sequence[str], n: int = 4) -> str:
    if not items:
        return "none"
    return ", ".join(items[:n]) + (f" and {len(items) - n} more" if len(items) > n else "")


def domain_prototypes(
    hidden_states_per_domain: Sequence[Sequence[torch.Tensor]],
    attention_masks: Sequence[torch.Tensor] | None = None,
) -> torch.Tensor:
    """Per domain, L hidden states (batch, seq, H), embedding output first -> prototypes (L, D, H).

    Without masks, a plain mean over every position of the domain's sub-batch, padding included: the reference's
    `mean(2).mean(2)`, for which all its domains were padded to the same length. With `attention_masks` (per domain,
    (batch, seq), 1 for real tokens), the mean is over the real tokens of the sub-batch only, each token counting
    once (a sub-batch with no real token gives zeros). Each domain is averaged on its own, so the domains' sub-batches
    may differ in batch size and sequence length.
    """
    if len(hidden_states_per_domain) == 0:
        raise BenchError("domain_prototypes got no domains", "pass one sequence of hidden states per domain")
    if attention_masks is not None and len(attention_masks) != len(hidden_states_per_domain):
        raise BenchError(
            f"domain_prototypes got {len(attention_masks)} attention masks for {len(hidden_states_per_domain)} domains",
            "pass one (batch, seq) mask per domain, or none for the reference's plain mean",
        )
    num_layers = len(hidden_states_per_domain[0])
    hidden = hidden_states_per_domain[0][0].shape[-1] if num_layers else None
    per_domain = []
    for d, layers in enumerate(hidden_states_per_domain):
        if not layers or len(layers) != num_layers or any(h.dim() != 3 or h.shape[-1] != hidden for h in layers):
            raise BenchError(
                f"domain_prototypes: domain {d} has hidden states {[tuple(h.shape) for h in layers]}; every domain "
                f"needs {num_layers} of shape (batch, seq, {hidden})",
                "pass every domain the same number of (batch, seq, hidden) states, embedding output first",
            )
        states = torch.stack(list(layers))  # (L, batch, seq, H)
        if attention_masks is None:
            per_domain.append(states.mean(dim=(1, 2)))
            continue
        mask = attention_masks[d]
        if tuple(mask.shape) != tuple(states.shape[1:3]):
            raise BenchError(
                f"domain_prototypes: domain {d}'s mask is {tuple(mask.shape)}, its states {tuple(states.shape[1:3])}",
                "pass each domain the (batch, seq) attention mask of its own sub-batch",
            )
        weights = mask.to(states.dtype)
        total = torch.einsum("lbsh,bs->lh", states, weights)
        per_domain.append(total / weights.sum().clamp_min(1.0))
    return torch.stack(per_domain, dim=1)
