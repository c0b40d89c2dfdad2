"""The smoke preset through the CLI, on the real Amazon files."""

import json
import logging
from pathlib import Path

import pytest

from bench.cli import main
from bench.results.significance import decode_labels


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory, data_dir):
    results = tmp_path_factory.mktemp("results")
    store = tmp_path_factory.mktemp("store")
    mp = pytest.MonkeyPatch()
    mp.setenv("BENCH_CACHE_DIR", str(store))
    code = main(["run", "--methods", "kd,finetune", "--suite", "amazon", "--preset", "smoke",
                 "--results-dir", str(results), "--data-dir", str(data_dir)])
    mp.undo()
    return code, results, store


@pytest.fixture
def same_store(smoke_run, monkeypatch):
    """Later runs see the teacher store the smoke run filled."""
    monkeypatch.setenv("BENCH_CACHE_DIR", str(smoke_run[2]))


def read_all(results):
    return {p.relative_to(results).as_posix(): json.loads(p.read_text()) for p in results.rglob("*.json")}


def test_one_result_file_per_method_and_domain(smoke_run):
    code, results, _ = smoke_run
    assert code == 0
    files = read_all(results)
    assert sorted(files) == sorted(f"amazon/smoke/{m}/{d}/seed1.json" for m in ("kd", "finetune")
                                   for d in ("books", "dvd", "electronics", "kitchen"))
    kd = files["amazon/smoke/kd/books/seed1.json"]
    assert kd["suite"]["sizes"] == {"train": 48, "dev": 16, "test": 16}
    assert kd["method"] == {"name": "kd", "label": "kd", "plugin": "bench_plugins.distillers.kd",
                            "config": {"temperature": 2.0, "alpha": 0.5}, "student_kind": "single", "layer_map": None}
    assert kd["suite"]["trained_on"] == ["books"] and kd["teacher"]["kind"] == "single"
    assert kd["teacher"]["ref"] == "random:tiny" and len(kd["teacher"]["key"]) == 20
    assert 0.0 <= kd["metrics"]["accuracy"] <= 1.0
    assert kd["metrics"]["params"]["total"] > kd["metrics"]["params"]["non_embedding"] > 0
    assert kd["train"]["steps"] == 12 and kd["train"]["selected_step"] in (3, 6, 9, 12)
    assert kd["machine"]["world_size"] == 1
    assert files["amazon/smoke/finetune/books/seed1.json"]["teacher"] is None


def test_a_result_keeps_its_test_predictions_and_whether_it_converged(smoke_run):
    """The predictions, in the test set's row order, give the recorded accuracy; convergence is judged on the
    run's dev history (12 steps, evaluated every 3: step 9 against step 12)."""
    for record in read_all(smoke_run[1]).values():
        preds, labels = (decode_labels(record["test"][k]) for k in ("predictions", "labels"))
        assert len(preds) == len(labels) == record["suite"]["sizes"]["test"]
        assert sum(p == y for p, y in zip(preds, labels)) / len(labels) == record["metrics"]["accuracy"]
        history = record["train"]["history"]
        assert [h["step"] for h in history] == [3, 6, 9, 12]
        gain = history[3]["dev_accuracy"] - history[2]["dev_accuracy"]
        assert record["train"]["converged"] is (gain < 0.01)
        assert record["train"]["last_quarter_gain"] == round(100 * gain, 2)


def test_a_run_writes_where_git_ignores_unless_told(tmp_path):
    """A fresh clone's `bench run` trains instead of finding the committed comparison's results."""
    import subprocess

    from bench.results.records import DEFAULT_RESULTS_DIR

    repo = Path(__file__).resolve().parent.parent
    if not (repo / ".git").exists():
        pytest.skip("not a git checkout")
    ignored = subprocess.run(["git", "check-ignore", "-q", f"{DEFAULT_RESULTS_DIR}/mnli/cpu/kd/fiction/seed1.json"],
                             cwd=repo)
    assert ignored.returncode == 0
    assert not DEFAULT_RESULTS_DIR.startswith("results/")


