"""Teacher training and the content-addressed teacher store.

A teacher is fine-tuned once per (model, suite, data fingerprint, domain, kind, training
configuration, seed) and stored under a key hashed from exactly those; every later run that
needs the same teacher loads it instead of training it again.
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

from bench.cache import cache_root
from bench.errors import BenchError
from bench.models import Classifier, build_classifier

log = logging.getLogger(__name__)


@dataclass
class StoredTeacher:
    key: str
    model: Classifier
    info: dict[str, Any]  # what the key covers, plus dev/test accuracy and training figures
    trained_now: bool = False  # False: loaded from the store


def teacher_key(identity: dict[str, Any]) -> str:
    blob = json.dumps(identity, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


class TeacherStore:
    """`<root>/<key>/model.safetensors` and `teacher.json`; written to a temp dir, then renamed,
    so a crash never leaves a half-written teacher behind."""

    def __init__(self, root: Path | None = None):
        self.root = Path(root) if root else cache_root() / "teachers"

    def path(self, key: str) -> Path:
        return self.root / key

    def load(self, key: str, make_model) -> StoredTeacher | None:
        from safetensors.torch import load_model

        folder = self.path(key)
        if not (folder / "teacher.json").is_file():
            return None
        info = json.loads((folder / "teacher.json").read_text())
        model = make_model()
        load_model(model, str(folder / "model.safetensors"))
        model.eval()
        return StoredTeacher(key, model, info)

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

    def save(self, key: str, model: Classifier, info: dict[str, Any]) -> None:
        from safetensors.torch import save_model

        self.root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{key}-", dir=self.root))
        try:
            save_model(model, str(tmp / "model.safetensors"))
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
                         ) -> StoredTeacher:
    """Load the teacher `identity` describes, or train it with `train_fn(model) -> info` and store it."""
    from bench.models import ModelSpec

    key = teacher_key(identity)
    spec = ModelSpec(**identity["model"])

    def make_model() -> Classifier:
        return build_classifier(spec, num_labels)

    stored = store.load(key, make_model)
    if stored is not None:
        log.info("reusing teacher %s (%s, %s)", key, spec.ref, identity["domain"])
        return stored
    log.info("training teacher %s (%s on %s/%s)", key, spec.ref, identity["suite"], identity["domain"])
    from accelerate.utils import set_seed

    set_seed(identity["seed"])  # the new head's init must not depend on what ran before
    model = make_model()
    start = time.perf_counter()
    info = {"identity": identity, **train_fn(model)}
    info["wall_seconds"] = round(time.perf_counter() - start, 2)
    store.save(key, model, info)
    return StoredTeacher(key, model, info, trained_now=True)
