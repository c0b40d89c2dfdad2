"""The teacher store through the CLI: train, list, reuse, remove; the digest of each teacher's weights;
and the dry-run plan."""

import json
import logging

import pytest
import torch

import bench.models.classifier
from bench.cli import main
from bench.teachers.store import TeacherStore, get_or_train_teacher, teacher_key


def test_teacher_train_ls_reuse_rm(tmp_path, data_dir, capsys, caplog):
    argv = ["teacher", "train", "--suite", "amazon", "--preset", "smoke", "--domains", "books,dvd",
            "--data-dir", str(data_dir)]
    assert main(argv) == 0
    trained = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0] for line in trained] == ["books", "dvd"]
    keys = [line.split()[2] for line in trained]

    assert main(["teacher", "ls"]) == 0
    listing = capsys.readouterr().out
    assert all(k in listing for k in keys) and "random:tiny" in listing

    caplog.set_level(logging.INFO)
    assert main(argv) == 0
    assert caplog.text.count("reusing teacher") == 2 and "training teacher" not in caplog.text
    assert capsys.readouterr().out.splitlines() == trained  # the same keys and accuracies

    assert main(["teacher", "rm", keys[0][:8]]) == 0
    assert f"removed teacher {keys[0]} and 0 cache(s) of its outputs, 0.0 MB" in capsys.readouterr().out
    assert main(["teacher", "ls"]) == 0
    listing = capsys.readouterr().out
    assert keys[0] not in listing and keys[1] in listing
    assert main(["teacher", "rm", "zzzz"]) == 2
    assert "no stored teacher with a key starting 'zzzz'" in capsys.readouterr().err


def stored_teacher(store, kind, shift):
    """A teacher of `kind` under one fixed key, its weights moved by `shift` (each domain's by another
    multiple of it), as trained and stored by `get_or_train_teacher`."""
    identity = {"model": {"ref": "random:tiny", "init": "random", "layers": None}, "suite": "amazon",
                "kind": kind, "seed": 1, **({"domains": ["books", "dvd"], "heads": 2} if kind == "multi"
                                            else {"domain": "books"})}

    def train(model):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(shift)
        states = {d: {k: v + i * shift for k, v in model.state_dict().items()} for i, d in enumerate(("books", "dvd"))}
        return {"dev_accuracy": 0.5, "test_accuracy": 0.5}, states if kind == "multi" else None, None

    return teacher_key(identity), get_or_train_teacher(identity, 2, train, store)


def test_ls_gives_each_teachers_gain_in_its_last_quarter(capsys):
    """Judged as a student's convergence is: the mean dev accuracy of the evaluations in the last
    quarter of the steps over the mean of those in the quarter before; a multi teacher by its worst
    domain."""
    store = TeacherStore()
    curves = {"single": [{"step": s, "dev_accuracy": a} for s, a in ((60, 0.50), (70, 0.52), (80, 0.55), (100, 0.56))],
              "multi": [{"step": s, "dev_accuracy": 0.0, "dev": {"books": b, "dvd": d}}
                        for s, b, d in ((60, 0.50, 0.70), (80, 0.52, 0.60), (100, 0.53, 0.61))]}
    keys = {}
    for kind, history in curves.items():
        keys[kind], _ = stored_teacher(store, kind, 1e-3)
        meta = store.path(keys[kind]) / "teacher.json"
        info = json.loads(meta.read_text())
        info["identity"]["sizes"] = {"train": 8} if kind == "single" else {d: {"train": 8} for d in ("books", "dvd")}
        meta.write_text(json.dumps({**info, "steps": 100, "history": history,
                                    **({"domains": {"books": {}, "dvd": {}}} if kind == "multi" else {})}))
    assert main(["teacher", "ls"]) == 0
    rows = {cells[1]: cells for cells in ([c.strip() for c in line.split("|")]
                                          for line in capsys.readouterr().out.splitlines())}
    column = rows["key"].index("last ¼ gain")
    gain = {kind: float(rows[key][column]) for kind, key in keys.items()}
    # steps 50 < s <= 75 against s > 75; multi: books rose 2.5 points, dvd fell 9.5
    assert gain["single"] == pytest.approx(100 * ((0.55 + 0.56) / 2 - (0.50 + 0.52) / 2))
    assert gain["multi"] == pytest.approx(100 * ((0.52 + 0.53) / 2 - 0.50))


