import json

import pytest

from bench.errors import BenchError
from bench.report import to_frame
from bench.results import SCHEMA_VERSION, RunKey, read_result, write_result


def record(method="kd", domain="books", seed=1, acc=0.8, teacher_acc=0.9, preset="smoke"):
    return {
        "schema_version": SCHEMA_VERSION, "seed": seed, "preset": preset,
        "suite": {"name": "amazon", "domain": domain, "train_ratio": 1.0},
        "method": {"name": method, "config": {}},
        "teacher": None if method == "finetune" else {
            "ref": "random:tiny", "key": f"t-{domain}", "test_accuracy": teacher_acc,
            "params": {"total": 4_000_000, "non_embedding": 1_000_000}},
        "machine": {"world_size": 1},
        "train": {"steps": 10, "history": [{"step": 10, "dev_accuracy": 0.5}]},
        "metrics": {"accuracy": acc, "params": {"total": 2_000_000, "non_embedding": 500_000}},
    }


def test_round_trip(tmp_path):
    key = RunKey("amazon", "smoke", "kd", "books", 3)
    path = key.path(tmp_path)
    assert path == tmp_path / "amazon/smoke/kd/books/seed3.json"
    write_result(path, record(seed=3))
    assert read_result(path) == record(seed=3)
    assert [p.name for p in path.parent.iterdir()] == ["seed3.json"]  # no temp file left


def test_a_failed_write_leaves_the_old_file_whole(tmp_path):
    path = tmp_path / "r.json"
    write_result(path, record())
    with pytest.raises(TypeError):
        write_result(path, {"schema_version": 1, "bad": object()})
    assert read_result(path) == record()
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]


def test_a_corrupt_file_is_named_with_its_line(tmp_path):
    path = tmp_path / "r.json"
    path.write_text('{"schema_version": 1,\n "seed": }')
    with pytest.raises(BenchError, match=r"r.json:2: not valid JSON"):
        read_result(path)


def test_an_unknown_schema_version_is_refused(tmp_path):
    path = tmp_path / "r.json"
    path.write_text(json.dumps({"schema_version": 99}))
    with pytest.raises(BenchError, match="schema version 99"):
        read_result(path)


def test_the_stable_keys_are_dotted_columns():
    df = to_frame([record()])
    for column in ("seed", "preset", "method.name", "suite.name", "suite.domain", "suite.train_ratio",
                   "teacher.ref", "teacher.key", "machine.world_size"):
        assert column in df.columns
