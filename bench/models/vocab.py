"""Teacher and student tokenisation that lines up position by position.

A teacher and a student may share word pieces but number them differently and spell their
special tokens differently: all-mpnet-base-v2 has BERT-uncased's word pieces shifted by 4 and
`<s> </s> <pad> <mask>`, all-MiniLM-L6-v2 BERT-uncased's own ids and `[CLS] [SEP] [PAD] [MASK]`.
Data is tokenised once, with the student's tokenizer; `align` builds a lookup from each student
id to the teacher's id (word pieces by their string, special tokens by role) and `to_teacher`
maps a student batch through it. One student token is one teacher token, so hidden states and
attention maps line up position by position for intermediate-layer losses.

Pairs keep the student's layout. BERT writes `[CLS] a [SEP] b [SEP]`; MPNet's own tokenizer writes
`<s> a </s></s> b </s>`, one token longer. Mapped, a pair becomes `<s> a </s> b </s>`: a single
separator, so no position has to be inserted into the teacher's input or dropped from its
outputs (dropping a column of an attention map would break its softmax normalisation). The
teacher is fine-tuned by the harness on these same mapped inputs, so it learns this layout; and
tests/test_vocab.py measures that the pretrained teacher already reads it almost as it reads its
own (mean-pooled sentence embeddings of both layouts agree closely).
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass
from typing import Any

import torch

from bench.api import Batch
from bench.errors import BenchError

log = logging.getLogger(__name__)

# Special-token roles, each with the attributes a tokenizer may name it by, in order of preference.
ROLES: dict[str, tuple[str, ...]] = {
    "cls": ("cls_token", "bos_token"),
    "sep": ("sep_token", "eos_token"),
    "pad": ("pad_token",),
    "unk": ("unk_token",),
    "mask": ("mask_token",),
}
SHOWN = 5  # missing word pieces named in an error


@dataclass(frozen=True)
class VocabMap:
    """Student token ids -> teacher token ids: `lookup[student_id]` is the teacher's id."""

    lookup: torch.Tensor  # (student vocabulary size,), long
    specials: dict[str, tuple[str, str]]  # role -> (student token, teacher token), for logs and records

    def map_ids(self, input_ids: torch.Tensor) -> torch.Tensor:
        """The teacher's ids for a tensor of student ids, any shape; padding maps to the teacher's pad."""
        lookup = self.lookup if self.lookup.device == input_ids.device else self.lookup.to(input_ids.device)
        # index_select, not lookup[input_ids]: on a busy 2-core CPU the advanced-indexing gather
        # took 8 ms for a 32x128 batch (parallelised over threads), this 5 us.
        return lookup.index_select(0, input_ids.reshape(-1)).view(input_ids.shape)

    def to(self, device: Any) -> VocabMap:
        """The same map on `device`, so mapping a batch there copies nothing."""
        return dataclasses.replace(self, lookup=self.lookup.to(device))

    def describe(self) -> str:
        return ", ".join(f"{s}->{t}" for s, t in self.specials.values() if s != t) or "same special tokens"


def align(teacher_tok, student_tok) -> VocabMap | None:
    """A map from the student's token ids to the teacher's; None when both have the same vocabulary
    (nothing to map).

    Word pieces map by their string, special tokens by role (cls/bos, sep/eos, pad, unk, mask).
    Refuses with a BenchError when the two split text differently (normaliser, pre-tokeniser,
    word-piece model) or when a word piece of either vocabulary is missing from the other: then the
    teacher would see pieces its own tokenizer never produces, or none at all.
    """
    student_vocab, teacher_vocab = student_tok.get_vocab(), teacher_tok.get_vocab()
    if student_vocab == teacher_vocab:
        return None
    _check_same_splitting(teacher_tok, student_tok)
    student_roles, teacher_roles = _role_tokens(student_tok), _role_tokens(teacher_tok)
    student_specials, teacher_specials = _special_tokens(student_tok), _special_tokens(teacher_tok)

    by_role = {s: teacher_roles.get(role) for role, s in student_roles.items()}
    unmatched_roles = [f"{s} ({role})" for role, s in student_roles.items() if by_role[s] is None]
    if unmatched_roles:
        raise BenchError(f"the teacher's tokenizer has no counterpart of the student's {', '.join(unmatched_roles)}",
                         "pick a teacher and student with the same tokenizer")

    _check_same_pieces(
        sorted(p for p in student_vocab if p not in by_role and p not in teacher_vocab),
        sorted(p for p in teacher_vocab if p not in teacher_specials and p not in student_vocab))

    unused = teacher_tok.unk_token_id or 0  # for ids no student token has (none, in practice)
    lookup = torch.full((max(student_vocab.values()) + 1,), unused, dtype=torch.long)
    for piece, sid in student_vocab.items():
        lookup[sid] = teacher_vocab[by_role.get(piece) or piece]
    specials = {role: (s, teacher_roles[role]) for role, s in student_roles.items()}
    vocab_map = VocabMap(lookup, specials)
    log.info("student ids map to the teacher's: %d word pieces; %s", len(student_vocab) - len(student_specials),
             vocab_map.describe())
    return vocab_map


