"""Every extension point of kd-bench. Read this file and you know what a plugin can do.

Registration hooks receive a `register` callback, so one plugin can register several
things and the order plugins load in never matters.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pluggy

hookspec = pluggy.HookspecMarker("bench")
hookimpl = pluggy.HookimplMarker("bench")


@hookspec
def bench_register_suites(register: Callable[[Any], None]) -> None:
    """Register multi-domain suites (datasets).

    Called once when the registry is first built. Call `register(SuiteSpec(...))` for each
    suite; a name registered twice is an error. Returns nothing.
    """


@hookspec
def bench_register_distillers(register: Callable[[Any], None]) -> None:
    """Register distillation methods.

    Called once when the registry is first built. Call `register(DistillerClass)` with a
    subclass of `bench.api.Distiller` (the class, not an instance). Returns nothing.
    """


@hookspec
def bench_register_metrics(register: Callable[[Any], None]) -> None:
    """Register metrics computed after each run.

    Called once when the registry is first built. Call `register(MetricSpec(...))`.
    Returns nothing.
    """


@hookspec
def bench_register_models(register: Callable[[Any], None]) -> None:
    """Register model sources: schemes of model references such as `pkg:` (offline models
    shipped in packages) or a model zoo.

    Called once when the registry is first built. Call `register(ModelSource(...))`.
    Returns nothing.
    """


@hookspec
def bench_register_presets(register: Callable[[Any], None]) -> None:
    """Register presets: the models, data sizes and budgets a comparison shares.

    Called once when the registry is first built. Call `register(Preset(...))` (`bench.presets.Preset`,
    often `dataclasses.replace` of a built-in one); its name must be new. `run --preset NAME` then
    finds it, and `ls presets` lists it with the plugin as its source. Returns nothing.
    """


@hookspec
def bench_run_finished(result: dict[str, Any]) -> None:
    """Observe a finished run (loggers, experiment trackers).

    Called after each run's result was written to the store, with the result record
    (a JSON-ready dict, see bench/results/records.py). Must not modify it. Returns nothing.
    """


@hookspec
def bench_machine_info(info: dict[str, Any]) -> None:
    """Add facts to the machine record stored with every result.

    Called once per command with the dict the host filled (platform, cpu, threads, gpu,
    torch, transformers); add keys to it in place. Returns nothing.
    """
