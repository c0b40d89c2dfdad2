"""The grid's teachers: each named by everything it depends on (its identity, whose hash is its
key in the store), taken from the store or trained there once (one process at a time; a killed
training resumes with --resume), held while runs need them, and read through the teacher-output
cache where a method allows. Single teachers are one per domain; a mix or multi teacher is one
model trained on all the grid's domains."""

from __future__ import annotations

import gc
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from bench.api import Distiller, TeacherObjective
from bench.data.batching import make_loader
from bench.data.domains import DomainData
from bench.errors import BenchError
from bench.locks import FileLock
from bench.measure import measure_latency, param_counts
from bench.models.classifier import build_classifier
from bench.models.vocab import MappedTeacher
from bench.teachers.outputs import CachedTeacher, TeacherOutputCache, cache_identity, rows_digest
from bench.teachers.store import StoredTeacher, TeacherStore, get_or_train_teacher, teacher_key
from bench.training.agreement import agree_on_failure
from bench.training.checkpoint import Checkpoint, remove_folder
from bench.training.context import GridContext
from bench.training.trainer import Trainer

if TYPE_CHECKING:
    from bench.grid.spec import Grid

log = logging.getLogger(__name__)


def objective_identity(objective: TeacherObjective | None) -> dict[str, Any]:
    """A method's own teacher objective joins the key; plain teachers' keys stay as they were."""
    return {} if objective is None else {"objective": {"name": objective.name, "config": objective.config()}}


def _setting_identity(grid: Grid, objective: TeacherObjective | None) -> dict[str, Any]:
    """What every teacher of the grid depends on, whatever its domains (keys are hashed sorted)."""
    p = grid.preset
    return {"model": {"ref": p.teacher.ref, "init": p.teacher.init, "layers": p.teacher.layers},
            "suite": grid.suite.name, "suite_version": grid.suite.version,
            "train_ratio": grid.train_ratio,  # few-shot teachers see only the few-shot rows
            "max_len": p.max_len, "train": p.teacher_train.to_dict(), "seed": p.teacher_seed,
            **objective_identity(objective)}


def teacher_identity(grid: Grid, domain: str, data: DomainData,
                     objective: TeacherObjective | None = None) -> dict[str, Any]:
    """Everything a single-domain teacher depends on; its hash is the teacher's key in the store."""
    return {**_setting_identity(grid, objective), "domain": domain, "data_fingerprint": data.fingerprint,
            "sizes": data.sizes, "kind": "single"}


def joint_teacher_identity(grid: Grid, kind: str, data: dict[str, DomainData],
                           objective: TeacherObjective | None = None) -> dict[str, Any]:
    """Everything a teacher trained on all the grid's domains at once (mix, multi) depends on."""
    return {**_setting_identity(grid, objective), "domains": list(data),
            "data_fingerprints": {d: dd.fingerprint for d, dd in data.items()},
            "sizes": {d: dd.sizes for d, dd in data.items()}, "kind": kind,
            "heads": len(grid.suite.domains) if kind == "multi" else 1}


