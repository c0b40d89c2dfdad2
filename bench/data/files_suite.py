"""A researcher's own data as a suite, with no plugin to write: `--suite files:DIR`.

Reads `DIR/<domain>/{train,dev,test}.{jsonl,csv,tsv}`. The domains are the sub-folders of DIR
(sorted; hidden ones left out) that hold a split file; each needs train and test, dev is
optional, and each split is exactly one file in one of three formats:
- jsonl: one JSON object a line;
- csv: a header row, then standard CSV (Python's csv module: a quoted field may hold commas,
  quotes and line breaks);
- tsv: the same with tabs.
Columns: `text`, optionally `text_pair` (the second sentence of a pair task) and `label` (a name,
or in jsonl also an integer; spaces around it are ignored); others are left alone. A BOM and
CRLF are fine.

Labels: the sorted union of the labels of every domain's train split (in numeric order when they
are all integers), one head for all domains; a dev or test label outside it is a bad row.

Protocol: each file's rows in file order. A domain without a dev file gets one cut from its train
rows: a permutation with a fixed seed picks 10% of them (at least one row) for dev, and both parts
keep file order, so the same files always give the same split.

A bad row (invalid JSON, a missing field, the wrong number of fields, an empty text, an unknown
label, bytes that are not UTF-8) stops the read at `file:line` with the reason, or with
--skip-bad-rows is left out and counted. The suite is named `files:<the folder's name>`, the name
results are stored under; each result keeps the folder itself and the labels.
"""

from __future__ import annotations

import csv
import functools
import hashlib
import json
import os
import random
import re
from dataclasses import dataclass, field
from pathlib import Path

from bench.api import DataConfig, SuiteSpec
from bench.errors import BenchError
from bench.textfiles import BadRow, json_object, utf8_lines

PREFIX = "files:"
SPLITS = ("train", "dev", "test")
DELIMITERS = {"jsonl": None, "csv": ",", "tsv": "\t"}  # the formats, and the field separator of those with a header
REQUIRED = ("text", "label")
PAIR = "text_pair"
DEV_FRACTION = 0.1  # of train's rows, for a domain without a dev file
DEV_SEED = 20240501
VERSION = "1"

LAYOUT_HINT = "give --suite files:DIR with DIR/<domain>/train.csv, test.csv and optionally dev.csv (or .jsonl, .tsv)"


def source_dir(ref: str) -> Path:
    """The folder of `files:DIR`, absolute (not resolved: its name is the user's, not a link target's)."""
    raw = ref.removeprefix(PREFIX)
    if not raw:
        raise BenchError(f"--suite {ref} names no folder", LAYOUT_HINT)
    return Path(os.path.abspath(os.path.expanduser(raw)))


def suite_name(ref: str) -> str:
    """`files:DIR` -> `files:<DIR's name>`: one path component, as result paths need."""
    return PREFIX + source_dir(ref).name


def split_files(root: Path) -> dict[str, dict[str, Path]]:
    """Each domain's file per split, domains sorted."""
    if not root.is_dir():
        raise BenchError(f"data folder {root} does not exist" if not root.exists() else f"{root} is not a folder",
                         LAYOUT_HINT)
    layout = {}
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        files = {}
        for split in SPLITS:
            found = [folder / f"{split}.{fmt}" for fmt in DELIMITERS if (folder / f"{split}.{fmt}").is_file()]
            if len(found) > 1:
                raise BenchError(f"{folder} holds {' and '.join(p.name for p in found)}",
                                 "keep one file per split: remove all but one of them")
            if found:
                files[split] = found[0]
        if not files:  # notes, scripts: not a domain
            continue
        for split in ("train", "test"):
            if split not in files:
                raise BenchError(f"domain folder {folder} has no {split} file ({split}.jsonl, .csv or .tsv)",
                                 f"add its {split} file, or move the folder out of {root}")
        layout[folder.name] = files
    if not layout:
        raise BenchError(f"{root} has no domain folders (sub-folders holding train.jsonl, train.csv or train.tsv)",
                         LAYOUT_HINT)
    return layout


Row = tuple[str, str | None, str]  # text, text_pair (None: a single text), label as text


