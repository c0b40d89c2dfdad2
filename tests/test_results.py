import json

import pytest
from test_report import record  # one stored-result fixture for both files

from bench.errors import BenchError
from bench.report import to_frame
from bench.results import RunKey, read_result, write_result


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
