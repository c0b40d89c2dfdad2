import inspect

import pluggy
import pytest

from bench import hookspecs
from bench.hookspecs import hookimpl
from bench.plugins import make_plugin_manager


def hook_functions():
    return [f for name, f in inspect.getmembers(hookspecs, inspect.isfunction) if name.startswith("bench_")]


def test_there_are_the_hooks_of_the_architecture():
    names = {f.__name__ for f in hook_functions()}
    assert names == {"bench_register_suites", "bench_register_distillers", "bench_register_metrics",
                     "bench_register_models", "bench_register_presets", "bench_run_finished",
                     "bench_machine_info"}


@pytest.mark.parametrize("hook", hook_functions(), ids=lambda f: f.__name__)
def test_every_hook_says_when_it_is_called_and_what_it_returns(hook):
    doc = inspect.getdoc(hook) or ""
    assert "Called" in doc, f"{hook.__name__} does not say when it is called"
    assert "Returns" in doc, f"{hook.__name__} does not say what it returns"


def test_a_misspelled_hookimpl_fails_at_start_up():
    class Typo:
        @hookimpl
        def bench_register_distiller(self, register):  # missing the final "s"
            pass

    pm = make_plugin_manager(load_entry_points=False)
    pm.register(Typo())
    with pytest.raises(pluggy.PluginValidationError):
        pm.check_pending()