@pytest.mark.parametrize("kind", ["single", "multi"])
def test_the_store_keeps_a_digest_of_each_teachers_weights(tmp_path, kind):
    """Recorded when the teacher is stored (a multi teacher: one per domain's checkpoint) and read back
    with it; a teacher stored before digests were kept gets one computed from its weights; one trained
    again under the same key with other weights gets another."""
    store = TeacherStore(tmp_path)
    key, trained = stored_teacher(store, kind, 1e-3)
    digests = {d: t.weights_digest() for d, t in trained.items()}
    assert all(t.trained_now and len(d) == 64 for d, t in zip(digests.values(), trained.values()))
    meta = store.path(key) / "teacher.json"
    info = json.loads(meta.read_text())
    assert info["weights_digests"] == ({"model": digests["books"]} if kind == "single" else digests)
    if kind == "multi":
        assert digests["books"] != digests["dvd"]

    _, loaded = stored_teacher(store, kind, 1e-3)
    assert {d: t.weights_digest() for d, t in loaded.items()} == digests and not loaded["books"].trained_now
    del info["weights_digests"]  # as stored before digests were kept
    meta.write_text(json.dumps(info))
    _, old = stored_teacher(store, kind, 1e-3)
    assert old["books"].digest is None
    assert {d: t.weights_digest() for d, t in old.items()} == digests  # computed from the weights

    store.remove(key)
    again_key, again = stored_teacher(store, kind, 2e-3)
    assert again_key == key and again["books"].trained_now
    assert all(again[d].weights_digest() != digests[d] for d in digests)


def test_dry_run_plans_without_loading_any_model(tmp_path, data_dir, capsys, monkeypatch):
    def no_models(ref):
        raise AssertionError(f"the plan must not resolve {ref}")

    monkeypatch.setattr(bench.models.classifier, "resolve_dir", no_models)
    assert main(["run", "--preset", "paper", "--dry-run", "--methods", "kd,finetune", "--suite", "mnli",
                 "--domains", "fiction", "--results-dir", str(tmp_path), "--data-dir", str(data_dir)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == ("preset paper: teacher hf:bert-base-uncased, "
                        "student hf:huawei-noah/TinyBERT_General_4L_312D")
    assert lines[1] == f"2 run(s) to do, 0 already in {tmp_path}"
    assert lines[2].startswith("fiction: teacher ") and lines[2].endswith("to train (10356 examples)")  # 3 x 3452
    assert lines[3] == "fiction: kd seed 1: 34520 examples (+ teacher forwards)"  # 10 epochs x 3452
    assert lines[4] == "fiction: finetune seed 1: 34520 examples"
    assert lines[-1] == f"examples to process in all: {10356 + 2 * 34520}"
    assert not list(tmp_path.iterdir())  # nothing written


@pytest.mark.parametrize("preset", ["smoke", "cpu", "cpu-base", "paper-shapes", "paper"])
def test_every_preset_is_listed_with_its_models(preset, capsys):
    assert main(["ls", "presets"]) == 0
    assert preset in capsys.readouterr().out


def test_a_preset_sizes_each_suite_as_it_says(tmp_path, data_dir, capsys, monkeypatch):
    """cpu trains on every MNLI pair of a genre (fiction: 3,452, the first 90% of its train rows), the
    teacher 3 epochs, the student 5 (Amazon: 800 reviews, teacher 2 epochs, student 5): the plan uses them."""
    def no_models(ref):
        raise AssertionError(f"the plan must not resolve {ref}")

    monkeypatch.setattr(bench.models.classifier, "resolve_dir", no_models)
    assert main(["run", "--dry-run", "--methods", "kd", "--suite", "mnli", "--domains", "fiction",
                 "--results-dir", str(tmp_path), "--data-dir", str(data_dir)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[2].endswith("to train (10356 examples)")  # teacher: 3 epochs x 3452
    assert lines[3] == "fiction: kd seed 1: 17260 examples (+ teacher forwards)"  # student: 5 epochs x 3452
    assert main(["run", "--dry-run", "--methods", "kd", "--suite", "amazon", "--domains", "books",
                 "--results-dir", str(tmp_path), "--data-dir", str(data_dir)]) == 0
    assert "books: kd seed 1: 4000 examples (+ teacher forwards)" in capsys.readouterr().out  # 5 x 800
