"""The teacher-output cache: each training row's teacher outputs, computed once, then reused by every
later epoch, seed and method that reads them from the same teacher on the same rows.

One folder per (teacher: its store key and a digest of its weights; domain, tokenised training rows,
teacher precision, library versions, format) under `<cache root>/teacher-outputs/<key>/`; the key
hashes all of them, so a retrained teacher (even one stored under the same key: the store key names
its configuration only), other rows or other code never find an old folder (`python -m bench cache
ls|clear`). A folder holds `cache.json` (what it is) and chunk files: each holds the outputs one
batch needed for the first time, written to a temporary name and renamed, so a killed run leaves
no half chunk.

Rows are kept without padding: real tokens only (an attention map: its real query-key block). A
batch read back is padded again with zeros (scores: the additive mask's value), so the harness uses
the cache only for methods whose loss never reads padded positions (`Distiller.reads_teacher_padding`).
When a batch's rows lack an output the teacher runs on that batch, exactly as without a cache, and
the outputs the loss read are kept: a cached run computes what an uncached one does.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from bench.api import Batch, LazyLayers, ModelOutputs
from bench.cache import cache_root
from bench.errors import BenchError

log = logging.getLogger(__name__)

FORMAT = 1
MODES = ("off", "use", "refresh")
LAYERED = ("hidden_states", "attention_scores", "attention_probs", "values")
# Which dims of each output (batch dim dropped) run over tokens, and what padding holds when read back.
TOKEN_DIMS = {"logits": (), "hidden_states": (0,), "attention_scores": (1, 2), "attention_probs": (1, 2),
              "values": (1,)}


def outputs_root() -> Path:
    return cache_root() / "teacher-outputs"


def rows_digest(rows) -> str:
    """The tokenised rows a teacher sees (ids and token types, in order): what makes row i row i."""
    h = hashlib.sha256()
    for ids, types in zip(rows["input_ids"], rows["token_type_ids"]):
        h.update(len(ids).to_bytes(4, "little"))
        h.update(torch.tensor(ids, dtype=torch.int32).numpy().tobytes())
        h.update(torch.tensor(types, dtype=torch.int8).numpy().tobytes())
    return h.hexdigest()


def cache_identity(teacher_key: str, weights: str, domain: str, rows: str, precision: str,
                   tokenizer: str) -> dict[str, Any]:
    """What a cache's outputs depend on. `weights` digests the teacher's weights (`StoredTeacher.weights_digest`):
    its store key names how it was trained, not what came of it. `rows` digests the rows' ids in the student's
    `tokenizer`, which the teacher's own ids are mapped from when the two vocabularies differ."""
    import transformers

    return {"format": FORMAT, "teacher": teacher_key, "weights": weights, "domain": domain, "rows": rows,
            "tokenizer": tokenizer, "precision": precision, "torch": torch.__version__,
            "transformers": transformers.__version__}


def identity_key(identity: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:20]


# safetensors dtype names -> torch dtype and bytes per element (what save_file writes for them)
_DTYPES = {"F32": (torch.float32, 4), "F16": (torch.float16, 2), "BF16": (torch.bfloat16, 2), "I64": (torch.int64, 8)}


def _read_header(path: Path) -> tuple[dict[str, Any], dict[str, str], int]:
    """A safetensors file's tensor table, its metadata and where its data starts."""
    with open(path, "rb") as f:
        size = int.from_bytes(f.read(8), "little")
        if not 0 < size < 2**24:
            raise ValueError(f"header of {size} bytes")
        header = json.loads(f.read(size))
    return header, header.pop("__metadata__", {}), 8 + size


def _read(path: Path, data_start: int, info: dict[str, Any]) -> torch.Tensor:
    begin, end = info["data_offsets"]
    with open(path, "rb") as f:
        data = os.pread(f.fileno(), end - begin, data_start + begin)
    if len(data) != end - begin:
        raise ValueError("the file ends early")
    return torch.frombuffer(bytearray(data), dtype=_DTYPES[info["dtype"]][0]).reshape(info["shape"])


