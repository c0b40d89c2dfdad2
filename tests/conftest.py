"""Test setup: no entry points (an installed plugin must not change what tests see), no
network, a throwaway teacher store; the real data of ../shared/data when it is there."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ["BENCH_NO_ENTRY_POINTS"] = "1"
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.pop("BENCH_LOAD_PLUGINS", None)

REPO = Path(__file__).resolve().parent.parent


def shared_data_dir() -> Path | None:
    for candidate in (os.environ.get("BENCH_DATA_DIR"), REPO.parent / "shared" / "data"):
        if candidate and (Path(candidate) / "amazon").is_dir():
            return Path(candidate)
    return None


@pytest.fixture(scope="session")
def data_dir() -> Path:
    found = shared_data_dir()
    if found is None:
        pytest.skip("the real data (../shared/data or $BENCH_DATA_DIR) is not here")
    return found


@pytest.fixture
def fake_cpu(monkeypatch):
    """Make the bf16 check see a CPU with these flags: `fake_cpu("avx2")`."""
    def fake(*flags: str) -> None:
        monkeypatch.setattr("bench.models.precision.cpu_model",
                            lambda: {"cpu_model": "Test CPU", "cpu_flags": list(flags)})
    return fake


@pytest.fixture(autouse=True)
def isolated_store(tmp_path_factory, monkeypatch):
    """Every test gets a fresh teacher store and the default plugins only."""
    from bench.plugins import set_registry

    monkeypatch.setenv("BENCH_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
    set_registry(None)
    yield
    set_registry(None)


@pytest.fixture(autouse=True)
def torch_threads_kept():
    """A test that changes torch's thread count must put it back: the tests after it would run, and
    time, on its count."""
    import torch

    before = torch.get_num_threads()
    yield
    if (after := torch.get_num_threads()) != before:
        torch.set_num_threads(before)
        pytest.fail(f"the test left torch on {after} threads, not {before}: restore the count it changed")


@pytest.fixture(scope="session")
def packaged_cache(tmp_path_factory) -> Path:
    """One assembled all-mpnet-base-v2 for the session, shared by every test that needs it
    (assembling costs seconds and 440 MB)."""
    from bench.models import packaged

    cache = tmp_path_factory.getbasetemp() / "packaged-models"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("BENCH_CACHE_DIR", str(cache))
        packaged.model_dir("all-mpnet-base-v2")
    return cache


@pytest.fixture(scope="session")
def install_fake_plugin():
    """`install(root, module, source)`, see `_install_fake_plugin`."""
    return _install_fake_plugin


def _install_fake_plugin(root: Path, module: str, source: str) -> Path:
    """A third party's plugin as pip would leave it: `<module>.py` and a dist-info whose entry
    point (group `bench`) names it, in `root`; put `root` on PYTHONPATH of a `python -m bench`
    subprocess (without BENCH_NO_ENTRY_POINTS) and it loads."""
    (root / f"{module}.py").write_text(source)
    dist = root / f"{module}-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {module.replace('_', '-')}\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(f"[bench]\n{module} = {module}\n")
    return root
