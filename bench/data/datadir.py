"""The data directory: which one is used, filling it, and what each suite finds in it.

Every command resolves it the same way: `--data-dir`, else `$BENCH_DATA_DIR`, else `./data`.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections import Counter
from pathlib import Path

from bench.api import DataConfig, SuiteSpec
from bench.errors import BenchError

DEFAULT_DATA_DIR = "data"
# This project's machines keep a read-only copy beside the checkout.
SHARED_COPY = Path(__file__).resolve().parents[3] / "shared" / "data"


def resolve_data_dir(given: str | None) -> str:
    data_dir = given or os.environ.get("BENCH_DATA_DIR") or DEFAULT_DATA_DIR
    if not os.path.isdir(data_dir):
        raise BenchError(
            f"data dir {data_dir!r} does not exist",
            "pass --data-dir DIR, set BENCH_DATA_DIR, or fill ./data with `python -m bench data prepare`")
    return data_dir


def prepare(suites: list[SuiteSpec], target: Path, source: Path | None) -> list[str]:
    """Fill `target/<suite folder>` for each suite not there yet: from `source` (a local copy),
    else from the hub where the suite can download itself. Each folder is written to a temp
    folder and renamed into place, so a failure leaves nothing half-written.
    Returns what was done, one line per suite."""
    target.mkdir(parents=True, exist_ok=True)
    done = []
    for suite in suites:
        final = target / suite.folder
        if final.exists():
            done.append(f"{suite.name}: already in {final}")
            continue
        tmp = Path(tempfile.mkdtemp(prefix=f".{suite.folder}-", dir=target))
        try:
            if source is not None:
                if not (source / suite.folder).is_dir():
                    raise BenchError(f"{source} has no {suite.folder}/ folder for suite {suite.name!r}",
                                     f"give --from a folder that holds {suite.folder}/")
                shutil.copytree(source / suite.folder, tmp, dirs_exist_ok=True,
                                copy_function=shutil.copyfile)  # the copy is writable, unlike a read-only source
                how = f"copied from {source / suite.folder}"
            elif suite.download is not None:
                suite.download(tmp)
                how = "downloaded from the hub"
            else:
                raise BenchError(
                    f"suite {suite.name!r} has no local copy to take and cannot be downloaded",
                    f"pass --from DIR, where DIR/{suite.folder}/ holds its files")
            os.replace(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        done.append(f"{suite.name}: {how} to {final}")
    return done


def default_source() -> Path | None:
    return SHARED_COPY if SHARED_COPY.is_dir() else None


def stats(suite: SuiteSpec, cfg: DataConfig) -> list[dict[str, object]]:
    """One row per domain: train/dev/test rows, label counts per split, rows left out."""
    rows = []
    for domain in suite.domains:
        row: dict[str, object] = {"domain": domain}
        labels: dict[str, Counter] = {}
        for split in ("train", "dev", "test"):
            ds = suite.load(domain, split, cfg)
            row[split] = len(ds)
            labels[split] = Counter(ds["label"])
        for split in ("train", "dev", "test"):
            row[f"{split} labels"] = " ".join(f"{suite.labels[i]}:{labels[split][i]}"
                                              for i in range(len(suite.labels)))
        for what, n in suite.audit(domain, cfg).items():
            row[what.replace("_", " ")] = n
        rows.append(row)
    return rows
