"""The MNLI suite: GLUE TSV and MultiNLI jsonl, written here in their real layouts, and the real subset."""

import json
from pathlib import Path

import pytest
from bench_plugins.suites import mnli
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bench.api import DataConfig
from bench.errors import BenchError

TRAIN_HEADER = ("index\tpromptID\tpairID\tgenre\tsentence1_binary_parse\tsentence2_binary_parse\t"
                "sentence1_parse\tsentence2_parse\tsentence1\tsentence2\tlabel1\tgold_label")
DEV_HEADER = ("index\tpromptID\tpairID\tgenre\tsentence1_binary_parse\tsentence2_binary_parse\t"
              "sentence1_parse\tsentence2_parse\tsentence1\tsentence2\tlabel1\tlabel2\tlabel3\tlabel4\t"
              "label5\tgold_label")
LABELS = ("entailment", "neutral", "contradiction")


def train_line(i, genre, label, a=None, b=None):
    a = a if a is not None else f"premise {genre} {i} with \"quotes\""
    b = b if b is not None else f"hypothesis {i}"
    return f"{i}\t{i}\t{i}e\t{genre}\t( {a} )\t( {b} )\t(ROOT)\t(ROOT)\t{a}\t{b}\t{label}\t{label}"


def dev_line(i, genre, label):
    return (f"{i}\t{i}\t{i}n\t{genre}\t( p )\t( h )\t(ROOT)\t(ROOT)\tdev premise {i}\tdev hypothesis {i}\t"
            f"{label}\t{label}\t{label}\t{label}\t{label}\t{label}")


def write_glue(root: Path, n_per_genre=20, extra_train=(), extra_dev=()) -> Path:
    folder = root / "mnli" / "MNLI"
    folder.mkdir(parents=True)
    train = [TRAIN_HEADER]
    dev = [DEV_HEADER]
    i = 0
    for k in range(n_per_genre):
        for genre in mnli.DOMAINS + ("oup",):  # a genre outside the five is ignored
            train.append(train_line(i, genre, LABELS[(i + k) % 3]))
            dev.append(dev_line(i, genre, LABELS[(i + k) % 3]))
            i += 1
    (folder / "train.tsv").write_text("\n".join(train + list(extra_train)) + "\n")
    (folder / "dev_matched.tsv").write_text("\n".join(dev + list(extra_dev)) + "\n")
    return folder


def cfg(path, skip=False):
    return DataConfig(str(path), skip_bad_rows=skip)


def test_glue_layout_and_the_protocol(tmp_path):
    write_glue(tmp_path, n_per_genre=20)
    train = mnli.load("fiction", "train", cfg(tmp_path))
    dev = mnli.load("fiction", "dev", cfg(tmp_path))
    test = mnli.load("fiction", "test", cfg(tmp_path))
    assert (len(train), len(dev), len(test)) == (18, 2, 20)  # first 90% of train in file order, the rest dev
    fiction_rows = [i for i in range(120) if i % 6 == 0]
    assert train["text_a"][0] == 'premise fiction 0 with "quotes"'
    assert dev["text_b"] == [f"hypothesis {i}" for i in fiction_rows[18:]]
    assert test["text_a"][:2] == ["dev premise 0", "dev premise 6"]
    assert set(test["label"]) == {0, 1, 2} and set(train["domain"]) == {"fiction"}


def test_no_consensus_rows_are_dropped_and_counted(tmp_path):
    write_glue(tmp_path, n_per_genre=10, extra_train=[train_line(900, "slate", "-")],
               extra_dev=[dev_line(901, "slate", "-"), dev_line(902, "travel", "-")])
    assert len(mnli.load("slate", "train", cfg(tmp_path))) == 9
    assert len(mnli.load("slate", "test", cfg(tmp_path))) == 10
    assert mnli.audit("slate", cfg(tmp_path)) == {"dropped_no_consensus": 2, "skipped_bad_rows": 0}