def test_student_layers_make_a_setting_of_their_own(tmp_path, data_dir, capsys):
    """`--student-layers` cuts the student elsewhere: the runs are planned under their own preset name, with the
    same teachers (a teacher does not depend on its students)."""
    argv = ["run", "--methods", "kd", "--suite", "amazon", "--domains", "books", "--dry-run",
            "--results-dir", str(tmp_path), "--data-dir", str(data_dir)]
    assert main(argv) == 0
    plain = capsys.readouterr().out.splitlines()
    assert main(argv + ["--student-layers", "1,3,5"]) == 0
    cut = capsys.readouterr().out.splitlines()
    assert plain[0].endswith("student pkg:all-MiniLM-L6-v2 layers 0,2,4")
    assert cut[0].startswith("preset cpu[student-layers=1,3,5]-") and cut[0].endswith("layers 1,3,5")
    assert plain[2:] == cut[2:]  # the same teacher key, the same runs
    with pytest.raises(SystemExit) as bad:
        main(argv + ["--student-layers", "0,x"])
    assert bad.value.code == 2 and "is not a list of layer numbers" in capsys.readouterr().err


def test_report_shows_both_methods_and_all_domains(smoke_run, capsys):
    _, results, _ = smoke_run
    assert main(["report", "--results-dir", str(results)]) == 0
    out = capsys.readouterr().out
    header = next(line for line in out.splitlines() if line.startswith("| method"))
    for column in ("books", "dvd", "electronics", "kitchen", "avg", "params"):
        assert column in header
    rows = [line.split("|")[1].strip() for line in out.splitlines()[4:] if line.startswith("|")]
    assert rows == ["teacher", "finetune", "kd"]  # the teacher, then methods alphabetically


def test_a_rerun_skips_finished_runs_and_reuses_teachers(smoke_run, same_store, data_dir, caplog):
    _, results, _ = smoke_run
    before = {p: p.stat().st_mtime_ns for p in results.rglob("*.json")}
    caplog.set_level(logging.INFO)
    assert main(["run", "--methods", "kd", "--suite", "amazon", "--preset", "smoke", "--domains", "books",
                 "--results-dir", str(results), "--data-dir", str(data_dir)]) == 0
    assert "result exists" in caplog.text
    assert {p: p.stat().st_mtime_ns for p in results.rglob("*.json")} == before
    caplog.clear()
    assert main(["run", "--methods", "kd", "--suite", "amazon", "--preset", "smoke", "--domains", "books",
                 "--seeds", "2", "--results-dir", str(results), "--data-dir", str(data_dir)]) == 0
    assert "reusing teacher" in caplog.text and "training teacher" not in caplog.text
    files = read_all(results)
    assert files["amazon/smoke/kd/books/seed2.json"]["teacher"]["key"] == \
        files["amazon/smoke/kd/books/seed1.json"]["teacher"]["key"]


def test_overwrite_repeats_a_run_exactly(smoke_run, same_store, data_dir):
    _, results, _ = smoke_run
    path = results / "amazon/smoke/finetune/dvd/seed1.json"
    before = json.loads(path.read_text())
    assert main(["run", "--methods", "finetune", "--suite", "amazon", "--preset", "smoke", "--domains", "dvd",
                 "--results-dir", str(results), "--data-dir", str(data_dir), "--overwrite"]) == 0
    after = json.loads(path.read_text())
    assert after["created"] >= before["created"]
    assert after["train"]["history"] == before["train"]["history"]  # CPU runs repeat exactly
    for metric in ("accuracy", "macro_f1", "params", "compression"):  # timings differ, these may not
        assert after["metrics"][metric] == before["metrics"][metric]


@pytest.mark.parametrize("argv,message", [
    (["--methods", "kdd", "--suite", "amazon"], "unknown distiller 'kdd'; did you mean 'kd'?"),
    (["--methods", "kd", "--suite", "amazn"], "unknown suite 'amazn'; did you mean 'amazon'?"),
    (["--methods", "kd", "--suite", "amazon", "--preset", "smok"], "unknown preset 'smok'; did you mean 'smoke'?"),
    (["--methods", "kd", "--suite", "amazon", "--domains", "book"], "did you mean 'books'?"),
    (["--methods", "kd", "--suite", "amazon", "--option", "kd.alpah=0.3"],
     "unknown option of kd: 'alpah'; did you mean 'alpha'?"),
])
def test_unknown_names_exit_2_with_a_suggestion(argv, message, capsys, data_dir):
    assert main(["run", *argv, "--data-dir", str(data_dir)]) == 2
    err = capsys.readouterr().err
    assert err.splitlines()[0] == f"error: {message}" or message in err.splitlines()[0]
    assert len(err.splitlines()) == 2 and err.splitlines()[1].startswith("  ")  # what, then what to do
    assert "Traceback" not in err


