"""The types plugins and the host share: suites, batches, model outputs, distillers, metrics.

Importing this module is cheap (no torch, no datasets) so that listing plugins stays fast.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from bench.errors import BenchError, unknown_name

if TYPE_CHECKING:
    import datasets
    import torch
    from torch import nn

SPLITS = ("train", "dev", "test")
OUTPUTS = frozenset({"logits", "hidden", "attentions", "values"})
# single: one model per domain; mix: one model on the union of the domains; multi: a shared
# encoder with one head per domain, trained on MultiDomainBatches, the best dev checkpoint kept
# per domain (HRKD's teacher and student).
TEACHER_KINDS = (None, "single", "mix", "multi")  # None: the method uses no teacher
STUDENT_KINDS = ("single", "mix", "multi")


@dataclass(frozen=True)
class DataConfig:
    """Where a suite reads its files, and how it treats malformed rows."""

    data_dir: str
    skip_bad_rows: bool = False  # False: stop at the first bad row with file:line and the reason


def _nothing_left_out(domain: str, cfg: DataConfig) -> dict[str, int]:
    return {}


@dataclass(frozen=True)
class SuiteSpec:
    """A multi-domain classification suite.

    `load(domain, split, cfg)` returns a `datasets.Dataset` with columns text_a, text_b
    (None for single sentences), label (int), domain (str); splits train, dev, test.
    `download(folder)`, where given, writes the suite's files from the hub (`data prepare`).
    `fingerprint(domain, cfg)` hashes the bytes read for that domain, so that results on
    other data never mix. `audit(domain, cfg)` counts the rows left out (no gold label,
    skipped bad rows), stored with each result. `version` changes whenever what `load`
    returns changes. `source`, where given, is the folder the suite reads whatever the data dir
    (a `files:DIR` suite); its results also keep it and the labels.
    """

    name: str
    description: str
    domains: tuple[str, ...]
    labels: tuple[str, ...]
    load: Callable[[str, str, DataConfig], datasets.Dataset]
    fingerprint: Callable[[str, DataConfig], str]
    audit: Callable[[str, DataConfig], dict[str, int]] = _nothing_left_out
    version: str = "1"
    folder: str = ""  # its folder in the data dir; default: the suite's name
    download: Callable[[Path], None] | None = None  # fill a folder from the hub, when it can
    source: str = ""  # the folder it reads instead of the data dir (files:DIR); empty: the data dir

    def __post_init__(self):
        if not self.folder:
            object.__setattr__(self, "folder", self.name)

    def check_domains(self, domains: Sequence[str]) -> None:
        for d in domains:
            if d not in self.domains:
                raise unknown_name(f"domain of suite {self.name!r}:", d, self.domains,
                                   hint=f"pass --domains as a comma-separated subset of {', '.join(self.domains)}, "
                                        "or leave it out for all")


@dataclass
class Batch:
    """One batch, padded to its longest row (never to the max length).

    `row_ids`: each row's index in its domain's split, for what a method keeps per training
    example (Meta-KD's prototype scores); the harness's loaders always fill it.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    token_type_ids: torch.Tensor
    labels: torch.Tensor
    domain_ids: torch.Tensor
    row_ids: torch.Tensor | None = None

    def to(self, device: Any) -> Batch:
        return Batch(**{f.name: None if (value := getattr(self, f.name)) is None else value.to(device)
                        for f in dataclasses.fields(self)})

    def __len__(self) -> int:
        return self.input_ids.shape[0]


# One sub-batch per domain, for methods that learn across domains in one step (student kind
# "multi"); its keys follow the run's domains in order.
MultiDomainBatch = dict[str, Batch]


class LazyLayers(Sequence):
    """A per-layer output computed (or read) layer by layer on first use: a loss that reads two
    layers of six pays for two."""

    def __init__(self, count: int, read: Callable[[int], torch.Tensor]):
        self._count, self._read, self._got = count, read, {}

    def __len__(self) -> int:
        return self._count

    def __getitem__(self, i):
        if isinstance(i, slice):
            return tuple(self[j] for j in range(self._count)[i])
        j = i + self._count if i < 0 else i
        if not 0 <= j < self._count:
            raise IndexError(i)
        if j not in self._got:
            self._got[j] = self._read(j)
        return self._got[j]


@dataclass
class ModelOutputs:
    """What a forward pass returns; each field is filled only when a distiller asked for it.

    hidden_states: embedding output then each layer, (batch, seq, hidden) each.
    attention_scores: per layer, pre-softmax (batch, heads, seq, seq) with the additive mask applied.
    attention_probs: per layer, after softmax. values: per layer, (batch, heads, seq, head_dim).
    Any per-layer field may be a LazyLayers, computed on first use (a frozen teacher's
    probabilities, outputs read from the teacher-output cache).
    """

    logits: torch.Tensor
    hidden_states: Sequence[torch.Tensor] | None = None
    attention_scores: Sequence[torch.Tensor] | None = None
    attention_probs: Sequence[torch.Tensor] | None = None
    values: Sequence[torch.Tensor] | None = None


class TeacherObjective:
    """How a method trains its own teacher when cross-entropy on labels is not it (Meta-KD's
    meta-teacher).

    The harness trains the method's `teacher_kind` of teacher with `loss` in place of CE, stores it
    under a key that includes `name` and `config()` (so it never stands in for a plain teacher),
    and keeps with it the `modules` trained alongside and the tensors `prepare` computed; the
    distiller gets both back through `Distiller.bind_teacher`.
    """

    name: ClassVar[str]
    needs: ClassVar[frozenset[str]] = frozenset({"logits"})  # outputs `loss` reads, as Distiller.needs
    domains: tuple[str, ...] = ()  # the suite's domains: a batch's domain id i is domains[i]

    def config(self) -> dict[str, Any]:
        """What, beyond the harness's teacher settings, changes the teacher (enters its key)."""
        return {}

    def prepare(self, teacher: Callable[[Batch, frozenset[str]], ModelOutputs],
                train: Mapping[str, Iterable[Batch]]) -> dict[str, torch.Tensor]:
        """Before training, with the teacher as it starts (its pretrained encoder): tensors to keep
        with the teacher, from each domain's training batches in order (`row_ids` index them)."""
        return {}

    def modules(self, teacher_config: Any) -> nn.Module | None:
        """Modules trained with the teacher and stored with it (never part of its classifier)."""
        return None

    def loss(self, batch: Batch, out: ModelOutputs, modules: nn.Module | None,
             tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Named loss parts of one teacher step; the total is their sum."""
        raise NotImplementedError


@dataclass
class TeacherExtras:
    """What a TeacherObjective left with a stored teacher: its trained modules and its tensors, and
    the suite's domains (a batch's domain id i is domains[i])."""

    modules: nn.Module | None = None
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    domains: tuple[str, ...] = ()


class Distiller:
    """Base class of every method. The harness owns the loop; a distiller only says what it
    needs from the models, which extra modules it trains, and how its loss is computed.

    Subclasses set `name` and `description`, and may declare `Options`, a dataclass whose
    fields are the method's options with their defaults; `self.options` holds the values.
    The harness trains one stage after another in the order of the instance's `stages`, so a
    method whose stages depend on its options sets `self.stages` in `__init__` (so may
    `teacher_kind` and `student_kind`, see TEACHER_KINDS and STUDENT_KINDS).

    Students of kind "single" and "mix" get `loss` on one Batch; students of kind "multi" get
    `multi_domain_loss` on a MultiDomainBatch, every domain's outputs at once, each domain's
    rows seen by that domain's teacher.
    """

    name: ClassVar[str]
    description: ClassVar[str] = ""
    needs: ClassVar[frozenset[str]] = frozenset({"logits"})
    teacher_kind: ClassVar[str | None] = "single"  # one of TEACHER_KINDS
    student_kind: ClassVar[str] = "single"  # one of STUDENT_KINDS
    stages: ClassVar[tuple[str, ...]] = ("main",)
    # The run's domains, set by the harness before `extra_modules` (a graph over domains needs
    # their number); a multi student's head i and a batch's domain id i are domains[i].
    domains: tuple[str, ...] = ()
    # The teacher layer (1-based) each student layer 1..M starts as a copy of, when the student is cut
    # from its teacher's model; None otherwise. Set by the harness before `extra_modules`: a method's
    # default layer map is this one (bench.losses.default_layer_map), so that every mapped layer starts
    # at its target, as a general-distilled student does in the papers.
    student_copies: tuple[int, ...] | None = None
    # Whether the loss reads the teacher's outputs at padded positions. False lets the harness serve
    # them from its teacher-output cache (bench.teachers.outputs), which keeps real tokens only and
    # fills padding with zeros (scores: the additive mask). Methods that read logits only never do.
    reads_teacher_padding: bool = True

    @dataclass
    class Options:
        pass

    def __init__(self, options: Mapping[str, Any] | None = None):
        self.options = self.make_options(options or {})

    @classmethod
    def make_options(cls, values: Mapping[str, Any]) -> Any:
        """The method's Options from user values: unknown names and values of the wrong type
        (judged by the default's type; an int is a fine float) are refused here, not mid-run."""
        fields = {f.name: f for f in dataclasses.fields(cls.Options)}
        checked = {}
        for key, value in values.items():
            if key not in fields:
                raise unknown_name(f"option of {cls.name}:", key, fields,
                                   hint=f"write --option {cls.name}.KEY=VALUE, KEY one of {', '.join(fields)}")
            default = fields[key].default
            want = type(default) if default is not dataclasses.MISSING and default is not None else None
            if want is float and isinstance(value, int) and not isinstance(value, bool):
                value = float(value)
            if want is not None and not isinstance(value, want):
                raise BenchError(f"{cls.name} option {key} must be a {want.__name__}, got {value!r}",
                                 f"give e.g. {cls.name}.{key}={default!r}")
            checked[key] = value
        return cls.Options(**checked)

    def teacher_objective(self) -> TeacherObjective | None:
        """The method's own teacher training; None (the default): cross-entropy on labels."""
        return None

    def bind_teacher(self, extras: TeacherExtras) -> None:
        """Called before training with what the teacher objective stored with the run's teacher."""

    def selects_on_dev(self, stage: str) -> bool:
        """Whether `stage` keeps its best dev checkpoint (the default) or its last weights: a stage
        that never trains the classifier (an intermediate-layer stage) has no meaningful dev
        accuracy to select on."""
        return True

    def extra_modules(self, teacher_config: Any, student_config: Any) -> nn.Module | None:
        """Training-only modules (projections, graphs): trained with the student, never counted
        in its parameters and never shipped with it."""
        return None

    def mapped_layers(self) -> dict[int, int] | None:
        """Each student layer the method distils into, with the teacher layer it learns from
        (1-based; the embeddings, 0 to 0, are left implicit), once `extra_modules` has seen both
        models; recorded with every result. By default read from `self.teacher_layers`, the teacher
        layer of student layers 1..k; None: the method maps no layers."""
        layers = getattr(self, "teacher_layers", None)
        return None if layers is None else dict(enumerate(layers, start=1))

    def loss(
        self,
        batch: Batch,
        student_out: ModelOutputs,
        teacher_out: ModelOutputs | None,
        stage: str,
    ) -> dict[str, torch.Tensor]:
        """Named loss parts; the total is their sum and every part is logged."""
        raise NotImplementedError

    def multi_domain_loss(
        self,
        batch: MultiDomainBatch,
        student_out: Mapping[str, ModelOutputs],
        teacher_out: Mapping[str, ModelOutputs] | None,
        stage: str,
    ) -> dict[str, torch.Tensor]:
        """The loss of a "multi" student's step. By default the plain sum over domains of each
        domain's `loss`, part by part; methods that weigh domains against each other override it."""
        total: dict[str, torch.Tensor] = {}
        for domain, sub_batch in batch.items():
            parts = self.loss(sub_batch, student_out[domain], teacher_out[domain] if teacher_out else None, stage)
            for name, value in parts.items():
                total[name] = total[name] + value if name in total else value
        return total

    def trace(self) -> dict[str, Any] | None:
        """What the method wants kept of its training, asked at every dev evaluation and stored
        in the result's history with that step (HRKD: its domain ratios). None: nothing."""
        return None


@dataclass
class EvalContext:
    """What a metric sees after a run: the student, its test predictions, the suite, and the
    teacher's figures measured in the same process (for speed-up and compression)."""

    suite: SuiteSpec
    domain: str
    predictions: Sequence[int]
    labels: Sequence[int]
    student: Any  # bench.models.classifier.Classifier
    extra_modules: Any = None
    latency: Any = None  # bench.measure.LatencyConfig of the preset
    teacher_latency: dict[str, Any] | None = None  # the preset teacher's, measured in this process
    teacher_params: dict[str, int] | None = None
    # Measurements that depend on the student's architecture only (latency), shared by metrics and by
    # every run of the same student in one process: cache there only what weights cannot change.
    cache: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class MetricSpec:
    """A metric computed once per run. `compute(ctx)` returns a number or a dict of numbers."""

    name: str
    description: str
    compute: Callable[[EvalContext], float | dict[str, float]]
    default: bool = True  # computed unless the user picks metrics
    # Measures the machine's speed on the student's architecture, not its weights: `bench retime`
    # computes it again, from `ctx.cache["latency"]` and `ctx.teacher_latency` of one sitting.
    timed: bool = False


@dataclass(frozen=True)
class ModelSource:
    """A scheme of model references (`pkg:`, `hf:` ...). `resolve(name)` returns a local
    directory in transformers layout, or raises BenchError saying what to install."""

    scheme: str
    description: str
    resolve: Callable[[str], str]
    names: tuple[str, ...] = field(default_factory=tuple)

