"""Training across domains: the multi-domain sampler, mix and multi teachers, mix and multi
(mtl) students, on the smoke preset and the real Amazon files."""

import json
import logging

import pytest
import torch

from bench.api import Distiller
from bench.cli import main
from bench.data.batching import MultiDomainLoader, make_loader
from bench.errors import BenchError
from bench.grid.spec import Grid
from bench.plugins import get_registry
from bench.presets import get_preset


def rows(n: int, domain_id: int):
    import datasets

    return datasets.Dataset.from_list([{"input_ids": [101, 1000 + i, 102], "token_type_ids": [0, 0, 0],
                                        "label": i % 2, "domain_id": domain_id} for i in range(n)])


def test_an_epoch_is_the_largest_domain_and_smaller_ones_cycle_reshuffled():
    loader = MultiDomainLoader({"big": make_loader(rows(10, 0), 2, 0, shuffle=True, seed=1),
                                "small": make_loader(rows(4, 1), 2, 0, shuffle=True, seed=2)})
    steps = list(loader)
    assert len(loader) == len(steps) == 5
    seen = lambda d, part: [i - 1000 for s in part for i in s[d].input_ids[:, 1].tolist()]  # noqa: E731
    assert sorted(seen("big", steps)) == list(range(10))  # every big row once
    small = seen("small", steps)  # 10 rows: 2.5 passes over 4
    assert sorted(small[:4]) == sorted(small[4:8]) == [0, 1, 2, 3]
    assert small[:4] != small[4:8]  # each pass reshuffled
    assert all(s["small"].domain_ids.tolist() == [1, 1] for s in steps)


@pytest.fixture(scope="module")
def joint_run(tmp_path_factory, data_dir):
    results, store = tmp_path_factory.mktemp("results"), tmp_path_factory.mktemp("store")
    mp = pytest.MonkeyPatch()
    mp.setenv("BENCH_CACHE_DIR", str(store))
    code = main(["run", "--methods", "finetune-mix,finetune-mtl", "--suite", "amazon", "--preset", "smoke",
                 "--domains", "books,dvd,kitchen", "--results-dir", str(results), "--data-dir", str(data_dir)])
    mp.undo()
    return code, {p.relative_to(results).as_posix(): json.loads(p.read_text()) for p in results.rglob("*.json")}


def test_mix_and_mtl_students_train_once_and_give_a_result_per_domain(joint_run):
    code, files = joint_run
    assert code == 0
    assert sorted(files) == sorted(f"amazon/smoke/{m}/{d}/seed1.json" for m in ("finetune-mix", "finetune-mtl")
                                   for d in ("books", "dvd", "kitchen"))
    for method, kind in (("finetune-mix", "mix"), ("finetune-mtl", "multi")):
        records = [files[f"amazon/smoke/{method}/{d}/seed1.json"] for d in ("books", "dvd", "kitchen")]
        assert all(r["suite"]["trained_on"] == ["books", "dvd", "kitchen"] for r in records)
        assert all(r["method"]["student_kind"] == kind and r["teacher"] is None for r in records)
        assert len({json.dumps(r["train"]["history"]) for r in records}) == 1  # one training
    mix = files["amazon/smoke/finetune-mix/books/seed1.json"]["train"]
    # the union (3 x 48 rows) in batches of 8 x 3: 6 steps an epoch, 2 epochs
    assert mix["steps"] == 12 and mix["examples"] == 2 * 3 * 48
    mtl = files["amazon/smoke/finetune-mtl/books/seed1.json"]["train"]
    # 48 rows a domain in sub-batches of 8: 6 steps an epoch, each of 3 x 8 rows
    assert mtl["steps"] == 12 and mtl["examples"] == 12 * 3 * 8
    assert set(mtl["history"][0]["dev"]) == {"books", "dvd", "kitchen"}
    for d in ("books", "dvd", "kitchen"):  # each domain's own best dev checkpoint
        r = files[f"amazon/smoke/finetune-mtl/{d}/seed1.json"]["train"]
        at_step = next(h for h in r["history"] if h["step"] == r["selected_step"])
        assert at_step["dev"][d] == r["best_dev_accuracy"] == max(h["dev"][d] for h in r["history"])


def test_multi_teacher_is_stored_once_with_a_checkpoint_per_domain(tmp_path, data_dir, capsys, caplog):
    argv = ["teacher", "train", "--kind", "multi", "--suite", "amazon", "--preset", "smoke",
            "--domains", "books,dvd", "--data-dir", str(data_dir)]
    assert main(argv) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0] for line in lines] == ["books", "dvd"]
    keys = {line.split()[2] for line in lines}
    assert len(keys) == 1  # one teacher serves both domains
    caplog.set_level(logging.INFO)
    assert main(argv) == 0
    assert "reusing teacher" in caplog.text and "training teacher" not in caplog.text
    assert capsys.readouterr().out.splitlines() == lines
    assert main(["teacher", "ls"]) == 0
    listing = capsys.readouterr().out
    assert "multi" in listing and "books,dvd" in listing