def _pad_value(field: str, dtype: torch.dtype) -> float:
    return torch.finfo(dtype).min if field == "attention_scores" else 0.0


def _real(token_dims: Sequence[int], ndim: int, n: int) -> tuple[slice, ...]:
    """The index of a row's real part: its first n positions along the token dims."""
    return tuple(slice(0, n) if d in token_dims else slice(None) for d in range(ndim))


class TeacherOutputCache:
    """One folder: row ids -> each output they were needed for, in chunk files."""

    def __init__(self, identity: dict[str, Any], root: Path | None = None, refresh: bool = False,
                 rows_total: int | None = None):
        """`rows_total`: the rows the folder may come to hold; with it, writing stops (with a warning)
        once the projected size of the finished cache would not fit in the disk's free space."""
        self.identity, self.rows_total = identity, rows_total
        self.full = False  # out of room: what is stored is still read, nothing more is written
        self._bytes = 0  # of the chunks on disk
        self._rows: set[int] = set()  # rows some chunk holds
        self.key = identity_key(identity)
        self.folder = (root or outputs_root()) / self.key
        if refresh and self.folder.exists():
            log.info("teacher outputs %s: refreshing (removing %s)", self.key, self.folder)
            shutil.rmtree(self.folder)
        self._check_identity()
        # slot -> row -> (chunk, byte offset, bytes, shape, dtype) of its first stored copy
        self._index: dict[str, dict[int, tuple[Path, int, int, tuple[int, ...], torch.dtype]]] = {}
        self._pending: dict[str, tuple[list[int], list[int], list[torch.Tensor]]] = {}  # slot -> rows, lengths, values
        self._written = 0
        for path in sorted(self.folder.glob("*.safetensors")):
            self._add_chunk(path)

    def _check_identity(self) -> None:
        meta = self.folder / "cache.json"
        if meta.is_file():
            try:
                if json.loads(meta.read_text()) == self.identity:
                    return
            except (OSError, json.JSONDecodeError):
                pass
            log.warning("teacher outputs %s: %s does not describe this cache; rebuilding it", self.key, meta)
            shutil.rmtree(self.folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        tmp = meta.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(json.dumps(self.identity, indent=1, sort_keys=True))
        os.replace(tmp, meta)

    def _add_chunk(self, path: Path) -> None:
        try:
            tensors, metadata, data_start = _read_header(path)
            if path.stat().st_size != data_start + max(t["data_offsets"][1] for t in tensors.values()):
                raise ValueError("its size is not what its header says (a cut or overwritten file)")
            shapes = json.loads(metadata["shapes"])
            rows, lengths = (_read(path, data_start, tensors[name]).tolist() for name in ("rows", "lengths"))
            for slot, template in shapes.items():
                field = slot.split(".")[0]
                info = tensors[slot]
                dtype, itemsize = _DTYPES[info["dtype"]]
                offset, index = data_start + info["data_offsets"][0], self._index.setdefault(slot, {})
                for row, n in zip(rows, lengths):
                    shape = tuple(n if d in TOKEN_DIMS[field] else size for d, size in enumerate(template))
                    nbytes = int(torch.Size(shape).numel()) * itemsize
                    index.setdefault(row, (path, offset, nbytes, shape, dtype))
                    offset += nbytes
                if offset != data_start + info["data_offsets"][1]:
                    raise ValueError(f"{slot} holds {info['data_offsets'][1] - info['data_offsets'][0]} bytes, "
                                     f"its rows {offset - data_start - info['data_offsets'][0]}")
            self._bytes += path.stat().st_size
            self._rows.update(rows)
        except (OSError, KeyError, ValueError, RuntimeError, json.JSONDecodeError) as exc:
            log.warning("teacher outputs %s: dropping unreadable chunk %s (%s)", self.key, path.name, exc)
            path.unlink(missing_ok=True)

    def get(self, slot: str, rows: Sequence[int]) -> list[torch.Tensor] | None:
        """Each row's stored output, or None when any row lacks it. Read with plain reads, not
        memory maps, so a large cache never counts as the process's memory."""
        index = self._index.get(slot)
        if index is None or any(r not in index for r in rows):
            return None
        by_chunk: dict[Path, list[int]] = {}  # a batch's rows mostly sit in a few chunks: one open each
        for i, r in enumerate(rows):
            by_chunk.setdefault(index[r][0], []).append(i)
        out: list[torch.Tensor] = [None] * len(rows)  # type: ignore[list-item]
        for path, positions in by_chunk.items():
            with open(path, "rb") as f:
                for i in positions:
                    _, offset, nbytes, shape, dtype = index[rows[i]]
                    value = torch.empty(shape, dtype=dtype)
                    if os.preadv(f.fileno(), [value.view(-1).view(torch.uint8).numpy()], offset) != nbytes:
                        raise BenchError(
                            f"teacher outputs {self.key}: {path.name} ends early (it changed since it was read)",
                            f"remove the cache (python -m bench cache clear {self.key}) and run again")
                    out[i] = value
        return out

    def put(self, slot: str, rows: Sequence[int], lengths: Sequence[int], values: Sequence[torch.Tensor]) -> None:
        """Keep these rows' outputs (their real parts: `lengths` tokens each) for the next `flush`."""
        self._pending[slot] = (list(rows), list(lengths), [v.detach().to("cpu").contiguous() for v in values])

    def flush(self) -> None:
        """Write what `put` gathered as one chunk: all its slots cover the same rows (one batch's)."""
        if not self._pending or self.full:
            self._pending = {}
            return
        from safetensors.torch import save_file

        rows, lengths, _ = next(iter(self._pending.values()))
        tensors = {"rows": torch.tensor(rows, dtype=torch.int64), "lengths": torch.tensor(lengths, dtype=torch.int64)}
        shapes = {}
        for slot, (slot_rows, _, values) in self._pending.items():
            if slot_rows != rows:
                raise RuntimeError(f"teacher outputs: a chunk's slots cover other rows ({slot})")
            shapes[slot] = list(values[0].shape)
            tensors[slot] = torch.cat([v.reshape(-1) for v in values])
        self._pending = {}
        self.folder.mkdir(parents=True, exist_ok=True)  # `bench cache clear` may have removed it meanwhile
        self._written += 1
        path = self.folder / f"{time.time_ns()}-{os.getpid()}-{self._written}.safetensors"
        tmp = path.with_suffix(".tmp")
        save_file(tensors, str(tmp), metadata={"shapes": json.dumps(shapes)})
        os.replace(tmp, path)
        self._add_chunk(path)
        self._check_room()

    def _check_room(self) -> None:
        """Stop writing when the rest of the cache, projected from the bytes per row so far, would
        take more than 90% of the disk's free space (a full disk would fail the run, or others)."""
        if not self.rows_total or not self._rows:
            return
        rest = self._bytes / len(self._rows) * max(self.rows_total - len(self._rows), 0)
        free = shutil.disk_usage(self.folder).free
        if rest > 0.9 * free:
            self.full = True
            log.warning("teacher outputs %s: the rest of this cache would take about %.1f GB, and %s has %.1f GB "
                        "free; no more is written (the teacher runs for the rows not cached). Free space, or "
                        "run with --teacher-cache off", self.key, rest / 1e9, self.folder.parent, free / 1e9)


class CachedTeacher:
    """A teacher view whose outputs come from the caches of the batch's domains (by domain id),
    computed by `teacher` on the batch where any row lacks one.

    Outputs a loss read once are fetched with every later batch (so a profile times them as the
    teacher's); others are read when the loss asks for them.
    """

    def __init__(self, teacher: Callable[[Batch, frozenset[str]], ModelOutputs],
                 caches: dict[int, TeacherOutputCache], num_layers: int):
        self.teacher, self.caches, self.num_layers = teacher, caches, num_layers
        self.read_slots: set[tuple[str, int | None]] = set()
        self.hits = self.misses = 0

    def __call__(self, batch: Batch, needs: frozenset[str]) -> ModelOutputs:
        live: list[ModelOutputs] = []
        lengths = batch.attention_mask.sum(-1).tolist()
        groups: dict[int, list[int]] = {}  # domain id -> positions in the batch
        for i, d in enumerate(batch.domain_ids.tolist()):
            groups.setdefault(d, []).append(i)
        row_ids = batch.row_ids.tolist()

        def forward() -> ModelOutputs:
            if not live:
                with torch.no_grad():
                    live.append(self.teacher(batch, needs))
            return live[0]

        def read(field: str, layer: int | None) -> torch.Tensor:
            self.read_slots.add((field, layer))
            slot = field if layer is None else f"{field}.{layer}"
            stored = {d: self.caches[d].get(slot, [row_ids[i] for i in pos]) for d, pos in groups.items()}
            if all(v is not None for v in stored.values()):
                self.hits += 1
                return self._assemble(field, stored, groups, lengths, batch)
            self.misses += 1
            out = getattr(forward(), field)
            out = out if layer is None else out[layer]
            for d, pos in groups.items():
                real = [out[i][_real(TOKEN_DIMS[field], out.dim() - 1, lengths[i])] for i in pos]
                self.caches[d].put(slot, [row_ids[i] for i in pos], [lengths[i] for i in pos], real)
            return out

        outputs = ModelOutputs(
            logits=read("logits", None),
            **{field: LazyLayers(self.num_layers + (field == "hidden_states"),
                              lambda j, f=field: read(f, j)) if _needed(field, needs) else None
               for field in LAYERED})
        for field, layer in sorted(self.read_slots, key=str):  # what earlier batches' losses read
            if layer is not None and _needed(field, needs):
                getattr(outputs, field)[layer]
        if any(layer is not None for _, layer in self.read_slots):
            # A forward run on a miss holds every layer's attention and hidden states. What the loss
            # reads is taken from it above; the rest (HRKD: 3 of 6 layers' scores) would otherwise
            # live through the student's forward and loss, at a step's memory peak. A slot read for
            # the first time later runs the forward again.
            live.clear()
        return outputs

    def _assemble(self, field, stored, groups, lengths, batch) -> torch.Tensor:
        first = next(iter(stored.values()))[0]
        dims = TOKEN_DIMS[field]
        width = batch.input_ids.shape[1]
        shape = [width if d in dims else size for d, size in enumerate(first.shape)]
        out = torch.full((len(batch), *shape), _pad_value(field, first.dtype), dtype=first.dtype)
        for d, pos in groups.items():
            for i, value in zip(pos, stored[d]):
                out[i][_real(dims, value.dim(), lengths[i])] = value
        return out.to(batch.input_ids.device)

    def flush(self) -> None:
        for cache in self.caches.values():
            cache.flush()


def _needed(field: str, needs: frozenset[str]) -> bool:
    return {"logits": True, "hidden_states": "hidden" in needs, "attention_scores": "attentions" in needs,
            "attention_probs": "attentions" in needs, "values": "values" in needs}[field]


def list_caches(root: Path | None = None) -> list[dict[str, Any]]:
    """Every cache folder: its key and identity, rows and outputs held, size on disk."""
    out = []
    for folder in sorted((root or outputs_root()).glob("*/")):
        try:
            identity = json.loads((folder / "cache.json").read_text())
        except (OSError, json.JSONDecodeError):
            identity = {}
        chunks = list(folder.glob("*.safetensors"))
        out.append({"key": folder.name, "identity": identity, "chunks": len(chunks),
                    "bytes": sum(p.stat().st_size for p in folder.iterdir() if p.is_file()),
                    "modified": max((p.stat().st_mtime for p in folder.iterdir()), default=folder.stat().st_mtime)})
    return out


def remove_caches_of(teacher_key: str, root: Path | None = None) -> tuple[int, int]:
    """Remove every cache of `teacher_key`'s outputs (`teacher rm`): no later run reads them, as a teacher
    trained again under that key has other weights, so other caches. (folders, bytes) removed."""
    mine = [c for c in list_caches(root) if c["identity"].get("teacher") == teacher_key]
    for c in mine:
        shutil.rmtree((root or outputs_root()) / c["key"], ignore_errors=True)
    return len(mine), sum(c["bytes"] for c in mine)
