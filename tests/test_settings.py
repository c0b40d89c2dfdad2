"""Settings: a preset changed by --teacher/--student/--set or a TOML file is a setting of its own,
typed and checked before anything trains, and never mixed with the named preset's runs."""

import dataclasses
import json

import pytest

from bench.cli import main
from bench.errors import BenchError
from bench.hookspecs import hookimpl
from bench.plugins import Registry, make_plugin_manager, set_registry
from bench.presets import PRESETS
from bench.results.retime import _teacher
from bench.settings import parse_sets, read_preset_file, resolve_setting


def setting(**kw):
    return resolve_setting(kw.pop("preset", "cpu"), kw.pop("suite", "amazon"), **kw)


def test_a_change_names_a_setting_that_keeps_its_name_across_suites():
    """Applied after the suite's overrides: on MNLI (whose own student budget is 5 epochs) too, 10 is what runs."""
    amazon = setting(sets=parse_sets(["student_train.epochs=10", "max_len=64"]))
    mnli = setting(suite="mnli", sets=parse_sets(["max_len=64", "student_train.epochs=10"]))
    assert amazon.name == mnli.name and amazon.name.startswith("cpu[max_len=64,student_train.epochs=10]-")
    assert len(amazon.name.rsplit("-", 1)[1]) == 8
    assert (amazon.student_train.epochs, mnli.student_train.epochs, amazon.max_len) == (10, 10, 64)
    assert amazon.max_train_rows == 800 and mnli.max_train_rows is None  # the rest as the suite has it
    assert amazon.suite_overrides == {} and amazon.source == "built in, changed on the command line"
    assert amazon.student_train.lr == PRESETS["cpu"].student_train.lr


def test_a_default_given_is_no_change():
    assert setting(sets={"student_train.epochs": 5}) is PRESETS["cpu"]
    assert setting(sets=parse_sets(["max_train_rows=none"]), suite="mnli") is PRESETS["cpu"]  # MNLI's own
    assert setting(sets=parse_sets(["max_train_rows=none"])).name.startswith("cpu[max_train_rows=None]-")
    assert setting(student_layers=(0, 2, 4)) is PRESETS["cpu"]


def test_values_are_typed_against_their_fields():
    p = setting(sets=parse_sets(["student.layers=1,3", "student_train.lr=3e-5", "teacher_train.max_steps=7",
                                 "seeds=[1,2]", "student_train.warmup_ratio=0"]))
    assert p.student.layers == (1, 3) and p.student_train.lr == 3e-5 and p.teacher_train.max_steps == 7
    assert p.seeds == (1, 2) and p.student_train.warmup_ratio == 0.0 and isinstance(p.student_train.warmup_ratio,
                                                                                    float)


def test_models_on_the_command_line():
    p = setting(preset="smoke", teacher="random:bert-base", student="pkg:all-MiniLM-L6-v2", student_layers=(0, 5))
    assert p.teacher == PRESETS["paper-shapes"].teacher  # random:bert-base, written as the presets write it
    assert (p.student.ref, p.student.init, p.student.layers) == ("pkg:all-MiniLM-L6-v2", "truncate", (0, 5))
    assert p.name.startswith("smoke[teacher=random:bert-base,student=pkg:all-MiniLM-L6-v2@0,5]-")
    cut = setting(student_layers=(1, 3, 5))
    assert cut.name.startswith("cpu[student-layers=1,3,5]-") and cut.student.init == "truncate"


@pytest.mark.parametrize("item, what, hint", [
    ("student_train.epoch=3", "--set student_train.epoch: TrainConfig has no field 'epoch'; did you mean "
                              "'student_train.epochs'?", "its fields: student_train.epochs, "),
    ("max_lenn=3", "--set max_lenn: Preset has no field 'max_lenn'; did you mean 'max_len'?", "its fields: "),
    ("student_train.epochs=ten", '--set student_train.epochs: "ten" is not a whole number',
     "give --set student_train.epochs a whole number"),
    ("student_train.lr=fast", '--set student_train.lr: "fast" is not a number such as 1e-4', "give "),
    ("student.layers=0,x", '--set student.layers: "0,x" is not a list such as 0,2,4', "give "),
    ("student_train=3", "--set student_train: student_train is a group of fields",
     "set one of them: student_train.epochs, "),
    ("max_len.x=3", "--set max_len.x: max_len is a single value, not a group of fields", "write max_len=VALUE"),
    ("suite_overrides.mnli=3", "--set suite_overrides.mnli: suite_overrides cannot be changed this way", "set "),
    ("latency.repeats=3", "--set latency.repeats: latency needs at least 20 timed repeats", "give a value"),
])
def test_a_bad_change_gets_two_lines(item, what, hint):
    with pytest.raises(BenchError) as err:
        setting(sets=parse_sets([item]))
    assert err.value.what.startswith(what) and err.value.hint.startswith(hint)


def test_budgets_are_checked():
    with pytest.raises(BenchError, match=r"student_train.epochs is 0") as err:
        setting(sets={"student_train.epochs": 0})
    assert err.value.hint == "give student_train.epochs >= 1"
    with pytest.raises(BenchError, match="is not FIELD=VALUE"):
        parse_sets(["student_train.epochs"])


TOML = """\
# a setting of one's own
base = "cpu"
name = "long students"
max_len = 96

[student_train]
epochs = 8

[suite_overrides.mnli.student_train]
epochs = 4
"""