def test_observer_hooks_see_each_result_and_add_machine_facts(tmp_path, data_dir):
    from bench.hookspecs import hookimpl
    from bench.plugins import Registry, make_plugin_manager, set_registry

    seen = []

    class Observer:
        @hookimpl
        def bench_run_finished(self, result):
            seen.append((result["method"]["name"], result["suite"]["domain"]))

        @hookimpl
        def bench_machine_info(self, info):
            info["cluster"] = "lab-a"

    pm = make_plugin_manager(load_entry_points=False)
    pm.register(Observer())
    set_registry(Registry.build(pm))
    assert main(["run", "--methods", "finetune", "--suite", "amazon", "--preset", "smoke", "--domains",
                 "dvd", "--results-dir", str(tmp_path), "--data-dir", str(data_dir)]) == 0
    assert seen == [("finetune", "dvd")]
    record = json.loads((tmp_path / "amazon/smoke/finetune/dvd/seed1.json").read_text())
    assert record["machine"]["cluster"] == "lab-a"
    assert record["plugin_versions"] == {"bench_plugins.distillers.finetune": "0.1.0"}


def test_a_teacher_does_not_depend_on_what_ran_before(tmp_path, data_dir, monkeypatch):
    """Same identity, same weights: whether a student ran first must not change the teacher."""
    import torch

    weights = []
    for i, methods in enumerate(("kd", "finetune,kd")):
        monkeypatch.setenv("BENCH_CACHE_DIR", str(tmp_path / f"store{i}"))
        assert main(["run", "--methods", methods, "--suite", "amazon", "--preset", "smoke", "--domains",
                     "books", "--results-dir", str(tmp_path / f"r{i}"), "--data-dir", str(data_dir)]) == 0
        (folder,) = [f for f in (tmp_path / f"store{i}" / "teachers").iterdir() if not f.name.startswith(".")]
        from safetensors.torch import load_file

        weights.append(load_file(str(folder / "model.safetensors")))
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


def test_mnli_smoke_runs_every_genre(tmp_path, data_dir):
    assert main(["run", "--methods", "kd", "--suite", "mnli", "--preset", "smoke",
                 "--results-dir", str(tmp_path), "--data-dir", str(data_dir)]) == 0
    files = read_all(tmp_path)
    assert sorted(files) == [f"mnli/smoke/kd/{g}/seed1.json"
                             for g in ("fiction", "government", "slate", "telephone", "travel")]
    fiction = files["mnli/smoke/kd/fiction/seed1.json"]["suite"]
    assert fiction["left_out"] == {"dropped_no_consensus": 0, "skipped_bad_rows": 0}
    assert fiction["version"] == "1" and len(fiction["fingerprint"]) == 16


def test_train_ratio_keeps_the_first_rows_and_is_recorded(tmp_path, data_dir, capsys):
    argv = ["run", "--methods", "finetune", "--suite", "mnli", "--preset", "smoke", "--domains", "fiction",
            "--results-dir", str(tmp_path), "--data-dir", str(data_dir)]
    assert main(argv + ["--train-ratio", "0.01"]) == 0
    assert "0.01 of train" in capsys.readouterr().out
    record = read_all(tmp_path)["mnli-r0.01/smoke/finetune/fiction/seed1.json"]
    assert record["suite"]["train_ratio"] == 0.01
    assert record["suite"]["sizes"]["train"] == 34  # int(0.01 * 3452), under the smoke cap of 48
    assert main(argv) == 0  # the full-data run is another run, stored apart
    assert "mnli/smoke/finetune/fiction/seed1.json" in read_all(tmp_path)
    with pytest.raises(SystemExit) as exit_info:  # argparse: usage, then the reason
        main(argv + ["--train-ratio", "1.5"])
    assert exit_info.value.code == 2


