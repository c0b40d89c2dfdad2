import json

import pytest
from test_report import record  # one stored-result fixture for both files

from bench.errors import BenchError
from bench.machine import cpu_model, machine_info
from bench.results.records import RunKey, read_result, write_result
from bench.results.report import to_frame


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


CPUINFO = """processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC 9R14 96-Core Processor
flags\t\t: fpu sse2 avx avx2 fma avx512f avx512bw avx512_bf16 avx512_vnni

processor\t: 1
model name\t: AMD EPYC 9R14 96-Core Processor
flags\t\t: fpu sse2 avx avx2 fma avx512f avx512bw avx512_bf16 avx512_vnni
"""


def test_the_cpu_model_and_the_flags_that_set_its_speed_are_recorded(tmp_path):
    path = tmp_path / "cpuinfo"
    path.write_text(CPUINFO)
    assert cpu_model(str(path)) == {"cpu_model": "AMD EPYC 9R14 96-Core Processor",
                                    "cpu_flags": ["avx2", "avx512f", "avx512_bf16"]}
    path.write_text(CPUINFO.replace(" avx512f avx512bw avx512_bf16 avx512_vnni", ""))
    assert cpu_model(str(path))["cpu_flags"] == ["avx2"]
    assert cpu_model(str(tmp_path / "none")) == {}  # not Linux: nothing, and the rest of the record stays
    assert set(cpu_model()) <= set(machine_info())
