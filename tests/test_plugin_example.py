"""The example third-party plugin (examples/kd-bench-logit-mse, walked through in docs/PLUGINS.md),
installed for real with pip and loaded through its entry point, as a user's plugin would be."""

import json
import math
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import numpy as np
import pytest
import torch

from bench.api import Batch, ModelOutputs
from bench.cli import main
from bench.errors import BenchError
from bench.plugins import get_registry, set_registry
from bench.testing import check_distiller

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "kd-bench-logit-mse"
MODULE = "bench_logit_mse"
ENTRY_POINT = "logit-mse"


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """The example pip-installed into a folder of its own, once per module. It is built from a copy,
    so that setuptools leaves no build/ or egg-info in the checkout."""
    work = tmp_path_factory.mktemp("logit-mse")
    source, target = work / "src", work / "site"
    shutil.copytree(EXAMPLE, source, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    done = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                           "--disable-pip-version-check", "--no-input", "--target", str(target), str(source)],
                          capture_output=True, text=True)
    assert done.returncode == 0, f"pip install of the example failed:\n{done.stdout}\n{done.stderr}"
    return target


@pytest.fixture
def installed(site, monkeypatch):
    """The installed example on sys.path and entry points switched on (conftest switches them off);
    afterwards the registry is dropped and the module forgotten, so later tests never see it."""
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.delenv("BENCH_NO_ENTRY_POINTS", raising=False)
    monkeypatch.delenv("BENCH_LOAD_PLUGINS", raising=False)
    set_registry(None)
    yield site
    set_registry(None)
    for name in [n for n in sys.modules if n == MODULE or n.startswith(MODULE + ".")]:
        del sys.modules[name]


@pytest.fixture
def logit_mse(installed):
    return get_registry().distiller("logit-mse")


def test_it_is_discovered_through_its_entry_point(installed):
    (ep,) = [ep for ep in metadata.entry_points(group="bench") if ep.name == ENTRY_POINT]
    assert ep.value == MODULE and ep.dist.name == "kd-bench-logit-mse" and ep.dist.version == "0.1.0"
    registry = get_registry()
    cls = registry.distiller("logit-mse")
    assert registry.owner("distiller", "logit-mse") == ENTRY_POINT
    assert cls.__module__ == MODULE
    assert Path(sys.modules[MODULE].__file__).parent == installed  # the installed copy, not the checkout
    assert cls.teacher_kind == "single" and cls.needs == frozenset({"logits"}) and cls.stages == ("main",)
    assert set(registry.distillers) >= {"kd", "finetune", "logit-mse"}  # the built-ins still load


def test_the_cli_lists_it(installed, capsys):
    assert main(["ls", "distillers"]) == 0
    (line,) = [x for x in capsys.readouterr().out.splitlines() if x.startswith("logit-mse ")]
    assert "Ba & Caruana" in line and line.endswith(f"[{ENTRY_POINT}]")
    assert main(["ls", "plugins"]) == 0
    assert f"{ENTRY_POINT}: bench_register_distillers" in capsys.readouterr().out.splitlines()


@pytest.mark.parametrize("options", [None, {"alpha": 0.3}, {"alpha": 0.0}])
def test_it_passes_the_conformance_check(logit_mse, options):
    check_distiller(logit_mse, options)


def numpy_loss(student: np.ndarray, teacher: np.ndarray, labels: np.ndarray, alpha: float) -> dict[str, float]:
    """alpha * mean((zs - zt)^2) + (1 - alpha) * mean(-log softmax(zs)[y]), in float64."""
    mse = np.mean((student - teacher) ** 2)
    shifted = student - student.max(axis=1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    ce = -np.mean(log_probs[np.arange(len(labels)), labels])
    return {"mse": alpha * mse, "ce": (1 - alpha) * ce}


@pytest.mark.parametrize("alpha", [1.0, 0.3])
def test_its_loss_matches_an_independent_computation(logit_mse, alpha):
    rng = np.random.default_rng(7)
    student, teacher = rng.normal(size=(4, 3)) * 2, rng.normal(size=(4, 3)) * 2
    labels = np.array([0, 2, 1, 2])
    ids = torch.ones(4, 5, dtype=torch.long)
    batch = Batch(ids, ids, torch.zeros_like(ids), torch.tensor(labels), torch.zeros(4, dtype=torch.long))
    parts = logit_mse({"alpha": alpha}).loss(
        batch, ModelOutputs(torch.tensor(student, dtype=torch.float32)),
        ModelOutputs(torch.tensor(teacher, dtype=torch.float32)), "main")
    expected = numpy_loss(student, teacher, labels, alpha)
    assert parts.keys() == expected.keys()
    for name, value in expected.items():
        assert parts[name].item() == pytest.approx(value, rel=1e-5, abs=1e-7), name
    if alpha == 1.0:
        assert parts["ce"].item() == 0.0  # pure logit regression: the labels weigh nothing


@pytest.mark.parametrize("alpha", [1.5, -0.1, math.nan])
def test_a_bad_alpha_is_refused_with_a_clear_message(logit_mse, alpha):
    with pytest.raises(BenchError, match=r"logit-mse alpha must lie in \[0, 1\], got") as info:
        logit_mse({"alpha": alpha})
    assert "set alpha between 0" in str(info.value)
    with pytest.raises(BenchError, match="logit-mse option alpha must be a float, got 'half'"):
        logit_mse({"alpha": "half"})


def test_a_bad_alpha_on_the_command_line_stops_before_anything_runs(installed, data_dir, tmp_path, capsys):
    assert main(["run", "--methods", "logit-mse", "--suite", "amazon", "--preset", "smoke",
                 "--option", "logit-mse.alpha=1.5", "--results-dir", str(tmp_path), "--data-dir", str(data_dir)]) == 2
    assert capsys.readouterr().err.splitlines()[0] == "error: logit-mse alpha must lie in [0, 1], got 1.5"
    assert not list(tmp_path.iterdir())


def test_a_smoke_run_stores_its_result_under_the_plugin(installed, data_dir, tmp_path):
    results = tmp_path / "results"
    assert main(["run", "--methods", "logit-mse", "--suite", "amazon", "--preset", "smoke", "--domains", "books",
                 "--option", "logit-mse.alpha=0.5", "--results-dir", str(results), "--data-dir", str(data_dir)]) == 0
    (path,) = results.rglob("*.json")
    assert path.relative_to(results).as_posix() == "amazon/smoke/logit-mse[alpha=0.5]/books/seed1.json"
    record = json.loads(path.read_text())
    method = {k: record["method"][k] for k in ("name", "label", "plugin", "config")}
    assert method == {"name": "logit-mse", "label": "logit-mse[alpha=0.5]", "plugin": ENTRY_POINT,
                      "config": {"alpha": 0.5}}
    assert set(record["plugin_versions"]) == {ENTRY_POINT}
    assert record["teacher"]["ref"] == "random:tiny"
    assert all({"mse", "ce", "loss"} <= set(h) for h in record["train"]["history"])
    assert 0.0 <= record["metrics"]["accuracy"] <= 1.0


def test_it_leaves_no_trace(site):
    """Runs last in this module: once a test is over, the rest of the suite sees the built-ins only."""
    assert MODULE not in sys.modules and str(site) not in sys.path
    assert "logit-mse" not in get_registry().distillers
