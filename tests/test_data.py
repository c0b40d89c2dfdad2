import datasets
import torch

from bench.data import make_loader, tokenize
from bench.models import load_tokenizer


def test_batches_are_padded_to_their_longest_row_not_max_len():
    tok = load_tokenizer("random:tiny")
    ds = datasets.Dataset.from_dict({
        "text_a": ["short", "a somewhat longer sentence with more words", "mid length one"],
        "text_b": [None, None, None], "label": [0, 1, 0], "domain": ["dvd", "books", "dvd"]})
    enc = tokenize(ds, tok, max_len=128, domains=("books", "dvd"))
    lengths = [len(r) for r in enc["input_ids"]]
    batch = next(iter(make_loader(enc, 3, tok.pad_token_id, shuffle=False)))
    assert batch.input_ids.shape == (3, max(lengths)) and max(lengths) < 128
    assert batch.attention_mask.sum(1).tolist() == lengths
    assert (batch.input_ids[batch.attention_mask == 0] == tok.pad_token_id).all()
    assert batch.labels.tolist() == [0, 1, 0]
    assert batch.domain_ids.tolist() == [1, 0, 1]
    assert batch.row_ids.tolist() == [0, 1, 2]  # tokenize numbers the rows of the split


def test_pairs_get_token_types_and_truncation_respects_max_len():
    tok = load_tokenizer("random:tiny")
    ds = datasets.Dataset.from_dict({
        "text_a": ["the premise " * 40], "text_b": ["the hypothesis"], "label": [2], "domain": ["x"]})
    enc = tokenize(ds, tok, max_len=32, domains=("x",))
    batch = next(iter(make_loader(enc, 1, tok.pad_token_id, shuffle=False)))
    assert batch.input_ids.shape == (1, 32)
    assert set(batch.token_type_ids[0].tolist()) == {0, 1}


def test_shuffling_repeats_with_the_seed():
    tok = load_tokenizer("random:tiny")
    ds = datasets.Dataset.from_dict({"text_a": [f"row {i}" for i in range(20)], "text_b": [None] * 20,
                                     "label": list(range(20)), "domain": ["x"] * 20})
    enc = tokenize(ds, tok, 16, ("x",))

    def order(seed):
        return torch.cat([b.labels for b in make_loader(enc, 4, 0, shuffle=True, seed=seed)]).tolist()

    assert order(7) == order(7)
    assert order(7) != order(8)
    assert sorted(order(7)) == list(range(20))


def test_batches_number_each_row_by_its_index_in_the_split():
    from bench.data import Collator

    rows = datasets.Dataset.from_list([{"input_ids": [101, 7 + i, 102], "token_type_ids": [0, 0, 0], "label": i % 2,
                                        "domain_id": 0, "row_id": i} for i in range(5)])
    loader = make_loader(rows, 2, 0, shuffle=True, seed=3)
    seen = [(b.row_ids.tolist(), b.input_ids[:, 1].tolist()) for b in loader]
    assert sorted(i for ids, _ in seen for i in ids) == list(range(5))
    for ids, tokens in seen:  # each row id names the row it came with
        assert tokens == [7 + i for i in ids]
    assert Collator(0)([{k: v for k, v in rows[0].items() if k != "row_id"}]).row_ids is None
