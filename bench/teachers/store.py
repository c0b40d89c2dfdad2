"""Teacher training and the content-addressed teacher store.

A teacher is fine-tuned once per (model, suite, data fingerprints, domains, kind, training
configuration, seed) and stored under a key hashed from exactly those; every later run that
needs the same teacher loads it instead of training it again. A `single` or `mix` teacher is one
model (`model.safetensors`); a `multi` teacher is one checkpoint per domain, the one with that
domain's best dev accuracy (`model.<domain>.safetensors`), as HRKD's teachers are. A teacher
trained by a method's own objective (Meta-KD) keeps that objective's modules and tensors beside
it (`extras.safetensors`).

The key names a configuration, not weights: a teacher trained again under it (after `teacher rm`,
on other hardware) may differ in its last digits. `teacher.json` records a digest of each stored
model's weights (`weights_digests`), computed once when the teacher is trained, so what depends
on the weights themselves (the teacher-output cache) can tell two such teachers apart.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from bench.cache import cache_root
from bench.errors import BenchError
from bench.models.classifier import Classifier, build_classifier

log = logging.getLogger(__name__)


@dataclass
class StoredTeacher:
    key: str
    model: Classifier
    info: dict[str, Any]  # what the key covers, plus dev/test accuracy and training figures
    trained_now: bool = False  # False: loaded from the store
    extras: dict[str, Any] | None = None  # a teacher objective's modules ("modules.*") and tensors ("tensors.*")
    digest: str | None = None  # of `model`'s weights, as recorded; None: computed when first asked for

    def weights_digest(self) -> str:
        """`digest_weights(model)`: recorded in the store, or (a teacher stored before digests were
        kept, or built outside the store) computed once here."""
        if self.digest is None:
            self.digest = digest_weights(self.model)
        return self.digest


def teacher_key(identity: dict[str, Any]) -> str:
    blob = json.dumps(identity, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def digest_weights(model: torch.nn.Module) -> str:
    """SHA-256 of every tensor of `model`'s state (names, dtypes, shapes, bytes): equal for the same
    weights wherever they were loaded from, other for a weight that differs in its last bit. 0.06 s
    for all-MiniLM-L6-v2's 91 MB on our 2-core machine (sha256 on the CPU's SHA extensions)."""
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        tensor = tensor.detach().to("cpu").contiguous()
        h.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)};".encode())
        h.update(tensor.reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()


class TeacherStore:
    """`<root>/<key>/model.safetensors` and `teacher.json`; written to a temp dir, then renamed,
    so a crash never leaves a half-written teacher behind."""

    def __init__(self, root: Path | None = None):
        self.root = Path(root) if root else cache_root() / "teachers"

    def path(self, key: str) -> Path:
        return self.root / key

    def load(self, key: str, make_model) -> tuple[dict[str, Classifier], dict[str, Any], dict[str, Any] | None] | None:
        """The stored models by name ("model", or each domain of a multi teacher), the info and the
        objective's extras (None without)."""
        from safetensors.torch import load_file, load_model

        folder = self.path(key)
        if not (folder / "teacher.json").is_file():
            return None
        info = json.loads((folder / "teacher.json").read_text())
        models = {}
        for file in sorted(folder.glob("model*.safetensors")):
            model = make_model()
            load_model(model, str(file))
            models[file.name.removesuffix(".safetensors").removeprefix("model").lstrip(".") or "model"] = model.eval()
        extras = load_file(str(folder / "extras.safetensors")) if (folder / "extras.safetensors").is_file() else None
        return models, info, extras

    def entries(self) -> list[tuple[str, dict[str, Any]]]:
        """(key, info) of every stored teacher, sorted by key."""
        if not self.root.is_dir():
            return []
        return [(f.parent.name, json.loads(f.read_text())) for f in sorted(self.root.glob("*/teacher.json"))]

    def remove(self, prefix: str) -> str:
        """Delete the one teacher whose key starts with `prefix`; returns its key."""
        matches = [key for key, _ in self.entries() if key.startswith(prefix)]
        if len(matches) != 1:
            found = "no stored teacher" if not matches else f"{len(matches)} stored teachers"
            raise BenchError(f"{found} with a key starting {prefix!r} in {self.root}",
                             "see `python -m bench teacher ls` for the keys")
        shutil.rmtree(self.path(matches[0]))
        return matches[0]

    def save(self, key: str, model: Classifier, info: dict[str, Any],
             states: dict[str, dict[str, Any]] | None = None, extras: dict[str, Any] | None = None) -> None:
        """`model`, or with `states` one checkpoint per domain (`model` gives their layout), and a
        teacher objective's `extras` (named tensors)."""
        from safetensors.torch import save_file, save_model

        self.root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{key}-", dir=self.root))
        try:
            if states is None:
                save_model(model, str(tmp / "model.safetensors"))
            for domain, state in (states or {}).items():
                model.load_state_dict(state)
                save_model(model, str(tmp / f"model.{domain}.safetensors"))
            if extras:
                tensors = {k: v.detach().contiguous().cpu() for k, v in extras.items()}
                save_file(tensors, str(tmp / "extras.safetensors"))
            (tmp / "teacher.json").write_text(json.dumps(info, indent=2, sort_keys=True))
            target = self.path(key)
            if target.exists():  # another process stored it meanwhile: theirs is as good
                shutil.rmtree(tmp)
            else:
                os.replace(tmp, target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise


def get_or_train_teacher(identity: dict[str, Any], num_labels: int, train_fn, store: TeacherStore,
                         save: bool = True) -> dict[str, StoredTeacher]:
    """The teacher `identity` describes, per domain it serves: loaded from the store, or trained
    with `train_fn(model) -> (info, states, extras)` and stored. `states` is None when `model` ends
    with the selected weights, or a multi teacher's checkpoint per domain; `extras` are a teacher
    objective's named tensors, or None. A domain's StoredTeacher
    carries that domain's figures (info["domains"][domain]) at the top of its info. `save=False`:
    train without storing (the processes of a multi-process job other than the main one)."""
    from bench.models.classifier import ModelSpec

    key = teacher_key(identity)
    spec = ModelSpec(**identity["model"])
    domains = identity.get("domains") or [identity["domain"]]

    def make_model() -> Classifier:
        return build_classifier(spec, num_labels, identity.get("heads", 1))

    def per_domain(models: dict[str, Classifier], info: dict[str, Any], extras, trained_now: bool):
        digests = info.get("weights_digests", {})  # none in a store written before they were kept
        return {d: StoredTeacher(key, models.get(d, models.get("model")),
                                 {**info, **info.get("domains", {}).get(d, {})}, trained_now, extras,
                                 digests.get(d, digests.get("model"))) for d in domains}

    loaded = store.load(key, make_model)
    if loaded is not None:
        log.info("reusing teacher %s (%s %s, %s)", key, identity["kind"], spec.ref, ",".join(domains))
        return per_domain(*loaded, trained_now=False)
    log.info("training teacher %s (%s %s on %s/%s)", key, identity["kind"], spec.ref, identity["suite"],
             ",".join(domains))
    from accelerate.utils import set_seed

    set_seed(identity["seed"])  # the new head's init must not depend on what ran before
    model = make_model()
    start = time.perf_counter()
    info, states, extras = train_fn(model)
    info = {"identity": identity, **info, "wall_seconds": round(time.perf_counter() - start, 2)}
    models = ({"model": model} if states is None
              else {d: _with_state(make_model(), state) for d, state in states.items()})
    info["weights_digests"] = {name: digest_weights(m) for name, m in models.items()}
    if save:
        store.save(key, model, info, states, extras)
    return per_domain(models, info, extras, trained_now=True)


def _with_state(model: Classifier, state: dict[str, Any]) -> Classifier:
    model.load_state_dict(state)
    return model.eval()