@dataclass
class Parsed:
    rows: list[Row] = field(default_factory=list)  # in file order
    skipped: int = 0  # bad rows left out with --skip-bad-rows


class _Reader:
    """The row checks of every format: stop at `file:line`, or skip and count."""

    def __init__(self, path: Path, skip_bad_rows: bool, labels: tuple[str, ...] | None):
        self.path, self.skip, self.labels = path, skip_bad_rows, labels
        self.parsed = Parsed()
        self.pairs: bool | None = None  # whether the file's rows have a text_pair: its first good row says

    def bad(self, lineno: int, reason: str) -> None:
        if not self.skip:
            raise BenchError(f"{self.path}:{lineno}: {reason}",
                             "fix the row, or pass --skip-bad-rows to skip and count such rows")
        self.parsed.skipped += 1

    def add(self, lineno: int, text: str, pair: str | None, label: str) -> None:
        label = label.strip()
        if not text.strip():
            self.bad(lineno, "empty text")
        elif pair is not None and not pair.strip():
            self.bad(lineno, f"empty {PAIR}")
        elif self.pairs is not None and (pair is not None) != self.pairs:  # a batch is all pairs or all single
            self.bad(lineno, f"{'a' if pair is not None else 'no'} {PAIR}, unlike the rows before it")
        elif not label:
            self.bad(lineno, "empty label")
        elif self.labels is not None and label not in self.labels:
            self.bad(lineno, f"label {label!r} is not among the train labels ({', '.join(self.labels)})")
        else:
            self.pairs = pair is not None
            self.parsed.rows.append((text, pair, label))

    def lines(self, has_header: bool):
        return utf8_lines(self.path, self.bad, header=has_header)


def read_jsonl(path: Path, skip_bad_rows: bool = False, labels: tuple[str, ...] | None = None) -> Parsed:
    reader = _Reader(path, skip_bad_rows, labels)
    for lineno, line in reader.lines(has_header=False):
        if not line.strip():
            continue
        try:
            row = json_object(line, REQUIRED)
        except BadRow as exc:
            reader.bad(lineno, exc.reason)
            continue
        text, pair, label = row["text"], row.get(PAIR), row["label"]
        if not isinstance(text, str) or not (pair is None or isinstance(pair, str)):  # a null is no text "None"
            name, value = ("text", text) if not isinstance(text, str) else (PAIR, pair)
            reader.bad(lineno, f"{name} is {json.dumps(value)}, not a text")
            continue
        if isinstance(label, bool) or not isinstance(label, str | int):  # true is an int to Python
            reader.bad(lineno, f"label is {json.dumps(label)}, not a text or an integer")
            continue
        reader.add(lineno, text, pair, str(label))
    return reader.parsed


def read_table(path: Path, delimiter: str, skip_bad_rows: bool = False,
               labels: tuple[str, ...] | None = None) -> Parsed:
    """A csv or tsv file with a header row; a row's line is the one it starts on (a quoted field may
    span lines)."""
    reader = _Reader(path, skip_bad_rows, labels)
    consumed: list[int] = []  # the line numbers the csv module has read for the row being parsed

    def feed():
        for lineno, line in reader.lines(has_header=True):
            consumed.append(lineno)
            yield line

    separator = "tabs" if delimiter == "\t" else "commas"
    hint = f"name the columns in the first row: {', '.join(REQUIRED)} (and optionally {PAIR}), separated by {separator}"
    rows = csv.reader(feed(), delimiter=delimiter)
    try:
        header = [name.strip() for name in next(rows)]
    except StopIteration:
        raise BenchError(f"{path} is empty", hint) from None
    except csv.Error as exc:
        raise BenchError(f"{path}:1: the header is not valid {path.suffix[1:]} ({exc})", hint) from None
    if missing := [c for c in REQUIRED if c not in header]:
        raise BenchError(f"{path}:1: the header lacks column(s) {', '.join(missing)}", hint)
    text_col, label_col = (header.index(c) for c in REQUIRED)
    pair_col = header.index(PAIR) if PAIR in header else None
    width = len(header)
    while True:
        consumed.clear()
        try:
            fields = next(rows)
        except StopIteration:
            break
        except csv.Error as exc:  # an unclosed quote at the end, a NUL byte
            reader.bad(consumed[0] if consumed else 0, f"not valid {path.suffix[1:]} ({exc})")
            continue
        if not fields:  # a blank line
            continue
        if len(fields) != width:
            reader.bad(consumed[0], f"{len(fields)} field{'s' * (len(fields) > 1)}, the header has {width}")
            continue
        reader.add(consumed[0], fields[text_col], None if pair_col is None else fields[pair_col], fields[label_col])
    return reader.parsed