def test_a_preset_file(tmp_path):
    path = tmp_path / "long.toml"
    path.write_text(TOML)
    spec = read_preset_file(path)
    assert spec.base == "cpu" and spec.changes == {"max_len": 96, "student_train.epochs": 8}
    assert spec.suite_changes == {"mnli": {"student_train.epochs": 4}}
    assert spec.lines == {"base": 2, "name": 3, "max_len": 4, "student_train.epochs": 7,
                          "suite_overrides.mnli.student_train.epochs": 10}
    amazon, mnli = (setting(preset=str(path), suite=s) for s in ("amazon", "mnli"))
    assert amazon.name == mnli.name and amazon.name.startswith("long_students-") and "[" not in amazon.name
    assert (amazon.student_train.epochs, mnli.student_train.epochs, amazon.max_len) == (8, 4, 96)
    assert amazon.source == f"file {path}"
    # the command line on top of the file; a file that changes nothing is still a setting of its own
    more = setting(preset=str(path), sets={"max_len": 32})
    assert more.name.startswith("long_students[max_len=32]-") and more.max_len == 32
    path.write_text('base = "cpu"\n')
    assert setting(preset=str(path)).name.startswith("long-") and setting(preset=str(path)).max_len == 128


@pytest.mark.parametrize("text, what, hint", [
    ('base = "cpu"\n[student_train]\nepochs = = 3\n', "{path}:3: not valid TOML", "fix the syntax"),
    ('base = "cpu"\n\n[student_train]\nepochs = "many"\n', '{path}:4: student_train.epochs: "many" is not a whole',
     "give "),
    ('base = "cpu"\nmax_lenn = 3\n', "{path}:2: max_lenn: Preset has no field 'max_lenn'; did you mean 'max_len'?",
     "its fields"),
    ('name = "x"\n', "{path}: no base preset", "name the preset this file changes"),
    ('base = "cpuu"\n', "unknown preset 'cpuu'; did you mean 'cpu'?", "see `python -m bench ls presets`"),
])
def test_a_bad_preset_file_names_file_and_line(tmp_path, text, what, hint):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(BenchError) as err:
        setting(preset=str(path))
    assert err.value.what.startswith(what.format(path=path)) and err.value.hint.startswith(hint)
    with pytest.raises(BenchError, match="cannot read the preset file"):
        setting(preset=str(tmp_path / "missing.toml"))


class PresetPlugin:
    @hookimpl
    def bench_register_presets(self, register):
        register(dataclasses.replace(PRESETS["smoke"], name="lab-smoke", description="the lab's smoke"))


def test_a_plugin_ships_presets(capsys):
    pm = make_plugin_manager(load_entry_points=False)
    pm.register(PresetPlugin(), name="lab")
    registry = Registry.build(pm)
    assert registry.presets["lab-smoke"].source == "plugin lab"
    assert resolve_setting("lab-smoke", "amazon", registry=registry) is registry.presets["lab-smoke"]
    set_registry(registry)
    assert main(["ls", "presets"]) == 0
    out = capsys.readouterr().out
    assert "lab-smoke [plugin lab]: the lab's smoke" in out and "cpu (default) [built in]: " in out

    class Clash:
        @hookimpl
        def bench_register_presets(self, register):
            register(PRESETS["cpu"])

    pm = make_plugin_manager(load_entry_points=False)
    pm.register(Clash(), name="clash")
    with pytest.raises(BenchError, match="registered preset 'cpu', a built-in preset's name"):
        Registry.build(pm)


def test_a_changed_setting_is_stored_and_reported_apart(tmp_path, data_dir, capsys):
    """Two runs of kd on books, the smoke preset plain and with one more student epoch: two result files under two
    settings, two tables, never averaged; the changed run records the preset as it ran, and retime finds its
    teacher-less runs' teacher there (no preset bears its name)."""
    base = ["run", "--methods", "kd,finetune", "--suite", "amazon", "--domains", "books", "--preset", "smoke",
            "--results-dir", str(tmp_path), "--data-dir", str(data_dir)]
    assert main(base) == 0
    assert main(base + ["--set", "student_train.epochs=3", "--teacher", "random:tiny"]) == 0
    capsys.readouterr()
    records = {p.parent.parent.parent.name: json.loads(p.read_text())
               for p in tmp_path.glob("amazon/*/kd/books/seed1.json")}
    changed = next(k for k in records if k != "smoke")
    assert sorted(records) == ["smoke", changed] and changed.startswith("smoke[student_train.epochs=3]-")
    assert records[changed]["train"]["epochs"] == 3 and records["smoke"]["train"]["epochs"] == 2
    assert records[changed]["train"]["steps"] == 18 and records["smoke"]["train"]["steps"] == 12
    assert records[changed]["setting"]["student_train"]["epochs"] == 3
    assert records[changed]["setting"]["source"] == "built in, changed on the command line"
    assert records[changed]["teacher"]["key"] == records["smoke"]["teacher"]["key"]  # one teacher serves both
    finetune = json.loads(next(tmp_path.glob(f"amazon/{changed.replace('[', '[[]')}/finetune/books/seed1.json"))
                          .read_text())
    assert _teacher(finetune).ref == "random:tiny"
    assert main(["report", "--results-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "## amazon (smoke preset)" in out and f"## amazon ({changed} preset)" in out
