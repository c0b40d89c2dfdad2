"""Make `hrkd_plugin` importable from a source checkout that has not installed it; and, as the host's tests/conftest.py
does, no network, a throwaway teacher store per test and the real data of ../shared/data when it is there."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

try:
    import hrkd_plugin.graph  # noqa: F401
except ImportError:
    # From the repository root, `hrkd_plugin` may have resolved to the project folder as a namespace package: forget it.
    for name in [name for name in sys.modules if name == "hrkd_plugin" or name.startswith("hrkd_plugin.")]:
        del sys.modules[name]
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.pop("BENCH_LOAD_PLUGINS", None)  # it would filter the built-in plugins too

REPO = Path(__file__).resolve().parents[2]  # the kd-bench checkout this package sits in


@pytest.fixture(scope="session")
def data_dir() -> Path:
    for candidate in (os.environ.get("BENCH_DATA_DIR"), REPO.parent / "shared" / "data"):
        if candidate and (Path(candidate) / "amazon").is_dir():
            return Path(candidate)
    pytest.skip("the real data (../shared/data or $BENCH_DATA_DIR) is not here")


@pytest.fixture(autouse=True)
def isolated_store(tmp_path_factory, monkeypatch):
    """Every test gets a fresh teacher store and a registry built afresh (none left over from another test)."""
    from bench.plugins import set_registry

    monkeypatch.setenv("BENCH_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
    set_registry(None)
    yield
    set_registry(None)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """The graph and loss tests use tiny tensors: on a busy machine intra-op threads cost seconds
    and buy nothing."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