@functools.lru_cache(maxsize=64)
def _parse(path: str, skip_bad_rows: bool, labels: tuple[str, ...] | None, stamp: tuple[int, int]) -> Parsed:
    delimiter = DELIMITERS[path.rsplit(".", 1)[1]]
    if delimiter is None:
        return read_jsonl(Path(path), skip_bad_rows, labels)
    return read_table(Path(path), delimiter, skip_bad_rows, labels)


def parse(path: Path, skip_bad_rows: bool, labels: tuple[str, ...] | None = None) -> Parsed:
    """A file's rows, read again only when it changed; `labels`: those allowed (None: any)."""
    st = path.stat()
    return _parse(str(path), skip_bad_rows, labels, (st.st_size, st.st_mtime_ns))


def label_set(root: Path, layout: dict[str, dict[str, Path]]) -> tuple[str, ...]:
    """The sorted union of the train labels. Bad rows are passed over here: whether they stop the
    run or are skipped is the load's to say (it has --skip-bad-rows)."""
    found = {label for files in layout.values() for _, _, label in parse(files["train"], True).rows}
    if not found:
        raise BenchError(f"no train file under {root} has a good row",
                         "give each domain's train file rows with a text and a label")
    if all(re.fullmatch(r"[+-]?\d+", label) for label in found):
        return tuple(sorted(found, key=lambda label: (int(label), label)))
    return tuple(sorted(found))


def dev_cut(n_train: int) -> frozenset[int]:
    """The train rows (by index) that become dev in a domain without a dev file."""
    order = list(range(n_train))
    random.Random(DEV_SEED).shuffle(order)
    return frozenset(order[:max(1, int(DEV_FRACTION * n_train))])


@functools.lru_cache(maxsize=64)
def _hash_file(path: str, stamp: tuple[int, int]) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def build(ref: str) -> SuiteSpec:
    """The suite of `files:DIR`, from the folder as it is now."""
    root = source_dir(ref)
    layout = split_files(root)
    labels = label_set(root, layout)

    def load(domain: str, split: str, cfg: DataConfig):
        import datasets

        files = layout[domain]
        if split == "test" or "dev" in files:
            rows = parse(files[split], cfg.skip_bad_rows, labels).rows
        else:  # train and dev, cut from the train file
            train = parse(files["train"], cfg.skip_bad_rows, labels).rows
            dev = dev_cut(len(train))
            rows = [row for i, row in enumerate(train) if (i in dev) == (split == "dev")]
        return datasets.Dataset.from_dict({
            "text_a": [text for text, _, _ in rows],
            "text_b": [pair for _, pair, _ in rows],
            "label": [labels.index(label) for _, _, label in rows],
            "domain": [domain] * len(rows),
        })

    def audit(domain: str, cfg: DataConfig) -> dict[str, int]:
        return {"skipped_bad_rows": sum(parse(f, cfg.skip_bad_rows, labels).skipped
                                        for f in layout[domain].values())}

    def fingerprint(domain: str, cfg: DataConfig) -> str:
        """The domain's files' bytes, and the label set: another domain's new label changes this
        domain's head and label ids too."""
        h = hashlib.sha256("\t".join(labels).encode())
        for split, path in sorted(layout[domain].items()):
            st = path.stat()
            h.update(f"\n{path.name}\n".encode())
            h.update(_hash_file(str(path), (st.st_size, st.st_mtime_ns)).encode())
        return h.hexdigest()[:16]

    return SuiteSpec(
        name=PREFIX + root.name,
        description=f"your files in {root}: {len(layout)} domains, labels {', '.join(labels)}",
        domains=tuple(layout),
        labels=labels,
        load=load,
        fingerprint=fingerprint,
        audit=audit,
        version=VERSION,
        source=str(root),
    )
