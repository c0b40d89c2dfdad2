"""The plugin manager and the registry of suites, distillers, metrics and model sources.

Built-in plugins load through DEFAULT_PLUGINS by the same path as third-party ones, which
come from the "bench" entry-point group. `BENCH_LOAD_PLUGINS=a,b` limits what loads
(names as `python -m bench ls plugins` shows them); `BENCH_LOAD_PLUGINS=` loads none.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass, field, replace
from importlib import metadata
from typing import Any

import pluggy

from bench import hookspecs
from bench.api import Distiller, MetricSpec, ModelSource, SuiteSpec
from bench.data import files_suite as files
from bench.errors import BenchError, unknown_name
from bench.presets import PRESETS, Preset

ENTRY_POINT_GROUP = "bench"

DEFAULT_PLUGINS = (
    "bench_plugins.suites.amazon",
    "bench_plugins.suites.mnli",
    "bench_plugins.distillers.finetune",
    "bench_plugins.distillers.kd",
    "bench_plugins.distillers.pkd",
    "bench_plugins.distillers.tinybert",
    "bench_plugins.distillers.minilm",
    "bench_plugins.distillers.metakd",
    "bench_plugins.metrics.accuracy",
    "bench_plugins.metrics.f1",
    "bench_plugins.metrics.params",
    "bench_plugins.metrics.latency",
    "bench.models.classifier",  # the built-in model sources: random:, pkg:, hf:, path:
)


def _wanted() -> set[str] | None:
    raw = os.environ.get("BENCH_LOAD_PLUGINS")
    if raw is None:
        return None
    return {name.strip() for name in raw.split(",") if name.strip()}


def make_plugin_manager(load_entry_points: bool | None = None) -> pluggy.PluginManager:
    """A plugin manager with the default plugins and, unless disabled, the entry points.

    Entry points are skipped when `BENCH_NO_ENTRY_POINTS=1` (the test suite sets it), so an
    installed third-party plugin cannot change what the tests see.
    """
    if load_entry_points is None:
        load_entry_points = os.environ.get("BENCH_NO_ENTRY_POINTS") != "1"
    pm = pluggy.PluginManager("bench")
    pm.add_hookspecs(hookspecs)
    wanted = _wanted()
    for module_name in DEFAULT_PLUGINS:
        if wanted is None or module_name in wanted:
            pm.register(importlib.import_module(module_name), name=module_name)
    if load_entry_points:
        loaded: dict[str, str] = {}  # entry-point name -> its target
        for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
            if wanted is not None and ep.name not in wanted:
                continue
            if ep.name in loaded or pm.get_plugin(ep.name) is not None:
                if loaded.get(ep.name) == ep.value:  # one distribution seen twice on sys.path
                    continue
                raise BenchError(f"two plugins are named {ep.name!r}: {loaded.get(ep.name, ep.name)} and {ep.value}",
                                 "uninstall one of them, or pick one with BENCH_LOAD_PLUGINS")
            try:
                plugin = ep.load()
            except Exception as exc:  # a broken third-party plugin names itself
                raise BenchError(
                    f"plugin {ep.name!r} ({ep.value}) failed to import: {exc}",
                    "fix or uninstall it, or leave it out with BENCH_LOAD_PLUGINS",
                ) from exc
            pm.register(plugin, name=ep.name)
            loaded[ep.name] = ep.value
            if ep.dist is not None:
                _ENTRY_POINT_VERSIONS[ep.name] = ep.dist.version
    pm.check_pending()
    return pm


@dataclass
class Registry:
    """Everything the plugins registered, by name."""

    pm: pluggy.PluginManager
    suites: dict[str, SuiteSpec] = field(default_factory=dict)
    distillers: dict[str, type[Distiller]] = field(default_factory=dict)
    metrics: dict[str, MetricSpec] = field(default_factory=dict)
    models: dict[str, ModelSource] = field(default_factory=dict)
    presets: dict[str, Preset] = field(default_factory=dict)  # the plugins'; the built-in ones: bench.presets
    owners: dict[tuple[str, str], str] = field(default_factory=dict)  # (kind, name) -> plugin
    folders: dict[str, SuiteSpec] = field(default_factory=dict)  # files:DIR suites by their folder, built once

    @classmethod
    def build(cls, pm: pluggy.PluginManager) -> Registry:
        reg = cls(pm)
        hooks = (
            ("suite", "bench_register_suites", reg.suites, SuiteSpec, lambda x: x.name),
            ("distiller", "bench_register_distillers", reg.distillers, None, lambda x: x.name),
            ("metric", "bench_register_metrics", reg.metrics, MetricSpec, lambda x: x.name),
            ("model source", "bench_register_models", reg.models, ModelSource, lambda x: x.scheme),
            ("preset", "bench_register_presets", reg.presets, Preset, lambda x: x.name),
        )
        for kind, hook_name, table, typ, key in hooks:
            for impl in getattr(pm.hook, hook_name).get_hookimpls():
                plugin = impl.plugin_name

                def register(item: Any, kind=kind, table=table, typ=typ, key=key, plugin=plugin):
                    ok = isinstance(item, typ) if typ else (
                        isinstance(item, type) and issubclass(item, Distiller))
                    if not ok:
                        want = typ.__name__ if typ else "a subclass of bench.api.Distiller"
                        raise BenchError(f"plugin {plugin!r} registered {item!r} as a {kind}",
                                         f"register {want} instead")
                    name = key(item)
                    if kind == "preset":
                        if name in PRESETS:
                            raise BenchError(f"plugin {plugin!r} registered preset {name!r}, a built-in preset's name",
                                             "give the plugin's preset a name of its own")
                        item = replace(item, source=f"plugin {plugin}")
                    if name in table:
                        raise BenchError(
                            f"{kind} {name!r} is registered twice, by "
                            f"{reg.owners[(kind, name)]!r} and {plugin!r}",
                            "uninstall one of them, or leave one out with BENCH_LOAD_PLUGINS")
                    table[name] = item
                    reg.owners[(kind, name)] = plugin

                impl.function(register=register)
        return reg

    def suite(self, name: str) -> SuiteSpec:
        """A registered suite, or for `files:DIR` the suite of the researcher's own files in DIR."""
        if name.startswith(files.PREFIX):
            folder = str(files.source_dir(name))
            if folder not in self.folders:
                self.folders[folder] = files.build(name)
            return self.folders[folder]
        return self._get("suite", self.suites, name, "suites")

    def distiller(self, name: str) -> type[Distiller]:
        return self._get("distiller", self.distillers, name, "distillers")

    def metric(self, name: str) -> MetricSpec:
        return self._get("metric", self.metrics, name, "metrics")

    def model_source(self, scheme: str) -> ModelSource:
        return self._get("model source", self.models, scheme, "plugins")

    def owner(self, kind: str, name: str) -> str:
        return self.owners[(kind, name)]

    @staticmethod
    def _get(kind: str, table: dict, name: str, listing: str) -> Any:
        try:
            return table[name]
        except KeyError:
            raise unknown_name(kind, name, table, listing) from None


_registry: Registry | None = None


def get_registry() -> Registry:
    """The process-wide registry, built on first use."""
    global _registry
    if _registry is None:
        _registry = Registry.build(make_plugin_manager())
    return _registry


def set_registry(registry: Registry | None) -> None:
    """Replace (or with None, drop) the process-wide registry: for tests and embedding."""
    global _registry
    _registry = registry


_ENTRY_POINT_VERSIONS: dict[str, str] = {}  # plugins loaded from entry points: their distribution's version


def plugin_version(plugin_name: str) -> str | None:
    """The version of the distribution a plugin comes from, when it can be told."""
    if plugin_name in _ENTRY_POINT_VERSIONS:
        return _ENTRY_POINT_VERSIONS[plugin_name]
    top = plugin_name.split(".")[0]
    dists = metadata.packages_distributions().get(top) or [top]
    try:
        return metadata.version(dists[0])
    except metadata.PackageNotFoundError:
        return None