def to_teacher(batch: Batch, vocab_map: VocabMap | None) -> Batch:
    """The teacher's view of a student batch: the same rows, positions, attention mask and token
    types, with each token id mapped to the teacher's. The batch itself when `vocab_map` is None."""
    if vocab_map is None:
        return batch
    return dataclasses.replace(batch, input_ids=vocab_map.map_ids(batch.input_ids))


def _role_tokens(tok) -> dict[str, str]:
    """role -> token string, for the roles the tokenizer has."""
    found = {}
    for role, attrs in ROLES.items():
        for attr in attrs:
            token = getattr(tok, attr, None)
            if token:
                found[role] = str(token)
                break
    return found


def _special_tokens(tok) -> set[str]:
    """Every special token, including added ones that fill no role (MPNet's `<unk>` beside `[UNK]`)."""
    added = getattr(tok, "added_tokens_decoder", {})
    return set(tok.all_special_tokens) | {str(t) for t in added.values() if getattr(t, "special", False)}


def _check_same_pieces(not_in_teacher: list[str], not_in_student: list[str]) -> None:
    """Both ways: a piece only the teacher has is one its own tokenizer may prefer to the student's."""
    def shown(pieces: list[str]) -> str:
        return ", ".join(map(repr, pieces[:SHOWN])) + (", ..." if len(pieces) > SHOWN else "")

    differ = [f"{len(not_in_teacher)} of the student's word pieces are not the teacher's ({shown(not_in_teacher)})"
              ] if not_in_teacher else []
    if not_in_student:
        differ.append(f"{len(not_in_student)} of the teacher's are not the student's ({shown(not_in_student)})")
    if differ:
        raise BenchError(f"teacher and student vocabularies differ: {'; '.join(differ)}",
                         "pick a teacher and student with the same tokenizer")


def _check_same_splitting(teacher_tok, student_tok) -> None:
    """Equal word pieces are not enough: both must cut text into them the same way."""
    teacher, student = _splitting(teacher_tok), _splitting(student_tok)
    if teacher is None or student is None:  # a slow (pure Python) tokenizer: nothing to compare
        return
    differ = [k for k in teacher if teacher[k] != student[k]]
    if differ:
        raise BenchError(f"teacher and student tokenizers split text differently ({', '.join(differ)} differ)",
                         "pick a teacher and student with the same tokenizer")


def _splitting(tok) -> dict[str, Any] | None:
    backend = getattr(tok, "backend_tokenizer", None)
    if backend is None:
        return None
    spec = json.loads(backend.to_str())
    model = {k: v for k, v in spec["model"].items() if k not in ("vocab", "merges", "unk_token")}
    return {"normaliser": spec.get("normalizer"), "pre-tokeniser": spec.get("pre_tokenizer"), "word-piece model": model}


class MappedTeacher(torch.nn.Module):
    """A teacher that reads student batches: maps their ids, then runs the teacher. The harness
    fine-tunes, evaluates and queries the teacher through it, so the teacher is trained on
    exactly the inputs it sees when distilling."""

    def __init__(self, model: torch.nn.Module, vocab_map: VocabMap):
        super().__init__()
        self.model = model
        self.vocab_map = vocab_map

    @property
    def config(self):
        return self.model.config

    def forward(self, batch: Batch, *args: Any, **kwargs: Any):
        return self.model(to_teacher(batch, self.vocab_map), *args, **kwargs)
