"""Amazon reviews, the multi-domain sentiment set of Blitzer, Dredze and Pereira (2007).

Reads the `sorted_data_acl` release: `{books,dvd,electronics,kitchen}/{negative,positive}.review`,
1000 pseudo-XML `<review>` blocks per file. The text of a review is its `<review_text>`
lines, stripped and joined by spaces (as the HRKD code reads them), with HTML entities
decoded (the HRKD code leaves them; `&quot;` is a quote, not five word pieces).

Split (the HRKD protocol): each domain's 2000 reviews, negatives then positives, are
shuffled with a fixed seed and cut into train/dev/test of the sizes below. The HRKD code
shuffles without a seed, so its exact split cannot be reproduced; the sizes are its.
The corpus repeats 23-46 review texts per domain and the protocol keeps them, so 2-7 test
reviews per domain also occur in train (as in the HRKD code).
"""

from __future__ import annotations

import functools
import hashlib
import html
import os
import random
from dataclasses import dataclass
from pathlib import Path

from bench.api import DataConfig, SuiteSpec
from bench.errors import BenchError
from bench.hookspecs import hookimpl

DOMAINS = ("books", "dvd", "electronics", "kitchen")
LABELS = ("negative", "positive")
SPLIT_SIZES = {  # train, dev, test
    "books": (1631, 170, 199),
    "dvd": (1621, 194, 185),
    "electronics": (1615, 172, 213),
    "kitchen": (1613, 184, 203),
}
FOLDER_ALIASES = {"kitchen": ("kitchen", "kitchen_&_housewares")}
SHUFFLE_SEED = 42
VERSION = "1"


def suite_root(data_dir: str | os.PathLike) -> Path:
    """The folder that holds the domain folders: `<data_dir>/amazon`, or `data_dir` itself."""
    base = Path(data_dir)
    for root in (base / "amazon", base):
        if (root / "books").is_dir() or (root / "dvd").is_dir():
            return root
    raise BenchError(
        f"no Amazon reviews under {base} (looked for {base / 'amazon'}/books and {base}/books)",
        "pass --data-dir DIR where DIR/amazon/{books,dvd,electronics,kitchen}/"
        "{positive,negative}.review exist (the sorted_data_acl release)")


def domain_dir(root: Path, domain: str) -> Path:
    for name in FOLDER_ALIASES.get(domain, (domain,)):
        if (root / name).is_dir():
            return root / name
    names = " or ".join(str(root / n) for n in FOLDER_ALIASES.get(domain, (domain,)))
    raise BenchError(f"missing Amazon domain folder {names}",
                     "it must hold negative.review and positive.review")


def review_files(data_dir: str | os.PathLike, domain: str) -> list[Path]:
    folder = domain_dir(suite_root(data_dir), domain)
    files = [folder / f"{label}.review" for label in LABELS]
    for f in files:
        if not f.is_file():
            raise BenchError(f"missing file {f}",
                             "each Amazon domain folder needs negative.review and positive.review")
    return files


@dataclass
class Parsed:
    reviews: list[str]
    skipped: int = 0  # reviews left out with --skip-bad-rows


