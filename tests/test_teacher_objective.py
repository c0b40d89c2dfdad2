"""A method's own teacher objective (Meta-KD's meta-teacher): trained by the harness, stored under
its own key with the objective's modules and tensors, reused, and handed back to the distiller."""

import json
import logging
import math

import pytest
from safetensors.torch import load_file

from bench.api import DataConfig
from bench.cli import main
from bench.grid.runner import Runner
from bench.grid.spec import Grid
from bench.plugins import get_registry
from bench.presets import get_preset
from bench.teachers.store import TeacherStore
from bench.teachers.supply import joint_teacher_identity

ARGS = ["--suite", "amazon", "--preset", "smoke", "--domains", "books,dvd"]


@pytest.fixture
def metakd_run(tmp_path, data_dir, caplog):
    caplog.set_level(logging.INFO)
    results = tmp_path / "results"
    assert main(["run", "--methods", "metakd", *ARGS, "--data-dir", str(data_dir),
                 "--results-dir", str(results)]) == 0
    return results


def test_the_meta_teacher_is_stored_with_its_scores_and_domain_head(metakd_run):
    records = [json.loads(p.read_text()) for p in sorted(metakd_run.glob("amazon/smoke/metakd/*/seed1.json"))]
    assert [r["suite"]["domain"] for r in records] == ["books", "dvd"]
    teacher = records[0]["teacher"]
    assert teacher["kind"] == "mix" and teacher["objective"] == "meta-teacher"
    assert records[1]["teacher"]["key"] == teacher["key"]  # one meta-teacher for both students
    folder = TeacherStore().path(teacher["key"])
    identity = json.loads((folder / "teacher.json").read_text())["identity"]
    assert identity["objective"] == {"name": "meta-teacher", "config": {"domain_loss_weight": 0.5}}
    extras = load_file(str(folder / "extras.safetensors"))
    rows = records[0]["suite"]["sizes"]["train"]
    for domain in ("books", "dvd"):
        scores = extras[f"tensors.prototype_scores.{domain}"]
        assert scores.shape == (rows,) and ((scores > -1) & (scores <= 1)).all()  # means of two cosines
    assert {k.split(".")[1] for k in extras if k.startswith("modules.")} == {"representation", "classifier"}
    history = records[0]["train"]["history"]  # two stages of equal length, each evaluated on dev
    assert records[0]["train"]["steps"] == 2 * history[-1]["step"] and len(history) % 2 == 0


def test_a_second_run_reuses_the_meta_teacher(metakd_run, data_dir, caplog):
    caplog.clear()
    assert main(["run", "--methods", "metakd", *ARGS, "--data-dir", str(data_dir),
                 "--results-dir", str(metakd_run), "--overwrite"]) == 0
    assert "reusing teacher" in caplog.text and "training teacher" not in caplog.text


def test_the_report_names_the_meta_teacher_row(metakd_run, data_dir, capsys):
    assert main(["run", "--methods", "kd", *ARGS, "--data-dir", str(data_dir), "--results-dir", str(metakd_run)]) == 0
    capsys.readouterr()
    assert main(["report", "--results-dir", str(metakd_run)]) == 0
    rows = [line.split("|")[1].strip() for line in capsys.readouterr().out.splitlines() if line.startswith("| ")]
    assert "teacher (meta-teacher)" in rows and "teacher (single)" in rows


def test_a_plain_teacher_key_does_not_change_and_the_objective_changes_it(data_dir):
    registry = get_registry()
    metakd = registry.distiller("metakd")
    grid = Grid(suite=registry.suite("amazon"), preset=get_preset("smoke"), methods=[metakd], domains=["books", "dvd"],
                seeds=[1], data=DataConfig(str(data_dir)), results_dir="unused")
    runner = Runner(grid, registry)
    data = {d: runner.ctx.data(d) for d in grid.domains}
    objective = grid.distiller(metakd).teacher_objective()
    plain, meta = joint_teacher_identity(grid, "mix", data), joint_teacher_identity(grid, "mix", data, objective)
    assert "objective" not in plain
    assert {k: v for k, v in meta.items() if k != "objective"} == plain


@pytest.mark.parametrize("suite,domains", [("amazon", "books,dvd"), ("mnli", "fiction,travel")])
def test_metakd_runs_the_smoke_preset_on_both_suites(suite, domains, tmp_path, data_dir):
    assert main(["run", "--methods", "metakd", "--suite", suite, "--preset", "smoke", "--domains", domains,
                 "--data-dir", str(data_dir), "--results-dir", str(tmp_path)]) == 0
    for domain in domains.split(","):
        record = json.loads((tmp_path / suite / "smoke" / "metakd" / domain / "seed1.json").read_text())
        history = record["train"]["history"]
        assert {"hidden", "attention", "domain"} <= set(history[0]) and "prediction" not in history[0]
        assert "prediction" in history[-1] and all(math.isfinite(h["loss"]) for h in history)


def test_metakd_on_one_domain_stops_before_any_teacher_trains(tmp_path, data_dir, capsys, caplog):
    caplog.set_level(logging.INFO)
    assert main(["run", "--methods", "metakd", "--suite", "amazon", "--preset", "smoke", "--domains", "books",
                 "--data-dir", str(data_dir), "--results-dir", str(tmp_path)]) == 2
    assert "metakd learns across domains" in capsys.readouterr().err
    assert "training teacher" not in caplog.text
