"""The Amazon suite: the real sorted_data_acl files, and fixtures in their layout."""

from pathlib import Path

import pytest
from bench_plugins.suites import amazon

from bench.api import DataConfig
from bench.errors import BenchError

REVIEW = """<review>
<unique_id>
{uid}
</unique_id>
<rating>
{rating}
</rating>
<title>
A title
</title>
<review_text>
{text}
</review_text>
<reviewer>
Someone
</reviewer>
</review>
"""


def write_domain(root: Path, folder: str, n: int = 1000, text: str = "Good &amp; cheap.\n\nWould buy again") -> Path:
    d = root / folder
    d.mkdir(parents=True)
    for label, rating in (("negative", "1.0"), ("positive", "5.0")):
        body = "".join(REVIEW.format(uid=f"{label}{i}", rating=rating, text=f"{text} {label} {i}")
                       for i in range(n))
        (d / f"{label}.review").write_text(body)
    return d


@pytest.mark.parametrize("domain", amazon.DOMAINS)
def test_real_files_hold_1000_reviews_each(data_dir, domain):
    for path in amazon.review_files(data_dir, domain):
        assert len(amazon.parse_reviews(path).reviews) == 1000


@pytest.mark.parametrize("domain", amazon.DOMAINS)
def test_real_split_sizes_are_the_hrkd_ones(data_dir, domain):
    sizes = tuple(len(amazon.load(domain, split, DataConfig(str(data_dir)))) for split in ("train", "dev", "test"))
    assert sizes == amazon.SPLIT_SIZES[domain]
    train = amazon.load(domain, "train", DataConfig(str(data_dir)))
    assert set(train["label"]) == {0, 1}
    assert set(train["domain"]) == {domain}
    assert all(t is None for t in train["text_b"])


def test_splits_are_repeatable_and_keep_the_corpus_duplicates(data_dir):
    """The corpus repeats some review texts (23-46 per domain); the HRKD protocol keeps them,
    so a few test texts also occur in train. Pinning their number pins the seeded split."""
    texts = {s: amazon.load("books", s, DataConfig(str(data_dir)))["text_a"] for s in ("train", "dev", "test")}
    train = set(texts["train"])
    assert sum(t in train for t in texts["test"]) == 3
    amazon._domain_rows.cache_clear()
    assert amazon.load("books", "test", DataConfig(str(data_dir)))["text_a"] == texts["test"]


def test_real_review_text_is_joined_and_entities_decoded(data_dir):
    path = amazon.review_files(data_dir, "kitchen")[0]
    assert path.read_text().count("&quot;") == 21
    reviews = amazon.parse_reviews(path).reviews
    assert not any("&quot;" in r for r in reviews)
    assert sum(r.count('"') for r in reviews) >= 21
    assert not any("\n" in r for r in reviews)


def test_multiline_text_and_entities(tmp_path):
    write_domain(tmp_path / "amazon", "books", n=3)
    reviews = amazon.parse_reviews(tmp_path / "amazon" / "books" / "positive.review").reviews
    assert reviews == [f"Good & cheap. Would buy again positive {i}" for i in range(3)]


def test_the_original_kitchen_folder_name_is_accepted(tmp_path):
    write_domain(tmp_path, "kitchen_&_housewares")
    write_domain(tmp_path, "books", n=1)
    assert len(amazon.load("kitchen", "test", DataConfig(str(tmp_path)))) == 203


def test_a_missing_data_dir_says_what_is_expected(tmp_path):
    with pytest.raises(BenchError, match="no Amazon reviews under") as err:
        amazon.load("books", "train", DataConfig(str(tmp_path)))
    assert "positive,negative" in str(err.value)


def test_a_missing_file_is_named(tmp_path):
    d = write_domain(tmp_path, "books", n=1)
    (d / "negative.review").unlink()
    with pytest.raises(BenchError, match="missing file .*negative.review"):
        amazon.load("books", "train", DataConfig(str(tmp_path)))


def test_a_short_domain_is_refused_not_silently_shrunk(tmp_path):
    write_domain(tmp_path, "books", n=900)
    with pytest.raises(BenchError, match="has 1800 reviews, expected 2000"):
        amazon.load("books", "train", DataConfig(str(tmp_path)))


def test_a_truncated_file_is_reported(tmp_path):
    d = write_domain(tmp_path, "books", n=2)
    path = d / "positive.review"
    path.write_text(path.read_text().rsplit("</review_text>", 1)[0])
    with pytest.raises(BenchError, match="unterminated <review_text>"):
        amazon.parse_reviews(path)


def test_non_utf8_bytes_are_reported_with_their_line_or_skipped(tmp_path):
    d = write_domain(tmp_path, "books", n=2)
    path = d / "positive.review"
    path.write_bytes(path.read_bytes().replace(b"Good", b"G\xffod", 1))
    with pytest.raises(BenchError, match=r"positive.review:\d+: bytes that are not UTF-8 at byte \d+"):
        amazon.parse_reviews(path)
    parsed = amazon.parse_reviews(path, skip_bad_rows=True)
    assert parsed.skipped == 1 and parsed.reviews == ["Good & cheap. Would buy again positive 1"]


def test_an_empty_review_stops_with_its_line_or_is_skipped_and_counted(tmp_path):
    d = write_domain(tmp_path, "books")
    path = d / "negative.review"
    text = path.read_text().replace("Good &amp; cheap.\n\nWould buy again negative 7", "  ", 1)
    path.write_text(text)
    line = text[: text.index("<review_text>\n  \n")].count("\n") + 3
    with pytest.raises(BenchError, match=rf"negative.review:{line}: empty <review_text>") as err:
        amazon.load("books", "train", DataConfig(str(tmp_path)))
    assert "--skip-bad-rows" in str(err.value)
    cfg = DataConfig(str(tmp_path), skip_bad_rows=True)
    assert len(amazon.load("books", "test", cfg)) == 199 - 1  # train and dev keep their sizes
    assert amazon.audit("books", cfg) == {"skipped_bad_rows": 1}


def test_a_byte_order_mark_and_crlf_line_endings_are_fine(tmp_path):
    d = write_domain(tmp_path, "books", n=3)
    path = d / "positive.review"
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes().replace(b"\n", b"\r\n"))
    assert amazon.parse_reviews(path).reviews == [f"Good & cheap. Would buy again positive {i}" for i in range(3)]


def test_fingerprint_follows_the_bytes(tmp_path):
    d = write_domain(tmp_path, "books", n=2)
    before = amazon.fingerprint("books", DataConfig(str(tmp_path)))
    (d / "positive.review").write_text((d / "positive.review").read_text().replace("Good", "Bad"))
    assert amazon.fingerprint("books", DataConfig(str(tmp_path))) != before