def parse_reviews(path: Path, skip_bad_rows: bool = False) -> Parsed:
    """The review texts of one `.review` file, in file order.

    A bad review (empty text, bytes that are not UTF-8) stops the read with `file:line` and
    the reason, or with `skip_bad_rows` is left out and counted. A BOM and CRLF are fine.
    """
    out = Parsed([])

    def bad(lineno: int, reason: str) -> None:
        if not skip_bad_rows:
            raise BenchError(f"{path}:{lineno}: {reason}",
                             "fix the review, or pass --skip-bad-rows to skip and count such reviews")
        out.skipped += 1

    parts: list[str] | None = None
    broken: str | None = None  # why the review being read is bad
    opened = 0
    offset = 0
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
            except UnicodeDecodeError as exc:
                line = raw.decode("utf-8", errors="replace")
                broken = broken or f"bytes that are not UTF-8 at byte {offset + exc.start} of the file"
                if parts is None:  # outside a review text: nothing to skip, so it is an error
                    bad(lineno, broken)
                    broken = None
            offset += len(raw)
            tag = line.strip()
            if tag == "<review>":
                opened += 1
            elif tag == "<review_text>":
                parts, broken = [], None
            elif tag == "</review_text>":
                if parts is None:
                    raise BenchError(f"{path}:{lineno}: </review_text> without <review_text>",
                                     "the file is not in the sorted_data_acl format")
                review = html.unescape(" ".join(parts)).strip()
                if broken or not review:
                    bad(lineno, broken or "empty <review_text>")
                else:
                    out.reviews.append(review)
                parts = None
            elif parts is not None and tag:
                parts.append(tag)
    if parts is not None:
        raise BenchError(f"{path}: unterminated <review_text> at end of file",
                         "the file is truncated; copy it again")
    if opened != len(out.reviews) + out.skipped:
        raise BenchError(f"{path}: {opened} <review> blocks but {len(out.reviews) + out.skipped} review texts",
                         "every <review> needs a <review_text>")
    return out


@dataclass(frozen=True)
class DomainRows:
    rows: tuple[tuple[str, int], ...]  # (text, label), shuffled
    skipped: int


@functools.lru_cache(maxsize=8)
def _domain_rows(folder: str, domain: str, skip_bad_rows: bool, stamp: tuple) -> DomainRows:
    rows, skipped = [], 0
    for label, name in enumerate(LABELS):
        parsed = parse_reviews(Path(folder) / f"{name}.review", skip_bad_rows)
        rows += [(text, label) for text in parsed.reviews]
        skipped += parsed.skipped
    random.Random(SHUFFLE_SEED).shuffle(rows)
    n_train, n_dev, n_test = SPLIT_SIZES[domain]
    if len(rows) + skipped != n_train + n_dev + n_test or len(rows) <= n_train + n_dev:
        raise BenchError(
            f"Amazon domain {domain!r} in {folder} has {len(rows) + skipped} reviews"
            f"{f' ({skipped} skipped)' if skipped else ''}, expected {n_train + n_dev + n_test}",
            "use the complete sorted_data_acl files (1000 reviews each)")
    return DomainRows(tuple(rows), skipped)


def domain_rows(domain: str, cfg: DataConfig) -> DomainRows:
    files = review_files(cfg.data_dir, domain)
    stamp = tuple((str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in files)
    return _domain_rows(str(files[0].parent), domain, cfg.skip_bad_rows, stamp)


def load(domain: str, split: str, cfg: DataConfig):
    """The HRKD split: train and dev of fixed sizes, the rest test (smaller only when
    reviews were skipped)."""
    import datasets

    rows = domain_rows(domain, cfg).rows
    n_train, n_dev, _ = SPLIT_SIZES[domain]
    bounds = {"train": (0, n_train), "dev": (n_train, n_train + n_dev), "test": (n_train + n_dev, len(rows))}
    lo, hi = bounds[split]
    part = rows[lo:hi]
    return datasets.Dataset.from_dict({
        "text_a": [t for t, _ in part],
        "text_b": [None] * len(part),
        "label": [y for _, y in part],
        "domain": [domain] * len(part),
    })


def audit(domain: str, cfg: DataConfig) -> dict[str, int]:
    return {"skipped_bad_rows": domain_rows(domain, cfg).skipped}


def fingerprint(domain: str, cfg: DataConfig) -> str:
    h = hashlib.sha256()
    for f in review_files(cfg.data_dir, domain):
        h.update(f.read_bytes())
    return h.hexdigest()[:16]


SUITE = SuiteSpec(
    name="amazon",
    description="Amazon reviews (Blitzer et al. 2007): 4 domains, binary sentiment",
    domains=DOMAINS,
    labels=LABELS,
    load=load,
    fingerprint=fingerprint,
    audit=audit,
    version=VERSION,
)


@hookimpl
def bench_register_suites(register):
    register(SUITE)
