"""Student ids mapped to the teacher's: all-MiniLM-L6-v2 (BERT ids, [CLS]/[SEP]/[PAD]) to
all-mpnet-base-v2 (the same word pieces shifted, <s>/</s>/<pad>), on MNLI- and Amazon-like text."""

import pytest
import torch

import bench.models.packaged as packaged
from bench.data.batching import Collator
from bench.errors import BenchError
from bench.models.classifier import load_tokenizer
from bench.models.vocab import align, to_teacher

REVIEWS = [
    "Great value!!! Bought 2 of these for $39.99 each - still working after 18 months.",
    "The café's crème brûlée recipe was naïve at best; über-sweet, 1/10.",
    "DON'T buy: arrived broken (box #4471), refund took 3-4 weeks...",
    "Works with my Sony WH-1000XM4 & iPhone 12 Pro Max :) 5 stars",
    "Señor Müller's Göttingen-made kettle? Meh. 😐 Too loud at 100°C.",
    "日本語 instructions only, but the pictures were clear enough.",
    "ok",
]
PAIRS = [
    ("The new rights are nice enough.", "Everyone really likes the newest benefits."),
    ("This site includes a list of all award winners and a searchable database of Government Executive articles.",
     "The Government Executive articles housed on the website are not able to be searched."),
    ("uh i don't know i i have mixed emotions about him", "I like him for the most part, but would still enjoy "
     "seeing someone beat him."),
    ("Yeah, I know, and I did that all through college and it worked too.",
     "I did that all through college but it never worked."),
    ("Calcutta seems to be the only other production center having any pretensions to artistic creativity at all.",
     "Most of Calcutta's film production is of a very high artistic quality."),
]


@pytest.fixture(scope="module")
def toks(tmp_path_factory):
    """(teacher, student) tokenizers; all-mpnet-base-v2 from the session's shared assembled copy."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("BENCH_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "packaged-models"))
        mp.setenv("HF_HUB_OFFLINE", "1")
        teacher = load_tokenizer("pkg:all-mpnet-base-v2")
        student = load_tokenizer("pkg:all-MiniLM-L6-v2")
        packaged_dir = packaged.model_dir("all-mpnet-base-v2")
    return teacher, student, packaged_dir


def _batch(student, texts, pairs=False, max_len=128):
    firsts = [t[0] for t in texts] if pairs else texts
    seconds = [t[1] for t in texts] if pairs else None
    enc = student(firsts, seconds, truncation=True, max_length=max_len, return_token_type_ids=True)
    rows = [{"input_ids": i, "token_type_ids": t, "label": 0, "domain_id": 0}
            for i, t in zip(enc["input_ids"], enc["token_type_ids"])]
    return Collator(student.pad_token_id)(rows)


def _rows(batch):
    """Each row's ids up to its length (the attention mask)."""
    return [ids[: int(n)].tolist() for ids, n in zip(batch.input_ids, batch.attention_mask.sum(1))]


def test_single_sentences_map_to_the_teachers_own_encoding(toks):
    teacher, student, _ = toks
    vocab_map = align(teacher, student)
    batch = _batch(student, REVIEWS)
    mapped = to_teacher(batch, vocab_map)
    assert _rows(mapped) == [teacher(t)["input_ids"] for t in REVIEWS]
    assert torch.equal(mapped.attention_mask, batch.attention_mask)
    assert torch.equal(mapped.token_type_ids, batch.token_type_ids) and mapped.input_ids.shape == batch.input_ids.shape
    assert (mapped.input_ids[batch.attention_mask == 0] == teacher.pad_token_id).all()  # MPNet counts positions by it
    assert teacher.unk_token_id in mapped.input_ids  # the emoji: an unknown piece maps to the teacher's [UNK]


def test_truncated_rows_still_match(toks):
    teacher, student, _ = toks
    batch = to_teacher(_batch(student, REVIEWS, max_len=12), align(teacher, student))
    assert _rows(batch) == [teacher(t, truncation=True, max_length=12)["input_ids"] for t in REVIEWS]


def test_pairs_keep_the_students_positions_with_a_single_teacher_separator(toks):
    teacher, student, _ = toks
    vocab_map = align(teacher, student)
    batch = _batch(student, PAIRS, pairs=True)
    mapped = to_teacher(batch, vocab_map)
    sep = teacher.sep_token_id
    for row, (a, b) in zip(_rows(mapped), PAIRS):
        own = teacher(a, b)["input_ids"]  # <s> a </s></s> b </s>
        double = own.index(sep)
        assert own[double + 1] == sep
        assert row == own[:double] + own[double + 1:]  # <s> a </s> b </s>
    assert torch.equal(mapped.attention_mask, batch.attention_mask)


