"""The files suite: a researcher's own folder of jsonl, csv and tsv files, written here as a user would."""

import csv
import json
from pathlib import Path

import pytest

from bench.api import DataConfig
from bench.cli import main
from bench.data import files_suite as files
from bench.errors import BenchError
from bench.results.significance import decode_labels

STRICT, SKIP = DataConfig("unused"), DataConfig("unused", skip_bad_rows=True)

SUBJECTS = {
    "books": ("The plot", "This novel", "The ending", "The translation", "The second half", "This memoir"),
    "kitchen": ("This kettle", "The blender", "The knife set", "This frying pan", "The toaster", "The mixer"),
    "movies": ("The film", "The soundtrack", "The lead actor", "The script", "This sequel", "The director's cut"),
}
PRAISE = ("is wonderful", "exceeded my expectations", "was worth every penny", "works like a charm",
          "made my week", "is better than the reviews say")
COMPLAINTS = ("broke after a week", "was a waste of money", "is dull and predictable", "fell apart quickly",
              "left me disappointed", "is not worth the price")


def reviews(domain, n, start=0, neutral_every=0):
    """n short reviews of `domain` as (text, label), alternating positive and negative; with `neutral_every`
    every k-th is a lukewarm neutral one."""
    rows = []
    for i in range(start, start + n):
        subject = SUBJECTS[domain][i % 6]
        if neutral_every and i % neutral_every == neutral_every - 1:
            rows.append((f"{subject} is fine, nothing special ({i}).", "neutral"))
        elif i % 2 == 0:
            rows.append((f"{subject} {PRAISE[i // 2 % 6]} ({i}).", "positive"))
        else:
            rows.append((f"{subject} {COMPLAINTS[i // 2 % 6]} ({i}).", "negative"))
    return rows


def columns(suite, domain, split, cfg=STRICT) -> dict[str, list]:
    """A split as loaded, column by column."""
    return suite.load(domain, split, cfg).to_dict()


