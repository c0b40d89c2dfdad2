import datasets
import torch

from bench.data.batching import make_loader, tokenize
from bench.models.classifier import load_tokenizer


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
    from bench.data.batching import Collator

    rows = datasets.Dataset.from_list([{"input_ids": [101, 7 + i, 102], "token_type_ids": [0, 0, 0], "label": i % 2,
                                        "domain_id": 0, "row_id": i} for i in range(5)])
    loader = make_loader(rows, 2, 0, shuffle=True, seed=3)
    seen = [(b.row_ids.tolist(), b.input_ids[:, 1].tolist()) for b in loader]
    assert sorted(i for ids, _ in seen for i in ids) == list(range(5))
    for ids, tokens in seen:  # each row id names the row it came with
        assert tokens == [7 + i for i in ids]
    assert Collator(0)([{k: v for k, v in rows[0].items() if k != "row_id"}]).row_ids is None


def rows_of_lengths(lengths):
    return datasets.Dataset.from_list([{"input_ids": [101] + [7] * (n - 2) + [102], "token_type_ids": [0] * n,
                                        "label": 0, "domain_id": 0, "row_id": i} for i, n in enumerate(lengths)])


def test_length_buckets_pad_less_and_still_shuffle_every_row_once():
    from bench.data.batching import SeededShuffle

    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(3, 120, (203,), generator=g).tolist()
    sampler = SeededShuffle(len(lengths), seed=5, lengths=lengths, batch_size=8, buckets=5)
    first, second = list(sampler), list(sampler)
    assert sorted(first) == sorted(second) == list(range(203)) and first != second  # a new order each pass
    assert list(SeededShuffle(203, 5, lengths, 8, 5)) == first  # the same seed, the same order

    def padded(order):  # positions a batch of 8 pads to, summed: what the models compute on
        return sum(max(lengths[i] for i in order[k:k + 8]) * len(order[k:k + 8]) for k in range(0, len(order), 8))

    plain = list(SeededShuffle(203, 5))
    assert padded(first) < 0.75 * padded(plain)
    # within each chunk of 5 batches the rows are sorted by length, so every full batch holds rows
    # whose lengths are neighbours in that chunk's sorted order
    chunk_sorted = set()
    for start in range(0, 200, 40):
        ranks = sorted(torch.randperm(203, generator=torch.Generator().manual_seed(5 * 1_000_003))[start:start + 40]
                       .tolist(), key=lambda i: lengths[i])
        chunk_sorted |= {tuple(ranks[k:k + 8]) for k in range(0, 40, 8)}
    assert {tuple(first[k:k + 8]) for k in range(0, 200, 8)} == chunk_sorted
    assert first[200:] == sorted(first[200:], key=lambda i: lengths[i])  # the partial batch stays last


def test_a_bucketed_loader_resumes_mid_pass_where_it_stood():
    from bench.data.batching import seek

    lengths = [3 + (i * 37) % 50 for i in range(30)]
    loader = make_loader(rows_of_lengths(lengths), 4, 0, shuffle=True, seed=2, length_buckets=2)
    whole = [[b.row_ids.tolist() for b in loader] for _ in range(2)]  # two passes
    again = make_loader(rows_of_lengths(lengths), 4, 0, shuffle=True, seed=2, length_buckets=2)
    seek(again, 1, 3)  # the second pass, after its first three batches
    assert [b.row_ids.tolist() for b in again] == whole[1][3:]
    for batch in whole[0]:
        assert len(batch) == 4 or batch is whole[0][-1]


def test_an_evaluation_loader_takes_rows_by_length_and_predict_returns_them_in_row_order(data_dir):
    """Real MNLI test pairs through the cpu preset's 3-layer student: shortest first, the batches
    pad far less, and `predict` gives the same predictions, in the dataset's order, as file order."""
    from accelerate import Accelerator
    from bench_plugins.suites import mnli

    from bench.api import DataConfig
    from bench.models.classifier import ModelSpec, build_classifier
    from bench.training.predict import predict

    tok = load_tokenizer("pkg:all-MiniLM-L6-v2")
    test = mnli.load("fiction", "test", DataConfig(str(data_dir))).select(range(300))
    enc = tokenize(test, tok, 128, mnli.DOMAINS)
    file_order, by_length = (make_loader(enc, 64, tok.pad_token_id, shuffle=False, by_length=b) for b in (False, True))
    lengths = [len(ids) for ids in enc["input_ids"]]
    taken = [i for b in by_length for i in b.row_ids.tolist()]
    assert sorted(taken) == list(range(300)) and [lengths[i] for i in taken] == sorted(lengths)

    def padded(loader):
        return sum(b.input_ids.numel() for b in loader)
    assert padded(by_length) < 0.6 * padded(file_order)

    torch.manual_seed(0)
    model = build_classifier(ModelSpec("pkg:all-MiniLM-L6-v2", init="truncate", layers=(0, 2, 4)), 3)
    accelerator = Accelerator(cpu=True)
    preds, golds = predict(model, accelerator.prepare(by_length), accelerator)  # as the runner's, wrapped
    assert (preds, golds) == predict(model, file_order, accelerator)
    assert golds == enc["label"] and len(set(preds)) > 1  # the real labels, row by row; not one class
