import pytest
import torch.nn.functional as F

from bench.api import Distiller
from bench.cli import main
from bench.errors import BenchError
from bench.hookspecs import hookimpl
from bench.plugins import DEFAULT_PLUGINS, Registry, get_registry, make_plugin_manager, set_registry


class Echo(Distiller):
    name = "echo-kd"
    description = "a third-party test distiller"
    teacher_kind = None

    def loss(self, batch, student_out, teacher_out, stage):
        return {"ce": F.cross_entropy(student_out.logits, batch.labels)}


class OutsidePlugin:
    @hookimpl
    def bench_register_distillers(self, register):
        register(Echo)


def registry_with(*plugins) -> Registry:
    pm = make_plugin_manager(load_entry_points=False)
    for plugin in plugins:
        pm.register(plugin)
    return Registry.build(pm)


def test_default_plugins_register_the_built_ins():
    reg = get_registry()
    assert set(reg.distillers) >= {"finetune", "kd"}
    assert "amazon" in reg.suites
    assert set(reg.metrics) >= {"accuracy", "params"}
    assert set(reg.models) >= {"pkg", "hf", "path"}
    assert {name for name, _ in reg.pm.list_name_plugin()} == set(DEFAULT_PLUGINS)


def test_an_outside_plugin_is_listed(capsys):
    set_registry(registry_with(OutsidePlugin()))
    assert main(["ls", "distillers"]) == 0
    out = capsys.readouterr().out
    assert "echo-kd" in out and "a third-party test distiller" in out
    assert "kd " in out and "finetune" in out


def test_a_name_registered_twice_names_both_plugins():
    class Again:
        @hookimpl
        def bench_register_distillers(self, register):
            register(Echo)

    with pytest.raises(BenchError, match="registered twice"):
        registry_with(OutsidePlugin(), Again())


def test_registering_the_wrong_thing_is_refused():
    class Wrong:
        @hookimpl
        def bench_register_distillers(self, register):
            register(Echo())  # an instance, not the class

    with pytest.raises(BenchError, match="subclass of bench.api.Distiller"):
        registry_with(Wrong())


def test_bench_load_plugins_limits_what_loads(monkeypatch):
    monkeypatch.setenv("BENCH_LOAD_PLUGINS", "bench_plugins.distillers.kd,bench_plugins.suites.amazon")
    reg = Registry.build(make_plugin_manager(load_entry_points=False))
    assert set(reg.distillers) == {"kd"}
    assert set(reg.suites) == {"amazon"}
    assert reg.metrics == {}


def test_unknown_names_suggest_the_closest():
    reg = get_registry()
    with pytest.raises(BenchError, match=r"unknown distiller 'kdd'; did you mean 'kd'\?"):
        reg.distiller("kdd")
    with pytest.raises(BenchError, match=r"unknown suite 'amazn'; did you mean 'amazon'\?"):
        reg.suite("amazn")


def test_options_are_checked_when_the_method_is_built():
    kd = get_registry().distiller("kd")
    assert kd({"temperature": 4.0}).options.temperature == 4.0
    with pytest.raises(BenchError, match="did you mean 'alpha'"):
        kd({"alpah": 0.3})
    with pytest.raises(BenchError, match="alpha must lie in"):
        kd({"alpha": 1.5})


def test_entry_point_plugins_are_discovered(tmp_path, monkeypatch):
    """A package installed with a `bench` entry point loads like a third party's would."""
    (tmp_path / "outside_kd.py").write_text(
        "import torch.nn.functional as F\n"
        "from bench.api import Distiller\n"
        "from bench.hookspecs import hookimpl\n\n"
        "class OutsideKD(Distiller):\n"
        "    name = 'outside-kd'\n"
        "    description = 'installed through an entry point'\n"
        "    def loss(self, batch, student_out, teacher_out, stage):\n"
        "        return {'ce': F.cross_entropy(student_out.logits, batch.labels)}\n\n"
        "@hookimpl\n"
        "def bench_register_distillers(register):\n"
        "    register(OutsideKD)\n")
    dist = tmp_path / "outside_kd-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: outside-kd\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[bench]\noutside_kd = outside_kd\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    reg = Registry.build(make_plugin_manager(load_entry_points=True))
    assert reg.owner("distiller", "outside-kd") == "outside_kd"
    monkeypatch.setenv("BENCH_LOAD_PLUGINS", "bench_plugins.distillers.kd")
    assert "outside-kd" not in Registry.build(make_plugin_manager(load_entry_points=True)).distillers


def test_a_broken_entry_point_names_itself(tmp_path, monkeypatch):
    (tmp_path / "broken_plugin.py").write_text("raise RuntimeError('boom')\n")
    dist = tmp_path / "broken_plugin-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[bench]\nbroken = broken_plugin\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(BenchError, match="plugin 'broken' .* failed to import: boom"):
        make_plugin_manager(load_entry_points=True)
