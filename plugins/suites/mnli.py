"""MultiNLI (Williams, Nangia and Bowman 2018) as five domains: its genres fiction, government,
slate, telephone and travel; labels entailment, neutral, contradiction.

Reads, from the data dir (or its `mnli/` folder), the first of:
- a GLUE `MNLI/` folder: `train.tsv` and `dev_matched.tsv`, tab-separated with no quoting,
  a header row, genre in column 4, sentence1 and sentence2 in columns 9 and 10, the gold
  label last (12 columns in train.tsv, 16 in the original dev_matched.tsv), at any size;
- the MultiNLI 1.0 jsonl files `multinli_1.0_train.jsonl` and `multinli_1.0_dev_matched.jsonl`
  (also inside a `multinli_1.0/` folder). `python -m bench data prepare` writes these from
  the hub dataset `nyu-mll/multi_nli` when online.

Rows whose gold label is `-` (no annotator consensus) are dropped and counted.
Protocol (the HRKD code): per genre, the first 90% of train in file order is train, the
rest dev; the genre's rows of dev_matched are test.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from bench.api import DataConfig, SuiteSpec
from bench.errors import BenchError
from bench.hookspecs import hookimpl
from bench.textfiles import BadRow, json_object, utf8_lines

DOMAINS = ("fiction", "government", "slate", "telephone", "travel")
LABELS = ("entailment", "neutral", "contradiction")
NO_CONSENSUS = "-"
TRAIN_FRACTION = 0.9  # of each genre's train.tsv rows, in file order; the rest is dev
VERSION = "1"

GLUE_FILES = {"train": "train.tsv", "test": "dev_matched.tsv"}
JSONL_FILES = {"train": "multinli_1.0_train.jsonl", "test": "multinli_1.0_dev_matched.jsonl"}
TSV_COLUMNS = ("genre", "sentence1", "sentence2")  # found by header name; the gold label is last


@dataclass
class Parsed:
    """One file's rows per genre, in file order, and what was left out."""

    rows: dict[str, list[tuple[str, str, int]]] = field(default_factory=lambda: defaultdict(list))
    no_consensus: Counter = field(default_factory=Counter)  # per genre
    bad_rows: Counter = field(default_factory=Counter)  # per genre ("?" when it could not be read)


def locate(data_dir: str) -> dict[str, Path]:
    """The files to read: GLUE TSV first, then MultiNLI jsonl."""
    base = Path(data_dir)
    roots = [base / "mnli", base]
    for root in roots:
        for folder in (root / "MNLI", root):
            if (folder / GLUE_FILES["train"]).is_file():
                return _both(folder, GLUE_FILES)
        for folder in (root / "multinli_1.0", root):
            if (folder / JSONL_FILES["train"]).is_file():
                return _both(folder, JSONL_FILES)
    raise BenchError(
        f"no MNLI data under {base} (looked for MNLI/train.tsv and multinli_1.0_train.jsonl "
        f"in {base / 'mnli'} and {base})",
        "pass --data-dir DIR with DIR/mnli/MNLI/{train,dev_matched}.tsv (GLUE layout) or the "
        "MultiNLI 1.0 jsonl files, or run `python -m bench data prepare` when online")


def _both(folder: Path, names: dict[str, str]) -> dict[str, Path]:
    files = {split: folder / name for split, name in names.items()}
    for path in files.values():
        if not path.is_file():
            raise BenchError(f"missing file {path}",
                             f"MNLI needs both {names['train']} and {names['test']} in {folder}")
    return files


class _Reader:
    """Shared row checks of both formats: stop at `file:line`, or skip and count."""

    def __init__(self, path: Path, skip_bad_rows: bool):
        self.path, self.skip = path, skip_bad_rows
        self.parsed = Parsed()

    def bad(self, lineno: int, reason: str, genre: str = "?") -> None:
        if not self.skip:
            raise BenchError(f"{self.path}:{lineno}: {reason}",
                             "fix the row, or pass --skip-bad-rows to skip and count such rows")
        self.parsed.bad_rows[genre] += 1

    def add(self, lineno: int, genre: str, text_a: str, text_b: str, label: str) -> None:
        if genre not in DOMAINS:  # another genre (e.g. of the mismatched set): not ours to read
            return
        if label == NO_CONSENSUS:
            self.parsed.no_consensus[genre] += 1
        elif label not in LABELS:
            self.bad(lineno, f"unknown label {label!r} (expected one of {', '.join(LABELS)} or -)", genre)
        elif not text_a.strip() or not text_b.strip():
            self.bad(lineno, f"empty {'sentence1' if not text_a.strip() else 'sentence2'}", genre)
        else:
            self.parsed.rows[genre].append((text_a, text_b, LABELS.index(label)))

    def lines(self, header: bool):
        """(line number, text) of each line, its line break (LF or CRLF) dropped."""
        return ((lineno, text.rstrip("\r\n")) for lineno, text in utf8_lines(self.path, self.bad, header))