def test_multi_teacher_files_hold_each_domains_best_checkpoint(data_dir):
    from bench.api import DataConfig
    from bench.grid.runner import Runner

    registry = get_registry()
    grid = Grid(suite=registry.suite("amazon"), preset=get_preset("smoke"), methods=[], domains=["books", "dvd"],
                seeds=[1], data=DataConfig(str(data_dir)), results_dir="unused")
    runner = Runner(grid, registry)
    teachers = runner.teachers.get("multi", ["books", "dvd"])
    key = teachers["books"].key
    assert sorted(p.name for p in runner.teachers.store.path(key).glob("*.safetensors")) == [
        "model.books.safetensors", "model.dvd.safetensors"]
    info = teachers["books"].info
    assert info["dev_accuracy"] == info["domains"]["books"]["dev_accuracy"]
    assert teachers["dvd"].info["test_accuracy"] == info["domains"]["dvd"]["test_accuracy"]
    assert len(teachers["books"].model.heads) == 4  # one head per suite domain
    # the two stored checkpoints are the ones selected for their domains
    history = info["history"]
    for d in ("books", "dvd"):
        best = max(h["dev"][d] for h in history)
        assert info["domains"][d]["dev_accuracy"] == best


class MixStudentSingleTeacher(Distiller):
    name = "mix-with-single"
    student_kind = "mix"
    teacher_kind = "single"

    def loss(self, batch, student_out, teacher_out, stage):
        return {"x": student_out.logits.sum()}


def test_a_mix_student_cannot_have_per_domain_teachers(data_dir):
    from bench.api import DataConfig

    registry = get_registry()
    with pytest.raises(BenchError, match="mix student sees every domain"):
        Grid(suite=registry.suite("amazon"), preset=get_preset("smoke"), methods=[MixStudentSingleTeacher],
             domains=["books"], seeds=[1], data=DataConfig(str(data_dir)), results_dir="unused")


def test_dry_run_counts_joint_training_once(tmp_path, data_dir, capsys):
    assert main(["run", "--dry-run", "--methods", "finetune-mtl,finetune-mix", "--suite", "amazon",
                 "--preset", "smoke", "--results-dir", str(tmp_path), "--data-dir", str(data_dir)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1] == f"8 run(s) to do, 0 already in {tmp_path}"
    assert "books,dvd,electronics,kitchen (multi student): finetune-mtl seed 1: 384 examples" in lines  # 2 x 4 x 48
    assert "books,dvd,electronics,kitchen (mix student): finetune-mix seed 1: 384 examples" in lines
    assert lines[-1] == "examples to process in all: 768"
    assert torch.is_grad_enabled()


def test_dry_run_estimates_the_students_time_at_the_rates_its_store_recorded(tmp_path, data_dir, capsys):
    """Once finetune has run on books, the plan of another seed gives its students' time at the rate
    that run recorded (here set to 0.01 examples a second); finetune-mix, with no run in the store,
    is left out of the estimate and counted."""
    argv = ["run", "--suite", "amazon", "--preset", "smoke", "--results-dir", str(tmp_path),
            "--data-dir", str(data_dir)]
    assert main([*argv, "--methods", "finetune", "--domains", "books", "--seeds", "1"]) == 0
    path = tmp_path / "amazon" / "smoke" / "finetune" / "books" / "seed1.json"
    record = json.loads(path.read_text())
    record["train"]["examples_per_second"] = 0.01
    path.write_text(json.dumps(record))
    capsys.readouterr()
    assert main([*argv, "--methods", "finetune,finetune-mix", "--domains", "books,dvd", "--seeds", "2",
                 "--dry-run"]) == 0
    lines = capsys.readouterr().out.splitlines()
    examples = sum(int(line.split(": ")[-1].split()[0]) for line in lines if ": finetune seed 2: " in line)
    assert examples == 2 * 96  # books and dvd, 2 epochs of 48
    assert lines[-1] == (f"students: about {examples / 0.01 / 3600:.1f} worker-hours at the rates of the runs in "
                         f"{tmp_path} (each method's median examples/s); 1 training(s) of methods without a run "
                         "there not counted; teachers not counted")


def test_dry_run_counts_a_per_domain_students_joint_teacher_on_every_domain(tmp_path, data_dir, capsys):
    """metakd's students are per domain, its meta-teacher is trained on the union of the domains."""
    assert main(["run", "--dry-run", "--methods", "metakd", "--suite", "amazon", "--preset", "smoke",
                 "--domains", "books,dvd", "--results-dir", str(tmp_path), "--data-dir", str(data_dir)]) == 0
    lines = capsys.readouterr().out.splitlines()
    teacher = [line for line in lines if "meta-teacher" in line]
    assert len(teacher) == 1 and teacher[0].startswith("books,dvd: mix meta-teacher teacher ")
    assert teacher[0].endswith("to train (192 examples)")  # 2 epochs x (48 + 48)
    assert "books: metakd seed 1: 192 examples (+ teacher forwards)" in lines  # 2 stages x 2 epochs x 48
    assert lines[-1] == f"examples to process in all: {192 + 2 * 192}"


def test_a_grid_holds_only_the_teachers_of_the_job_it_runs(data_dir, tmp_path):
    """Each domain's teacher is let go when the grid moves on (reloaded from the store if needed
    again); each run records its own peak memory."""
    from bench.api import DataConfig
    from bench.grid.runner import Runner

    registry = get_registry()
    grid = Grid(suite=registry.suite("amazon"), preset=get_preset("smoke"),
                methods=[registry.distiller("kd"), registry.distiller("finetune")], domains=["books", "dvd"],
                seeds=[1], data=DataConfig(str(data_dir)), results_dir=str(tmp_path))
    runner = Runner(grid, registry)
    held = []
    run_one = runner.run_one
    runner.run_one = lambda key, *a: (held.append(sorted(d for _, _, d in runner.teachers.loaded)), run_one(key, *a))[1]
    written = runner.run()
    assert len(written) == 4
    # kd books, finetune books (needs no teacher), kd dvd, finetune dvd
    assert held == [["books"], [], ["dvd"], []]
    for path in written:
        assert json.loads(path.read_text())["timings"]["peak_rss_mib"] > 100  # torch and a model at least