@pytest.mark.parametrize("pairs", [False, True])
def test_every_position_holds_the_same_word_piece(toks, pairs):
    """What intermediate-layer losses rely on: row lengths equal, and position by position the same
    word piece, or the same special token's role."""
    teacher, student, _ = toks
    batch = _batch(student, PAIRS if pairs else REVIEWS, pairs=pairs)
    mapped = to_teacher(batch, align(teacher, student))
    roles = {student.cls_token: teacher.cls_token, student.sep_token: teacher.sep_token,
             student.pad_token: teacher.pad_token, student.unk_token: teacher.unk_token}
    for s_ids, t_ids in zip(batch.input_ids.tolist(), mapped.input_ids.tolist()):
        assert len(s_ids) == len(t_ids)
        s_pieces, t_pieces = student.convert_ids_to_tokens(s_ids), teacher.convert_ids_to_tokens(t_ids)
        assert [roles.get(p, p) for p in s_pieces] == t_pieces
    assert int((mapped.input_ids != teacher.pad_token_id).sum()) == int(batch.attention_mask.sum())


def test_the_same_vocabulary_needs_no_map(toks):
    _, student, _ = toks
    assert align(student, student) is None
    batch = _batch(student, REVIEWS[:2])
    assert to_teacher(batch, None) is batch


def test_the_map_can_live_on_the_batchs_device(toks):
    teacher, student, _ = toks
    vocab_map = align(teacher, student).to("cpu")
    assert vocab_map.map_ids(torch.tensor([[101, 7592, 102, 0]])).tolist() == [[0, 7596, 2, 1]]


def test_a_tokenizer_with_other_word_pieces_is_refused(toks, tmp_path):
    from transformers import BertTokenizerFast

    teacher, student, _ = toks
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "cat", "sat", "qxkdb", "##qxkdb"]))
    tiny = BertTokenizerFast(vocab=str(vocab))
    with pytest.raises(BenchError) as err:
        align(teacher, tiny)
    assert err.value.what.startswith("teacher and student vocabularies differ: 2 of the student's word pieces are "
                                     "not the teacher's ('##qxkdb', 'qxkdb'); 30514 of the teacher's are not the "
                                     "student's ('!', ")
    assert err.value.hint == "pick a teacher and student with the same tokenizer"
    with pytest.raises(BenchError, match=r"30514 of the student's word pieces are not the teacher's \('!', .*, "
                                         r"\.\.\.\); 2 of the teacher's are not the student's \('##qxkdb', 'qxkdb'\)"):
        align(tiny, student)


def test_a_tokenizer_that_splits_text_differently_is_refused(toks):
    """The same word pieces, cased: the student would hand the teacher pieces its own never makes."""
    from transformers import BertTokenizerFast

    teacher, student, packaged_dir = toks
    cased = BertTokenizerFast(vocab=str(packaged_dir / "vocab.txt"), do_lower_case=False,
                              cls_token="<s>", sep_token="</s>", pad_token="<pad>", mask_token="<mask>")
    with pytest.raises(BenchError, match="split text differently \\(normaliser differ\\)"):
        align(cased, student)


@pytest.mark.slow
def test_the_teacher_reads_a_single_separator_pair_as_it_reads_its_own(toks, monkeypatch):
    """The pretrained teacher, before any fine-tuning, on a padded mapped batch: token states at
    aligned positions and mean-pooled sentence embeddings agree with those of its own
    double-separator encoding (cosine > 0.98; measured 0.99 and up), and different pairs stay apart."""
    from bench.models.classifier import ModelSpec, load_encoder

    teacher, student, packaged_dir = toks
    monkeypatch.setenv("BENCH_CACHE_DIR", str(packaged_dir.parent.parent))
    encoder = load_encoder(ModelSpec("pkg:all-mpnet-base-v2")).eval()
    cos = torch.nn.functional.cosine_similarity
    ours = to_teacher(_batch(student, PAIRS, pairs=True), align(teacher, student))
    own = teacher([a for a, _ in PAIRS], [b for _, b in PAIRS], padding=True, return_tensors="pt")
    with torch.inference_mode():
        h_ours = encoder(input_ids=ours.input_ids, attention_mask=ours.attention_mask).last_hidden_state
        h_own = encoder(input_ids=own["input_ids"], attention_mask=own["attention_mask"]).last_hidden_state
    pooled_ours, pooled_own = [], []
    for i, ids in enumerate(own["input_ids"].tolist()):
        n = int(ours.attention_mask[i].sum())
        extra = ids.index(teacher.sep_token_id)  # the first of its two separators
        theirs = torch.cat([h_own[i, :extra], h_own[i, extra + 1:n + 1]])
        assert cos(h_ours[i, :n], theirs, dim=-1).mean() > 0.98
        pooled_ours.append(h_ours[i, :n].mean(0))
        pooled_own.append(h_own[i, :n + 1].mean(0))
    sims = cos(torch.stack(pooled_ours)[:, None], torch.stack(pooled_own)[None], dim=-1)
    assert (sims.diagonal() > 0.98).all()
    assert (sims - torch.eye(len(PAIRS)) * 2 < 0.5).all()  # off the diagonal: unrelated pairs