def read_tsv(path: Path, skip_bad_rows: bool = False) -> Parsed:
    reader = _Reader(path, skip_bad_rows)
    lines = reader.lines(header=True)
    try:
        _, header_line = next(lines)
    except StopIteration:
        raise BenchError(f"{path} is empty", "copy the file again") from None
    header = header_line.split("\t")
    missing = [c for c in TSV_COLUMNS if c not in header]
    if missing:
        raise BenchError(f"{path}:1: the header lacks column(s) {', '.join(missing)}",
                         "give a GLUE MNLI file: index, promptID, pairID, genre, ..., sentence1, "
                         "sentence2, ..., gold_label")
    genre_col, a_col, b_col = (header.index(c) for c in TSV_COLUMNS)
    width = len(header)
    for lineno, line in lines:
        if not line:
            continue
        fields = line.split("\t")
        if len(fields) != width:
            reader.bad(lineno, f"{len(fields)} columns, the header has {width}",
                       fields[genre_col] if len(fields) > genre_col else "?")
            continue
        reader.add(lineno, fields[genre_col], fields[a_col], fields[b_col], fields[-1])
    return reader.parsed


JSONL_FIELDS = ("genre", "sentence1", "sentence2", "gold_label")  # in _Reader.add's order


def _text_or(value, default: str) -> str:
    return value if isinstance(value, str) else default


def read_jsonl(path: Path, skip_bad_rows: bool = False) -> Parsed:
    reader = _Reader(path, skip_bad_rows)
    for lineno, line in reader.lines(header=False):
        if not line.strip():
            continue
        try:
            row = json_object(line, JSONL_FIELDS)
        except BadRow as exc:
            reader.bad(lineno, exc.reason, _text_or((exc.row or {}).get("genre"), "?"))
            continue
        if wrong := [k for k in JSONL_FIELDS if not isinstance(row[k], str)]:  # a null is no text "None"
            reader.bad(lineno, f"{wrong[0]} is {json.dumps(row[wrong[0]])}, not a text",
                       _text_or(row["genre"], "?"))
            continue
        reader.add(lineno, *(row[k] for k in JSONL_FIELDS))
    return reader.parsed


@functools.lru_cache(maxsize=4)
def _parse(path: str, skip_bad_rows: bool, stamp: tuple[int, int]) -> Parsed:
    reader = read_jsonl if path.endswith(".jsonl") else read_tsv
    return reader(Path(path), skip_bad_rows)


def parse(path: Path, skip_bad_rows: bool) -> Parsed:
    st = path.stat()
    return _parse(str(path), skip_bad_rows, (st.st_size, st.st_mtime_ns))


def split_rows(rows: list, split: str) -> list:
    """The HRKD protocol on one genre's rows of train: first 90% train, the rest dev."""
    cut = int(TRAIN_FRACTION * len(rows))
    return rows[:cut] if split == "train" else rows[cut:]


def load(domain: str, split: str, cfg: DataConfig):
    import datasets

    files = locate(cfg.data_dir)
    parsed = parse(files["test" if split == "test" else "train"], cfg.skip_bad_rows)
    rows = parsed.rows.get(domain, [])
    if split != "test":
        rows = split_rows(rows, split)
    return datasets.Dataset.from_dict({
        "text_a": [a for a, _, _ in rows],
        "text_b": [b for _, b, _ in rows],
        "label": [y for _, _, y in rows],
        "domain": [domain] * len(rows),
    })


def audit(domain: str, cfg: DataConfig) -> dict[str, int]:
    files = locate(cfg.data_dir)
    parsed = [parse(f, cfg.skip_bad_rows) for f in files.values()]
    return {
        "dropped_no_consensus": sum(p.no_consensus[domain] for p in parsed),
        "skipped_bad_rows": sum(p.bad_rows[domain] + p.bad_rows["?"] for p in parsed),
    }


@functools.lru_cache(maxsize=8)
def _hash_file(path: str, stamp: tuple[int, int]) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def fingerprint(domain: str, cfg: DataConfig) -> str:
    """A hash of the bytes of both files (a genre's rows are spread through them)."""
    h = hashlib.sha256()
    for path in locate(cfg.data_dir).values():
        st = path.stat()
        h.update(_hash_file(str(path), (st.st_size, st.st_mtime_ns)).encode())
    return h.hexdigest()[:16]


HUB_DATASET = "nyu-mll/multi_nli"
HUB_SPLITS = {"train": "train", "test": "validation_matched"}


def download(folder: Path) -> None:
    """Write the MultiNLI 1.0 jsonl files from the hub dataset (its label -1: no consensus)."""
    import datasets

    try:
        hub = datasets.load_dataset(HUB_DATASET)
    except Exception as exc:
        raise BenchError(f"cannot download {HUB_DATASET} from the hub ({type(exc).__name__})",
                         "go online, or pass --from DIR with a copy (DIR/mnli/MNLI/*.tsv)") from exc
    for split, hub_split in HUB_SPLITS.items():
        with open(folder / JSONL_FILES[split], "w", encoding="utf-8") as f:
            for row in hub[hub_split]:
                label = LABELS[row["label"]] if 0 <= row["label"] < len(LABELS) else NO_CONSENSUS
                f.write(json.dumps({"genre": row["genre"], "sentence1": row["premise"],
                                    "sentence2": row["hypothesis"], "gold_label": label}) + "\n")


SUITE = SuiteSpec(
    name="mnli",
    description="MultiNLI genres (Williams et al. 2018): 5 domains, 3-way entailment",
    domains=DOMAINS,
    labels=LABELS,
    load=load,
    fingerprint=fingerprint,
    audit=audit,
    version=VERSION,
    download=download,
)


@hookimpl
def bench_register_suites(register):
    register(SUITE)