def test_multinli_jsonl(tmp_path):
    folder = tmp_path / "multinli_1.0"
    folder.mkdir()
    rows = [{"genre": g, "sentence1": f"s1 {i}", "sentence2": f"s2 {i}", "gold_label": LABELS[i % 3],
             "annotator_labels": ["neutral"]} for i, g in enumerate(mnli.DOMAINS * 10)]
    rows.append({"genre": "travel", "sentence1": "x", "sentence2": "y", "gold_label": "-"})
    for name in ("multinli_1.0_train.jsonl", "multinli_1.0_dev_matched.jsonl"):
        (folder / name).write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    assert len(mnli.load("travel", "train", cfg(tmp_path))) == 9
    assert len(mnli.load("travel", "dev", cfg(tmp_path))) == 1
    assert mnli.load("travel", "test", cfg(tmp_path))["text_b"][0] == "s2 4"
    assert mnli.audit("travel", cfg(tmp_path))["dropped_no_consensus"] == 2


@pytest.mark.parametrize("bad_line,reason", [
    ("7\t\t\tfiction\tonly five", "5 columns, the header has 12"),
    (train_line(7, "fiction", "maybe"), "unknown label 'maybe'"),
    (train_line(7, "fiction", "neutral", a=""), "empty sentence1"),
    (train_line(7, "fiction", "neutral", b=" "), "empty sentence2"),
])
def test_a_malformed_row_stops_with_file_line_and_reason_or_is_skipped(tmp_path, bad_line, reason):
    write_glue(tmp_path, n_per_genre=10, extra_train=[bad_line])
    line = 1 + 60 + 1  # header, 60 rows, then the bad one
    with pytest.raises(BenchError, match=rf"train.tsv:{line}: {reason}") as err:
        mnli.load("fiction", "train", cfg(tmp_path))
    assert "--skip-bad-rows" in str(err.value)
    assert len(mnli.load("fiction", "train", cfg(tmp_path, skip=True))) == 9
    assert mnli.audit("fiction", cfg(tmp_path, skip=True))["skipped_bad_rows"] == 1


def write_jsonl(root: Path, extra=()) -> Path:
    folder = root / "multinli_1.0"
    folder.mkdir()
    rows = [json.dumps({"genre": g, "sentence1": f"s1 {i}", "sentence2": f"s2 {i}", "gold_label": LABELS[i % 3]})
            for i, g in enumerate(mnli.DOMAINS * 10)]
    (folder / "multinli_1.0_train.jsonl").write_text("\n".join(rows + list(extra)) + "\n")
    (folder / "multinli_1.0_dev_matched.jsonl").write_text("\n".join(rows) + "\n")
    return folder


@pytest.mark.parametrize("bad_line,reason", [
    ('{"genre": "fiction", "sentence1": "a", ', r"not valid JSON \(Expecting property name enclosed in double quotes"),
    ('["fiction", "a", "b", "neutral"]', "a JSON list, not an object with genre, sentence1, sentence2, gold_label"),
    ('{"genre": "fiction", "sentence1": "a", "gold_label": "neutral"}', "missing field\\(s\\) sentence2"),
    ('{"genre": "fiction", "sentence1": null, "sentence2": "b", "gold_label": "neutral"}',
     "sentence1 is null, not a text"),
    ('{"genre": "fiction", "sentence1": "a", "sentence2": 3, "gold_label": "neutral"}', "sentence2 is 3, not a text"),
    ('{"genre": "fiction", "sentence1": "", "sentence2": "b", "gold_label": "neutral"}', "empty sentence1"),
])
def test_a_malformed_jsonl_row_stops_with_file_line_and_reason_or_is_skipped(tmp_path, bad_line, reason):
    write_jsonl(tmp_path, extra=[bad_line])
    with pytest.raises(BenchError, match=rf"train.jsonl:51: {reason}") as err:  # 50 rows, then the bad one
        mnli.load("fiction", "train", cfg(tmp_path))
    assert "--skip-bad-rows" in str(err.value)
    assert len(mnli.load("fiction", "train", cfg(tmp_path, skip=True))) == 9
    assert sum(mnli.read_jsonl(tmp_path / "multinli_1.0" / "multinli_1.0_train.jsonl", True).bad_rows.values()) == 1