class TeacherSupply:
    def __init__(self, ctx: GridContext, trainer: Trainer):
        self.ctx = ctx
        self.trainer = trainer
        self.store = TeacherStore()
        self.loaded: dict[tuple[str, str, str], StoredTeacher] = {}  # (kind, objective, domain) -> teacher
        self._errors: dict[tuple[str, str, str], BaseException] = {}
        self._timing: dict[str, Any] | None = None
        self._output_caches: dict[str, TeacherOutputCache] = {}  # identity -> its cache, opened once
        self.outputs_root: Path | None = None  # where those caches live; None: the user's cache dir
        self._rows_digests: dict[str, str] = {}  # domain -> digest of its tokenised training rows

    def get(self, kind: str, domains: Sequence[str],
            objective: TeacherObjective | None = None) -> dict[str, StoredTeacher]:
        """Each domain's teacher of `kind`: a single-domain teacher is trained per domain, a mix
        or multi one on all the grid's domains at once; with a method's `objective`, by it."""
        tag = json.dumps(objective_identity(objective), sort_keys=True)
        for d in domains:  # a teacher that failed fails every run that needs it, without a retry
            if (failed := self._errors.get((kind, tag, d))) is not None:
                raise BenchError(f"its {kind} teacher on {d} failed earlier in this grid: "
                                 f"{type(failed).__name__}: {str(failed).splitlines()[0] if str(failed) else ''}",
                                 "see the first failure's traceback under the results' .failed/ folder")
        missing = [d for d in domains if (kind, tag, d) not in self.loaded]
        try:
            if kind == "single":
                for d in missing:
                    self.loaded[(kind, tag, d)] = self.single(d, objective)
            elif missing:
                for d, t in self.joint(kind, objective).items():
                    self.loaded[(kind, tag, d)] = t
        except Exception as exc:
            for d in (missing if kind == "single" else self.ctx.grid.domains):
                if (kind, tag, d) not in self.loaded:
                    self._errors[(kind, tag, d)] = exc
            raise
        return {d: self.loaded[(kind, tag, d)] for d in domains}

    def training_elsewhere(self, kind: str, domains: Sequence[str], objective: TeacherObjective | None = None) -> bool:
        """Whether a teacher of `kind` on `domains` that is neither loaded nor stored is being
        trained by another process now (its lock is held): a grid takes other jobs rather than wait."""
        tag = json.dumps(objective_identity(objective), sort_keys=True)
        if all((kind, tag, d) in self.loaded for d in domains):
            return False
        identities = [self.identity(kind, d, objective) for d in (domains if kind == "single" else domains[:1])]
        for identity in map(self.with_input_vocab, identities):
            if self.stored_key(identity)[1]:
                continue
            lock = self._lock(identity)
            if not lock.acquire(blocking=False):
                return True
            lock.release()
        return False

    def identity(self, kind: str, domain: str, objective: TeacherObjective | None = None) -> dict[str, Any]:
        """The identity of the `kind` teacher that `domain`'s runs use: that domain's own (single),
        or the one trained on all the grid's domains (mix, multi)."""
        grid = self.ctx.grid
        if kind == "single":
            return teacher_identity(grid, domain, self.ctx.data(domain), objective)
        return joint_teacher_identity(grid, kind, {d: self.ctx.data(d) for d in grid.domains}, objective)

    def _lock(self, identity: dict[str, Any]) -> FileLock:
        """The lock of one teacher's training: one process trains a given teacher at a time."""
        return FileLock(self.store.root / ".locks" / f"{teacher_key(identity)}.lock")

    def keep_only(self, distiller: Distiller, domains: Sequence[str]) -> None:
        """Drop the loaded teachers that `distiller` on `domains` does not use. Otherwise a grid holds
        every teacher it met (each domain's, the joint ones, the meta-teacher) to its end; the store
        reloads one in seconds."""
        needed = set()
        if distiller.teacher_kind:
            tag = json.dumps(objective_identity(distiller.teacher_objective()), sort_keys=True)
            needed = {(distiller.teacher_kind, tag, d) for d in domains}
        if set(self.loaded) - needed:
            self.loaded = {k: t for k, t in self.loaded.items() if k in needed}
            gc.collect()

    def stored_key(self, identity: dict[str, Any]) -> tuple[str, bool]:
        """The key of the teacher `identity` names and whether the store holds it, found without
        loading a tokenizer: a teacher of another vocabulary is stored under its identity plus the
        student's tokenisation (`with_input_vocab`), so it is found by the rest of its identity."""
        key = teacher_key(identity)
        if (self.store.path(key) / "teacher.json").is_file():
            return key, True
        plain = json.loads(json.dumps(identity))  # as stored: tuples read back as lists
        for stored_key, info in self.store.entries():
            stored = dict(info.get("identity") or {})
            vocab = stored.pop("input_vocab", None)
            if vocab and vocab.get("student") == self.ctx.grid.preset.student.ref and stored == plain:
                return stored_key, True
        return key, False

    def with_input_vocab(self, identity: dict[str, Any]) -> dict[str, Any]:
        """A teacher of another vocabulary is trained on the student's tokenisation, mapped: its key says so."""
        if not self.ctx.vocab_map:
            return identity
        vocab = {"student": self.ctx.grid.preset.student.ref, "specials": self.ctx.vocab_map.specials}
        return identity | {"input_vocab": vocab}

    def _stored(self, identity: dict[str, Any], train) -> dict[str, StoredTeacher]:
        """The teacher `identity` names, from the store or trained by `train(model, checkpoint)`;
        a killed teacher training resumes with --resume from `<store>/.partial/<key>/`."""
        ctx = self.ctx
        identity = self.with_input_vocab(identity)
        folder = self.store.root / ".partial" / teacher_key(identity)
        # One process trains a given teacher at a time: another grid that needs it waits, then reuses it.
        lock = self._lock(identity)
        if ctx.main and not lock.acquire(blocking=False):
            log.info("teacher %s is being trained by another process: waiting for it", teacher_key(identity))
            lock.acquire()
        try:
            if folder.exists() and not ctx.grid.resume and ctx.main:  # under the lock: no one trains it now
                log.info("discarding the checkpoint of an earlier teacher training in %s (--resume continues it)",
                         folder)
                remove_folder(folder)
            ctx.accelerator.wait_for_everyone()  # the others look into the store once the main holds the lock
            stored, raised = None, None
            try:
                stored = get_or_train_teacher(identity, len(ctx.grid.suite.labels),
                                              lambda model: train(model, Checkpoint(folder)), self.store,
                                              save=ctx.main)
            except Exception as exc:  # noqa: BLE001 - the main process alone stores it: the others hear of it
                raised = exc
            agree_on_failure(raised, f"teacher {teacher_key(identity)}", "", ctx.accelerator)
        finally:
            lock.release()
        if ctx.main:
            remove_folder(folder)
        for t in stored.values():
            t.model.to(ctx.accelerator.device).eval()
        return stored

    def loss(self, view, objective: TeacherObjective | None, domains: Sequence[str]):
        """(compute_loss, modules, tensors) of a teacher's training: CE on labels, or the method's
        objective, whose tensors are prepared first from the teacher as it starts."""
        if objective is None:
            def ce(batch):
                if isinstance(batch, dict):  # multi: the plain sum of per-domain CE
                    return {"ce": sum(torch.nn.functional.cross_entropy(view(b).logits, b.labels)
                                      for b in batch.values())}
                return {"ce": torch.nn.functional.cross_entropy(view(batch).logits, batch.labels)}
            return ce, None, {}

        objective.domains = tuple(self.ctx.grid.suite.domains)
        tokenizer, device = self.ctx.student_tokenizer, self.ctx.accelerator.device
        train = {d: make_loader(self.ctx.data(d).tokenized("train", tokenizer), 64, tokenizer.pad_token_id,
                                shuffle=False)
                 for d in domains}
        view.eval()
        with torch.no_grad():
            tensors = objective.prepare(lambda b, needs: view(b.to(device), needs), train)
        modules = objective.modules(view.config)
        if modules is not None:
            modules.to(device)

        def compute_loss(batch):
            if isinstance(batch, dict):
                raise BenchError(f"teacher objective {objective.name!r} trains single or mix teachers",
                                 "give the method teacher_kind 'single' or 'mix'")
            return objective.loss(batch, view(batch, objective.needs), modules, tensors)

        return compute_loss, modules, tensors

    def single(self, domain: str, objective: TeacherObjective | None = None) -> StoredTeacher:
        p = self.ctx.grid.preset
        data = self.ctx.data(domain)

        def train(model, checkpoint):
            view = self.ctx.teacher_view(model)
            loss, modules, tensors = self.loss(view, objective, [domain])
            trained = self.trainer.train_and_test(view, loss, data, self.ctx.student_tokenizer, p.teacher_train,
                                                  p.teacher_seed, f"teacher {domain}", extra_modules=modules,
                                                  checkpoint=checkpoint)
            return {"dev_accuracy": trained.selection.dev_accuracy, "test_accuracy": trained.test_accuracy,
                    "steps": trained.fit.steps, "selected_step": trained.selection.step,
                    "history": trained.fit.history}, None, _extras(modules, tensors)

        return self._stored(self.identity("single", domain, objective), train)[domain]

    def joint(self, kind: str, objective: TeacherObjective | None = None) -> dict[str, StoredTeacher]:
        """A mix teacher (one model on the union) or a multi teacher (shared encoder, a head per
        domain, trained on the plain sum of per-domain CE; each domain's best dev checkpoint)."""
        g, p = self.ctx.grid, self.ctx.grid.preset

        def train(model, checkpoint):
            view = self.ctx.teacher_view(model)
            loss, modules, tensors = self.loss(view, objective, g.domains)
            trained = self.trainer.train_and_test_joint(view, loss, kind, p.teacher_train, p.teacher_seed,
                                                        f"{kind} teacher", extra_modules=modules,
                                                        checkpoint=checkpoint)
            per_domain = {d: {"dev_accuracy": t.selection.dev_accuracy, "test_accuracy": t.test_accuracy,
                              "selected_step": t.selection.step} for d, t in trained.items()}
            fit = next(iter(trained.values())).fit
            info = {"dev_accuracy": _mean(v["dev_accuracy"] for v in per_domain.values()),
                    "test_accuracy": _mean(v["test_accuracy"] for v in per_domain.values()),
                    "steps": fit.steps, "history": fit.history, "domains": per_domain}
            states = None
            if kind == "multi":
                states = {d: _inner_state(view, t.selection.state) for d, t in trained.items()}
            if kind == "multi" and modules is not None:
                raise BenchError("a multi teacher keeps one checkpoint per domain, but its objective's modules "
                                 "have one state", "give the method teacher_kind 'single' or 'mix'")
            return info, states, _extras(modules, tensors)

        return self._stored(self.identity(kind, g.domains[0], objective), train)

    def timing(self, teacher: StoredTeacher | None) -> dict[str, Any]:
        """The preset teacher's latency and parameters, measured once in this process (timing
        depends on the architecture only, so runs without a teacher get it too)."""
        if self._timing is None:
            p = self.ctx.grid.preset
            model = teacher.model if teacher is not None else build_classifier(
                p.teacher, len(self.ctx.grid.suite.labels)).to(self.ctx.accelerator.device)
            self._timing = {"latency": measure_latency(model, p.latency), "params": param_counts(model)}
            log.info("teacher %s: batch-1 latency %.2f ms", p.teacher.ref,
                     self._timing["latency"][f"batch_{p.latency.batch_sizes[0]}"]["median_ms"])
        return self._timing

    def cached_view(self, view, teachers: dict[str, StoredTeacher], domain: str | None) -> CachedTeacher:
        """`view` reading through the teacher-output caches of `domain`'s rows (None: every domain's,
        for a mix student), one cache per (teacher, domain, rows), opened once per process."""
        ctx, grid = self.ctx, self.ctx.grid
        suite_domains = list(grid.suite.domains)
        caches = {}
        for d in [domain] if domain else list(grid.domains):
            rows = ctx.data(d).tokenized("train", ctx.student_tokenizer)
            if d not in self._rows_digests:
                self._rows_digests[d] = rows_digest(rows)
            identity = cache_identity(teachers[d].key, teachers[d].weights_digest(), d, self._rows_digests[d],
                                      grid.teacher_precision, grid.preset.student.ref)
            key = json.dumps(identity, sort_keys=True)
            if key not in self._output_caches:  # refresh: the main process empties it, once per grid
                refresh = grid.teacher_cache == "refresh" and ctx.main
                cache, raised = None, None
                try:
                    cache = TeacherOutputCache(identity, self.outputs_root, refresh, len(rows))
                except Exception as exc:  # noqa: BLE001 - the main process alone empties it: the others hear of it
                    raised = exc
                agree_on_failure(raised, f"the teacher-output cache of {d}", "", ctx.accelerator)
                self._output_caches[key] = cache
            caches[suite_domains.index(d)] = self._output_caches[key]
        return CachedTeacher(view, caches, teachers[domain or grid.domains[0]].model.config.num_hidden_layers)


def _extras(modules, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor] | None:
    """A teacher objective's trained modules and tensors as named tensors for the store."""
    extras = {f"tensors.{k}": v for k, v in tensors.items()}
    if modules is not None:
        extras.update({f"modules.{k}": v for k, v in modules.state_dict().items()})
    return extras or None


def _mean(values) -> float:
    values = list(values)
    return sum(values) / len(values)


def _inner_state(view, state: dict[str, Any]) -> dict[str, Any]:
    """A checkpoint taken through a MappedTeacher, keyed as the bare model's."""
    if not isinstance(view, MappedTeacher):
        return state
    return {k.removeprefix("model."): v for k, v in state.items() if k.startswith("model.")}