def test_kd_with_a_teacher_of_another_vocabulary(tmp_path, data_dir, packaged_cache, monkeypatch, capsys):
    """A teacher with all-mpnet-base-v2's tokenizer (ids shifted, <s> </s> <pad>) and a BERT-vocab
    student: data is tokenised once by the student; the teacher is fine-tuned and queried on the
    mapped ids, and its key records that."""
    from dataclasses import replace

    from transformers import AutoModel, AutoTokenizer, MPNetConfig

    import bench.presets
    from bench.models.classifier import ModelSpec
    from bench.models.packaged import model_dir

    monkeypatch.setenv("BENCH_CACHE_DIR", str(packaged_cache))
    tiny = tmp_path / "tiny-mpnet"
    AutoModel.from_config(MPNetConfig(vocab_size=30527, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                      intermediate_size=64)).save_pretrained(tiny)
    AutoTokenizer.from_pretrained(model_dir("all-mpnet-base-v2")).save_pretrained(tiny)
    preset = replace(bench.presets.PRESETS["smoke"], name="smoke-mpnet", teacher=ModelSpec(f"path:{tiny}"))
    monkeypatch.setitem(bench.presets.PRESETS, "smoke-mpnet", preset)
    assert main(["run", "--methods", "kd", "--suite", "mnli", "--preset", "smoke-mpnet", "--domains", "travel",
                 "--results-dir", str(tmp_path / "r"), "--data-dir", str(data_dir)]) == 0
    record = read_all(tmp_path / "r")["mnli/smoke-mpnet/kd/travel/seed1.json"]
    assert record["teacher"]["ref"] == f"path:{tiny}"
    stored = json.loads((packaged_cache / "teachers" / record["teacher"]["key"] / "teacher.json").read_text())
    assert stored["identity"]["input_vocab"]["specials"]["cls"] == ["[CLS]", "<s>"]
    assert record["teacher"]["train_seconds"] == stored["wall_seconds"] > 0  # the report's teacher training
    assert 0.0 <= record["metrics"]["accuracy"] <= 1.0
    capsys.readouterr()  # the plan names the mapped teacher's key, so it is reused, not trained again
    assert main(["run", "--methods", "kd", "--suite", "mnli", "--preset", "smoke-mpnet", "--domains", "travel",
                 "--results-dir", str(tmp_path / "r2"), "--data-dir", str(data_dir), "--dry-run"]) == 0
    assert f"travel: teacher {record['teacher']['key']} reused from the store" in capsys.readouterr().out


def test_method_options_make_their_own_runs_and_rows(tmp_path, data_dir, capsys):
    argv = ["run", "--methods", "kd", "--suite", "amazon", "--preset", "smoke", "--domains", "books",
            "--results-dir", str(tmp_path), "--data-dir", str(data_dir)]
    assert main(argv) == 0
    assert main(argv + ["--option", "kd.temperature=4", "--option", "kd.alpha=0.9"]) == 0
    assert main(argv + ["--option", "kd.temperature=2"]) == 0  # the default: the plain kd run, skipped
    files = read_all(tmp_path)
    assert len(files) == 2
    tuned = files["amazon/smoke/kd[alpha=0.9,temperature=4.0]/books/seed1.json"]["method"]
    assert tuned["config"] == {"temperature": 4.0, "alpha": 0.9} and tuned["name"] == "kd"
    assert files["amazon/smoke/kd/books/seed1.json"]["method"]["config"] == {"temperature": 2.0, "alpha": 0.5}
    capsys.readouterr()
    assert main(["report", "--results-dir", str(tmp_path)]) == 0
    rows = [line.split("|")[1].strip() for line in capsys.readouterr().out.splitlines()[4:] if line.startswith("|")]
    assert rows == ["teacher", "kd", "kd[alpha=0.9,temperature=4.0]"]


@pytest.mark.parametrize("option,message", [
    ("kd.temprature=4", "unknown option of kd: 'temprature'; did you mean 'temperature'?"),
    ("kd.temperature=hot", "kd option temperature must be a float, got 'hot'"),
    ("pkd.beta=1", "option 'pkd.beta=1' names method 'pkd', which this run does not include"),
    ("temperature=4", "option 'temperature=4' is not METHOD.KEY=VALUE"),
])
def test_bad_method_options_stop_before_anything_runs(option, message, tmp_path, data_dir, capsys):
    assert main(["run", "--methods", "kd", "--suite", "amazon", "--preset", "smoke", "--option", option,
                 "--results-dir", str(tmp_path), "--data-dir", str(data_dir)]) == 2
    assert capsys.readouterr().err.splitlines()[0] == f"error: {message}"
    assert not list(tmp_path.iterdir())