def test_bom_crlf_and_bad_bytes(tmp_path):
    folder = write_glue(tmp_path, n_per_genre=10)
    path = folder / "train.tsv"
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes().replace(b"\n", b"\r\n"))
    assert mnli.load("government", "train", cfg(tmp_path))["text_b"][0] == "hypothesis 1"
    path.write_bytes(path.read_bytes().replace(b"premise government 7", b"premise gov\xe9rnment 7"))
    with pytest.raises(BenchError, match=r"train.tsv:9: bytes that are not UTF-8 at byte \d+"):
        mnli.load("government", "train", cfg(tmp_path))
    assert len(mnli.load("government", "train", cfg(tmp_path, skip=True))) == 8  # 90% of the 9 left
    path.write_bytes(path.read_bytes().replace(b"genre", b"g\xe9nre", 1))
    for skip in (False, True):  # without its header the columns cannot be told: no skipping it
        with pytest.raises(BenchError, match=r"train.tsv:1: bytes that are not UTF-8 at byte \d+") as err:
            mnli.load("travel", "train", cfg(tmp_path, skip=skip))
        assert "save the file as UTF-8" in str(err.value)


def test_missing_files_and_headers_say_what_is_expected(tmp_path):
    with pytest.raises(BenchError, match="no MNLI data under") as err:
        mnli.load("fiction", "train", cfg(tmp_path))
    assert "MNLI/{train,dev_matched}.tsv" in str(err.value)
    folder = write_glue(tmp_path)
    (folder / "dev_matched.tsv").unlink()
    with pytest.raises(BenchError, match="missing file .*dev_matched.tsv"):
        mnli.load("fiction", "test", cfg(tmp_path))
    (folder / "dev_matched.tsv").write_text("a\tb\tc\n")
    with pytest.raises(BenchError, match=r"dev_matched.tsv:1: the header lacks column\(s\) genre, sentence1"):
        mnli.load("fiction", "test", cfg(tmp_path))


text = st.text(st.characters(blacklist_categories=("Cs", "Cc")), min_size=1).filter(lambda t: t.strip())


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.lists(st.tuples(st.sampled_from(mnli.DOMAINS), text, text, st.sampled_from(LABELS + ("-",))),
                     max_size=30))
def test_tsv_reader_returns_what_was_written(tmp_path_factory, rows):
    path = tmp_path_factory.mktemp("tsv") / "train.tsv"
    lines = [TRAIN_HEADER] + [train_line(i, g, y, a, b) for i, (g, a, b, y) in enumerate(rows)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    parsed = mnli.read_tsv(path)
    for genre in mnli.DOMAINS:
        want = [(a, b, LABELS.index(y)) for g, a, b, y in rows if g == genre and y != "-"]
        assert parsed.rows.get(genre, []) == want
        assert parsed.no_consensus[genre] == sum(1 for g, *_, y in rows if g == genre and y == "-")


EXPECTED = {"fiction": (3452, 384, 995), "government": (3494, 389, 1016), "slate": (3623, 403, 1002),
            "telephone": (3843, 427, 1005), "travel": (3586, 399, 982)}


def test_the_real_subset_splits_as_the_issue_states(data_dir):
    from bench.data.datadir import stats

    rows = {r["domain"]: r for r in stats(mnli.SUITE, cfg(data_dir))}
    assert {d: (r["train"], r["dev"], r["test"]) for d, r in rows.items()} == EXPECTED
    assert all(r["dropped no consensus"] == 0 and r["skipped bad rows"] == 0 for r in rows.values())


def test_hub_download_writes_jsonl_the_loader_reads(tmp_path, monkeypatch):
    """`data prepare` online: nyu-mll/multi_nli (label -1: no consensus) becomes the jsonl files."""
    import datasets

    def hub_split(n):
        return datasets.Dataset.from_dict({
            "premise": [f"p{i}" for i in range(n)], "hypothesis": [f"h{i}" for i in range(n)],
            "label": [(i % 4) - 1 for i in range(n)], "genre": [mnli.DOMAINS[i % 5] for i in range(n)]})

    asked = []

    def fake_load_dataset(name):
        asked.append(name)
        return datasets.DatasetDict({"train": hub_split(100), "validation_matched": hub_split(40)})

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    from bench.data.datadir import prepare

    assert prepare([mnli.SUITE], tmp_path, None) == [f"mnli: downloaded from the hub to {tmp_path / 'mnli'}"]
    assert asked == ["nyu-mll/multi_nli"]
    train = mnli.load("fiction", "train", cfg(tmp_path))
    assert train["text_a"][:2] == ["p5", "p10"]  # fiction rows 0, 5, 10: row 0 has label -1, dropped
    assert mnli.audit("fiction", cfg(tmp_path))["dropped_no_consensus"] == 5 + 2