def write_jsonl(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")


def write_table(path, header, rows, delimiter):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        out = csv.writer(f, delimiter=delimiter, lineterminator="\n")
        out.writerow(header)
        out.writerows(rows)


# kitchen/train.csv's own rows: a comma and quotes in a quoted field, a review over two lines
KITCHEN_QUOTED = ('Sharp, heavy and "dishwasher safe", they say.', "negative")
KITCHEN_TWO_LINES = ("Arrived dented.\nStill boils water in two minutes.", "positive")


def write_reviews(root: Path) -> Path:
    """books in jsonl (train, dev, test), kitchen in csv with an extra column (no dev), movies in tsv with
    a neutral label; a notes folder that is no domain."""
    root = root / "reviews"
    write_jsonl(root / "books" / "train.jsonl", [{"text": t, "label": y} for t, y in reviews("books", 20)])
    write_jsonl(root / "books" / "dev.jsonl", [{"text": t, "label": y} for t, y in reviews("books", 12, 20)])
    write_jsonl(root / "books" / "test.jsonl", [{"text": t, "label": y} for t, y in reviews("books", 12, 32)])
    kitchen = [KITCHEN_QUOTED, KITCHEN_TWO_LINES] + reviews("kitchen", 18)
    write_table(root / "kitchen" / "train.csv", ["stars", "text", "label"],
                [[5 if y == "positive" else 1, t, y] for t, y in kitchen], ",")
    write_table(root / "kitchen" / "test.csv", ["stars", "text", "label"],
                [[3, t, y] for t, y in reviews("kitchen", 12, 18)], ",")
    for split, n, start in (("train", 24, 0), ("dev", 12, 24), ("test", 12, 36)):
        write_table(root / "movies" / f"{split}.tsv", ["label", "text"],
                    [[y, t] for t, y in reviews("movies", n, start, neutral_every=4)], "\t")
    (root / "notes").mkdir()
    (root / "notes" / "README.txt").write_text("collected March 2024\n")
    return root


@pytest.fixture
def root(tmp_path):
    return write_reviews(tmp_path)


def test_each_format_is_read_row_for_row(root):
    suite = files.build(f"files:{root}")
    assert suite.name == "files:reviews" and suite.source == str(root)
    assert suite.domains == ("books", "kitchen", "movies")
    assert suite.labels == ("negative", "neutral", "positive")
    books = suite.load("books", "train", STRICT)
    assert len(books) == 20
    assert books[0] == {"text_a": "The plot is wonderful (0).", "text_b": None, "label": 2, "domain": "books"}
    assert books[1]["text_a"] == "This novel broke after a week (1)." and books[1]["label"] == 0
    assert columns(suite, "books", "dev")["text_a"][0] == "The ending made my week (20)."
    assert len(suite.load("books", "test", STRICT)) == 12
    kitchen = columns(suite, "kitchen", "test")
    assert kitchen["text_a"][:2] == ["This kettle works like a charm (18).", "The blender fell apart quickly (19)."]
    assert kitchen["label"][:2] == [2, 0]
    movies = columns(suite, "movies", "train")
    assert movies["text_a"][3] == "The script is fine, nothing special (3)." and movies["label"][3] == 1
    assert movies["label"][:4] == [2, 0, 2, 1]
    assert set(movies["domain"]) == {"movies"}


def test_csv_quoting_keeps_commas_quotes_and_line_breaks(root):
    suite = files.build(f"files:{root}")
    rows = columns(suite, "kitchen", "train")["text_a"] + columns(suite, "kitchen", "dev")["text_a"]
    assert KITCHEN_QUOTED[0] in rows and KITCHEN_TWO_LINES[0] in rows
    assert (root / "kitchen" / "train.csv").read_text().splitlines()[1] == \
        '1,"Sharp, heavy and ""dishwasher safe"", they say.",negative'


def test_text_pair_is_read_in_every_format(tmp_path):
    pairs = [("A man plays a guitar on stage.", "Someone is making music.", 0),
             ("A dog runs through the snow.", "The dog is asleep indoors.", 2),
             ("Two kids eat ice cream.", "The children are at the beach.", 1)] * 4
    write_jsonl(tmp_path / "nli" / "captions" / "train.jsonl",
                [{"text": a, "text_pair": b, "label": y, "annotator": "x"} for a, b, y in pairs])
    write_jsonl(tmp_path / "nli" / "captions" / "test.jsonl",
                [{"text": a, "text_pair": b, "label": y} for a, b, y in pairs[:3]])
    for split in ("train", "test"):
        write_table(tmp_path / "nli" / "forum" / f"{split}.tsv", ["text", "text_pair", "label"],
                    [["How do I reset my router?", "What resets a router?", 0],
                     ["Is the library open on Sunday?", "Where do I park downtown?", 2]] * 6, "\t")
    suite = files.build(f"files:{tmp_path / 'nli'}")
    assert suite.labels == ("0", "1", "2")
    captions = columns(suite, "captions", "test")
    assert captions["text_b"] == ["Someone is making music.", "The dog is asleep indoors.",
                                  "The children are at the beach."]
    assert captions["label"] == [0, 2, 1]
    forum = suite.load("forum", "test", STRICT)
    assert forum[1] == {"text_a": "Is the library open on Sunday?", "text_b": "Where do I park downtown?",
                        "label": 2, "domain": "forum"}


def test_a_domain_without_dev_gets_the_same_cut_of_train_every_time(root):
    suite = files.build(f"files:{root}")
    train, dev = (columns(suite, "kitchen", split)["text_a"] for split in ("train", "dev"))
    assert (len(train), len(dev)) == (18, 2)  # 10% of 20 rows
    assert not set(train) & set(dev)
    written = [KITCHEN_QUOTED[0], KITCHEN_TWO_LINES[0]] + [t for t, _ in reviews("kitchen", 18)]
    assert sorted(train + dev) == sorted(written)
    order = {t: i for i, t in enumerate(written)}
    assert [order[t] for t in train] == sorted(order[t] for t in train)  # both keep file order
    assert [order[t] for t in dev] == sorted(order[t] for t in dev)
    again = files.build(f"files:{root}")
    assert columns(again, "kitchen", "dev")["text_a"] == dev
    assert [len(files.dev_cut(n)) for n in (1, 9, 10, 25, 200)] == [1, 1, 1, 2, 20]
    assert files.dev_cut(20) == files.dev_cut(20) == frozenset(order[t] for t in dev)


def test_labels_are_the_sorted_union_of_the_train_labels_numeric_when_integers(tmp_path):
    write_jsonl(tmp_path / "stars" / "hotels" / "train.jsonl",
                [{"text": f"Room {i} was clean and quiet.", "label": y} for i, y in enumerate([2, 10, 1, 2] * 3)])
    write_jsonl(tmp_path / "stars" / "hotels" / "test.jsonl", [{"text": "Noisy street.", "label": "10"}])
    write_table(tmp_path / "stars" / "cafes" / "train.csv", ["text", "label"],
                [[f"Latte {i} was lukewarm.", y] for i, y in enumerate(["3", " 10 "] * 6)], ",")
    write_table(tmp_path / "stars" / "cafes" / "test.csv", ["text", "label"], [["Lovely scones.", "3"]], ",")
    suite = files.build(f"files:{tmp_path / 'stars'}")
    assert suite.labels == ("1", "2", "3", "10")  # not "1", "10", "2", "3"
    assert columns(suite, "hotels", "test")["label"] == [3]
    assert columns(suite, "cafes", "test")["label"] == [2]


def write_one_domain(root: Path, fmt: str, bad_split: str, bad_row: str | bytes) -> Path:
    """`root/shop/mugs/{train,dev,test}.<fmt>` with good rows and `bad_row` after the third row of
    `bad_split`. In csv the second row spans two lines."""
    good = {"train": reviews("kitchen", 6), "dev": reviews("kitchen", 4, 6), "test": reviews("kitchen", 4, 10)}
    folder = root / "shop" / "mugs"
    folder.mkdir(parents=True)
    for split, rows in good.items():
        if fmt == "jsonl":
            header, lines = [], [json.dumps({"text": t, "label": y}) for t, y in rows]
        elif fmt == "csv":
            header = ["text,label"]
            lines = [f'"{t}",{y}' if i != 1 else f'"{t}\nStill, it is fine.",{y}' for i, (t, y) in enumerate(rows)]
        else:
            header, lines = ["text\tlabel"], [f"{t}\t{y}" for t, y in rows]
        encoded = [line.encode() for line in header + lines]
        if split == bad_split:
            encoded.insert(len(header) + 3, bad_row if isinstance(bad_row, bytes) else bad_row.encode())
        (folder / f"{split}.{fmt}").write_bytes(b"\n".join(encoded) + b"\n")
    return root / "shop"


# the bad row's line: jsonl 4; tsv 5 (header, three rows); csv 6 (header, three rows, one of them on two lines)
BAD_ROWS = [
    ("jsonl", "train", '{"text": "Chipped on arrival", "label": ', 4,
     r"not valid JSON \(Expecting value at column 41\)"),
    ("jsonl", "train", '["Chipped on arrival", "negative"]', 4, "a JSON list, not an object with text, label"),
    ("jsonl", "train", '{"text": "Chipped on arrival"}', 4, r"missing field\(s\) label"),
    ("jsonl", "train", '{"text": null, "label": "negative"}', 4, "text is null, not a text"),
    ("jsonl", "train", '{"text": "Chipped", "label": 1.5}', 4, "label is 1.5, not a text or an integer"),
    ("jsonl", "train", '{"text": "Chipped", "text_pair": "Returned it", "label": "negative"}', 4,
     "a text_pair, unlike the rows before it"),
    ("jsonl", "dev", '{"text": "Holds tea well enough", "label": "neutral"}', 4,
     r"label 'neutral' is not among the train labels \(negative, positive\)"),
    ("csv", "train", '"Chipped on arrival",negative,5', 6, "3 fields, the header has 2"),
    ("csv", "train", '"   ",negative', 6, "empty text"),
    ("csv", "train", '"Chipped on arrival",', 6, "empty label"),
    ("csv", "test", '"Holds tea well enough",neutral', 6,
     r"label 'neutral' is not among the train labels \(negative, positive\)"),
    ("csv", "train", b'"Caf\xe9 mug, chipped",negative', 6, r"bytes that are not UTF-8 at byte \d+ of the file"),
    ("tsv", "train", "Chipped on arrival", 5, "1 field, the header has 2"),
    ("tsv", "test", "Chipped on arrival\tnegative\t1 star", 5, "3 fields, the header has 2"),
]


@pytest.mark.parametrize("fmt,split,bad_row,line,reason", BAD_ROWS)
def test_a_bad_row_stops_at_its_file_and_line_or_is_skipped_and_counted(tmp_path, fmt, split, bad_row, line, reason):
    shop = write_one_domain(tmp_path, fmt, split, bad_row)
    suite = files.build(f"files:{shop}")
    assert suite.labels == ("negative", "positive")
    with pytest.raises(BenchError, match=rf"mugs/{split}\.{fmt}:{line}: {reason}") as err:
        suite.load("mugs", split, STRICT)
    assert str(err.value).splitlines()[1] == \
        "  fix the row, or pass --skip-bad-rows to skip and count such rows"
    assert len(suite.load("mugs", split, SKIP)) == {"train": 6, "dev": 4, "test": 4}[split]
    assert suite.audit("mugs", SKIP) == {"skipped_bad_rows": 1}


def test_skipped_rows_are_counted_per_domain(root):
    with open(root / "kitchen" / "test.csv", "a", encoding="utf-8") as f:
        f.write('4,"",positive\n4,"Rusty after one wash",\n')
    suite = files.build(f"files:{root}")
    assert len(suite.load("kitchen", "test", SKIP)) == 12
    assert {d: suite.audit(d, SKIP) for d in suite.domains} == {
        "books": {"skipped_bad_rows": 0}, "kitchen": {"skipped_bad_rows": 2}, "movies": {"skipped_bad_rows": 0}}


def test_a_header_without_a_needed_column_stops_at_line_1_even_when_skipping(root):
    path = root / "movies" / "test.tsv"
    path.write_text(path.read_text().replace("label\ttext", "label\treview", 1))
    suite = files.build(f"files:{root}")
    for cfg in (STRICT, SKIP):
        with pytest.raises(BenchError) as err:
            suite.load("movies", "test", cfg)
        assert str(err.value) == (f"{path}:1: the header lacks column(s) text\n  name the columns in the first row: "
                                  "text, label (and optionally text_pair), separated by tabs")
    train = root / "kitchen" / "train.csv"
    train.write_text("stars,review,grade\n5,Lovely,positive\n")
    with pytest.raises(BenchError, match=rf"{train}:1: the header lacks column\(s\) text, label"):
        files.build(f"files:{root}")


def test_a_bom_and_crlf_are_fine_an_unclosed_quote_is_a_bad_row_and_a_header_must_be_utf8(tmp_path):
    folder = tmp_path / "crlf" / "mugs"
    folder.mkdir(parents=True)
    (folder / "train.csv").write_bytes(b'\xef\xbb\xbftext,label\r\n"Cracked,\r\nsadly",negative\r\n'
                                       b"Lovely,positive\r\n")
    (folder / "test.jsonl").write_bytes(b'\xef\xbb\xbf{"text": "Fine", "label": "positive"}\r\n')
    suite = files.build(f"files:{tmp_path / 'crlf'}")
    assert columns(suite, "mugs", "test") == {"text_a": ["Fine"], "text_b": [None], "label": [1], "domain": ["mugs"]}
    assert len(files.parse(folder / "train.csv", False).rows) == 2
    assert files.parse(folder / "train.csv", False).rows[0] == ("Cracked,\r\nsadly", None, "negative")
    with open(folder / "train.csv", "ab") as f:  # the quote never closes: the rest of the file is one field
        f.write(b'"Chipped rim,negative\r\n')
    with pytest.raises(BenchError, match=r"train.csv:5: 1 field, the header has 2"):
        files.parse(folder / "train.csv", False)
    assert files.parse(folder / "train.csv", True).skipped == 1
    (folder / "train.csv").write_bytes(b"t\xe9xt,label\nLovely,positive\n")
    for skip in (False, True):
        with pytest.raises(BenchError, match=r"train.csv:1: bytes that are not UTF-8 at byte 1 of the file"):
            files.parse(folder / "train.csv", skip)


def test_a_folder_that_is_not_a_suite_says_what_is_expected(tmp_path, root):
    hint = "give --suite files:DIR with DIR/<domain>/train.csv, test.csv and optionally dev.csv (or .jsonl, .tsv)"
    with pytest.raises(BenchError) as err:
        files.build(f"files:{tmp_path / 'nowhere'}")
    assert str(err.value) == f"data folder {tmp_path / 'nowhere'} does not exist\n  {hint}"
    (tmp_path / "empty" / "notes").mkdir(parents=True)
    with pytest.raises(BenchError) as err:
        files.build(f"files:{tmp_path / 'empty'}")
    assert str(err.value) == (f"{tmp_path / 'empty'} has no domain folders (sub-folders holding train.jsonl, "
                              f"train.csv or train.tsv)\n  {hint}")
    with pytest.raises(BenchError, match="files: names no folder"):
        files.build("files:")

    (root / "books" / "train.tsv").write_text("text\tlabel\nGood\tpositive\n")
    with pytest.raises(BenchError) as err:
        files.build(f"files:{root}")
    assert str(err.value) == f"{root / 'books'} holds train.jsonl and train.tsv\n  " \
                             "keep one file per split: remove all but one of them"
    (root / "books" / "train.tsv").unlink()
    (root / "kitchen" / "test.csv").rename(root / "kitchen" / "dev.csv")
    with pytest.raises(BenchError) as err:
        files.build(f"files:{root}")
    assert str(err.value) == (f"domain folder {root / 'kitchen'} has no test file (test.jsonl, .csv or .tsv)\n"
                              f"  add its test file, or move the folder out of {root}")
    (root / "kitchen" / "dev.csv").rename(root / "kitchen" / "test.csv")
    (root / "movies" / "train.tsv").unlink()
    with pytest.raises(BenchError, match=r"domain folder .*movies has no train file \(train.jsonl, .csv or .tsv\)"):
        files.build(f"files:{root}")


def test_the_fingerprint_follows_the_bytes_of_the_domain_and_the_label_set(root):
    suite = files.build(f"files:{root}")
    before = {d: suite.fingerprint(d, STRICT) for d in suite.domains}
    assert len(set(before.values())) == 3
    assert files.build(f"files:{root}").fingerprint("books", STRICT) == before["books"]
    path = root / "kitchen" / "test.csv"
    path.write_text(path.read_text().replace("(18)", "(18!)"))
    assert suite.fingerprint("kitchen", STRICT) != before["kitchen"]
    assert suite.fingerprint("books", STRICT) == before["books"]
    # a new label elsewhere changes every domain's head, so every fingerprint
    with open(root / "movies" / "train.tsv", "a", encoding="utf-8") as f:
        f.write("mixed\tThe film is loud but heartfelt.\n")
    grown = files.build(f"files:{root}")
    assert grown.labels == ("mixed", "negative", "neutral", "positive")
    assert grown.fingerprint("books", STRICT) != before["books"]


def test_the_registry_builds_a_folder_once_and_names_it_after_the_folder(root, monkeypatch):
    from bench.plugins import get_registry

    registry = get_registry()
    suite = registry.suite(f"files:{root}")
    monkeypatch.chdir(root.parent)
    assert registry.suite("files:reviews") is suite  # the same folder, relative
    assert suite.name == "files:reviews" and files.suite_name("files:reviews") == "files:reviews"
    assert "files:reviews" not in registry.suites  # not listed with the plugins' suites


# --- through the CLI, on the smoke preset --------------------------------------------------------------------

@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    """kd and tinybert on the three domains, run from a folder with no data dir."""
    base = tmp_path_factory.mktemp("own")
    root = write_reviews(base)
    results, store = base / "runs", base / "store"
    mp = pytest.MonkeyPatch()
    mp.setenv("BENCH_CACHE_DIR", str(store))
    mp.delenv("BENCH_DATA_DIR", raising=False)
    mp.chdir(base)
    code = main(["run", "--methods", "kd,tinybert", "--suite", f"files:{root}", "--preset", "smoke",
                 "--results-dir", str(results)])
    mp.undo()
    return code, root, results, store


def read_all(results):
    return {p.relative_to(results).as_posix(): json.loads(p.read_text()) for p in sorted(results.rglob("*.json"))}


def test_a_run_stores_results_under_the_folder_name_with_labels_and_source(smoke):
    from bench.teachers.outputs import list_caches

    code, root, results, store = smoke
    assert code == 0
    records = read_all(results)
    assert sorted(records) == sorted(f"files:reviews/smoke/{m}/{d}/seed1.json"
                                     for m in ("kd", "tinybert") for d in ("books", "kitchen", "movies"))
    suite = files.build(f"files:{root}")
    sizes = {"books": (20, 12, 12), "kitchen": (18, 2, 12), "movies": (24, 12, 12)}
    for path, record in records.items():
        domain = record["suite"]["domain"]
        assert record["suite"]["name"] == "files:reviews"
        assert record["suite"]["labels"] == ["negative", "neutral", "positive"]
        assert record["suite"]["source"] == str(root)
        assert record["suite"]["version"] == "1"
        assert record["suite"]["left_out"] == {"skipped_bad_rows": 0}
        assert record["suite"]["fingerprint"] == suite.fingerprint(domain, STRICT)
        assert record["suite"]["sizes"] == dict(zip(("train", "dev", "test"), sizes[domain]))
        assert decode_labels(record["test"]["labels"]) == columns(suite, domain, "test")["label"]
    kd, tinybert = (records[f"files:reviews/smoke/{m}/movies/seed1.json"] for m in ("kd", "tinybert"))
    assert kd["teacher"]["key"] == tinybert["teacher"]["key"]  # one teacher per domain, shared
    cached = {(c["identity"]["teacher"], c["identity"]["domain"]) for c in list_caches(store / "teacher-outputs")
              if c["chunks"]}  # the teacher-output cache served the students
    assert cached >= {(records[f"files:reviews/smoke/kd/{d}/seed1.json"]["teacher"]["key"], d)
                      for d in ("books", "kitchen", "movies")}


def test_report_and_data_stats_show_the_domains(smoke, capsys, monkeypatch):
    _, root, results, _ = smoke
    monkeypatch.delenv("BENCH_DATA_DIR", raising=False)
    monkeypatch.chdir(root.parent)  # no ./data here: the files suite needs none
    for argv in (["report", "--results-dir", str(results)],
                 ["report", "--results-dir", str(results), "--suite", f"files:{root}"]):
        assert main(argv) == 0
        out = capsys.readouterr().out
        assert "files:reviews" in out
        header = next(line for line in out.splitlines() if line.startswith("| method"))
        assert [c.strip() for c in header.strip("|").split("|")][1:5] == ["books", "kitchen", "movies", "avg"]
        rows = [line.split("|")[1].strip() for line in out.splitlines() if line.startswith("| ")][1:]
        assert rows[:3] == ["teacher", "kd", "tinybert"]

    assert main(["data", "stats", "--suite", f"files:{root}"]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    cells = ([c.strip() for c in line.strip("|").split("|")] for line in lines[2:])
    stats = {r[0]: dict(zip(header, r)) for r in cells}
    assert list(stats) == ["books", "kitchen", "movies"]
    assert [(s["train"], s["dev"], s["test"]) for s in stats.values()] == \
        [("20", "12", "12"), ("18", "2", "12"), ("24", "12", "12")]
    assert stats["books"]["train labels"] == "negative:10 neutral:0 positive:10"
    assert stats["movies"]["train labels"] == "negative:6 neutral:6 positive:12"
    assert stats["kitchen"]["skipped bad rows"] == "0"


def test_teacher_train_and_retime_find_the_folder(smoke, capsys, monkeypatch, tmp_path):
    _, root, results, store = smoke
    monkeypatch.setenv("BENCH_CACHE_DIR", str(store))
    monkeypatch.delenv("BENCH_DATA_DIR", raising=False)
    monkeypatch.chdir(tmp_path)  # retime rebuilds the suite from the folder its results keep
    assert main(["teacher", "train", "--suite", f"files:{root}", "--preset", "smoke"]) == 0
    trained = dict(line.split(": teacher ") for line in capsys.readouterr().out.splitlines())
    records = read_all(results)
    for domain in ("books", "kitchen", "movies"):
        assert trained[domain].split()[0] == records[f"files:reviews/smoke/kd/{domain}/seed1.json"]["teacher"]["key"]

    copy = tmp_path / "runs"
    for path, record in records.items():
        (copy / path).parent.mkdir(parents=True, exist_ok=True)
        (copy / path).write_text(json.dumps(record))
    assert main(["retime", "--results-dir", str(copy), "--suite", f"files:{root}"]) == 0
    retimed = read_all(copy)
    assert all("retimed" in r for r in retimed.values()) and len(retimed) == 6
    for path, record in retimed.items():
        assert record["metrics"]["accuracy"] == records[path]["metrics"]["accuracy"]


def test_a_few_shot_run_keeps_the_first_train_rows(smoke, monkeypatch):
    _, root, results, store = smoke
    monkeypatch.setenv("BENCH_CACHE_DIR", str(store))
    assert main(["run", "--methods", "kd", "--suite", f"files:{root}", "--preset", "smoke", "--domains", "movies",
                 "--train-ratio", "0.5", "--results-dir", str(results)]) == 0
    record = json.loads((results / "files:reviews-r0.5/smoke/kd/movies/seed1.json").read_text())
    assert record["suite"]["sizes"] == {"train": 12, "dev": 12, "test": 12}
    assert record["teacher"]["key"] != read_all(results)["files:reviews/smoke/kd/movies/seed1.json"]["teacher"]["key"]
