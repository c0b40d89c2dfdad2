"""The metakd distiller and its meta-teacher: every score and loss against values computed
independently here with numpy in float64 (content means by slicing real tokens, cosines and
softmaxes written out), the options it refuses, and its stages."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from bench_plugins.distillers import metakd
from torch import nn

from bench.api import Batch, ModelOutputs, TeacherExtras
from bench.errors import BenchError

SEQ, HEADS, CLASSES = 5, 2, 3
LENGTHS = (5, 3, 2)  # rows 1 and 2 are padded
DOMAINS = ("a", "b")
N_TEACHER, TEACHER_WIDTH = 4, 6
N_STUDENT, STUDENT_WIDTH = 2, 4


# -- numpy references -------------------------------------------------------------------------
def np_log_softmax(z):
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def np_softmax(z):
    return np.exp(np_log_softmax(z))


def np_ce(z, y):
    """Cross-entropy per row."""
    return -np_log_softmax(z)[np.arange(len(y)), y]


def np_content_mean(hidden, lengths):
    """Each row's mean over its real tokens after [CLS], by slicing them out (no mask)."""
    return np.stack([hidden[b, 1:n].mean(0) for b, n in enumerate(lengths)])


def np_cos(x, c):
    return (x @ c) / (np.linalg.norm(x, axis=-1) * np.linalg.norm(c))


def np_prototype_scores(embeddings):
    centroids = {d: e.mean(0) for d, e in embeddings.items()}
    scores = {}
    for d, e in embeddings.items():
        others = np.mean([c for o, c in centroids.items() if o != d], axis=0)
        scores[d] = (np_cos(e, centroids[d]) + np_cos(e, others)) / 2
    return scores


def np_expertise(z, y):
    p_gold = np_softmax(z)[np.arange(len(y)), y]
    return 1.0 / (1.0 + np.exp((1.0 - p_gold) ** 2))


def np_linear(x, layer):
    return x @ np_of(layer.weight).T + np_of(layer.bias)


def np_unmask(scores):
    """TinyBERT's rule: scores <= -100 count as the additive mask and become 0."""
    return np.where(scores <= -100.0, 0.0, scores)


def np_row_mse(a, b):
    return ((a - b) ** 2).reshape(len(a), -1).mean(1)


def np_of(t):
    return t.detach().numpy()


# -- inputs -----------------------------------------------------------------------------------
def make_batch(domain_ids, row_ids, labels, lengths=LENGTHS, seq=SEQ):
    mask = torch.zeros(len(lengths), seq, dtype=torch.long)
    for b, n in enumerate(lengths):
        mask[b, :n] = 1
    ids = torch.randint(5, 100, mask.shape) * mask
    return Batch(ids, mask, torch.zeros_like(ids), torch.tensor(labels), torch.tensor(domain_ids),
                 None if row_ids is None else torch.tensor(row_ids))


def scramble(module, seed):
    """Weights and biases of order 1: the init's std 0.02 and zero biases would let a loss that
    drops a term or a bias still match."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * 0.7)
    return module


def float32_tables(tables):
    """Prototype score tensors as prepare() leaves them: float32, one per domain."""
    return {f"prototype_scores.{d}": torch.tensor(t, dtype=torch.float32) for d, t in tables.items()}


def config(layers, hidden, heads=HEADS):
    return SimpleNamespace(num_hidden_layers=layers, hidden_size=hidden, num_attention_heads=heads,
                           initializer_range=0.02)


@pytest.fixture
def rng():
    return np.random.default_rng(0)


# -- scores -----------------------------------------------------------------------------------
def test_content_mean_averages_real_tokens_after_cls(rng):
    lengths = (6, 4, 2, 5)
    hidden = rng.normal(size=(4, 6, 3))
    mask = torch.tensor([[1] * n + [0] * (6 - n) for n in lengths])
    got = metakd.content_mean(torch.tensor(hidden), mask)
    np.testing.assert_allclose(np_of(got), np_content_mean(hidden, lengths), rtol=1e-10)


def test_prototype_scores_match_numpy(rng):
    embeddings = {d: rng.normal(size=(n, 5)) + rng.normal(size=5) for d, n in zip("xyz", (4, 6, 3))}
    got = metakd.prototype_scores({d: torch.tensor(e) for d, e in embeddings.items()})
    want = np_prototype_scores(embeddings)
    assert set(got) == set(want)
    for d in want:
        np.testing.assert_allclose(np_of(got[d]), want[d], rtol=1e-10, err_msg=d)


def test_prototype_scores_need_two_domains(rng):
    with pytest.raises(BenchError, match="only"):
        metakd.prototype_scores({"a": torch.tensor(rng.normal(size=(3, 4)))})


def test_expertise_weights_match_numpy(rng):
    z, y = rng.normal(size=(6, CLASSES)) * 3, np.array([0, 2, 1, 1, 0, 2])
    got = metakd.expertise_weights(torch.tensor(z), torch.tensor(y))
    np.testing.assert_allclose(np_of(got), np_expertise(z, y), rtol=1e-10)


def test_row_scores_look_up_each_rows_domain_and_index(rng):
    tables = {"a": rng.normal(size=4), "b": rng.normal(size=5)}
    domain_ids, row_ids = [1, 0, 1, 0], [3, 2, 0, 1]  # mixed domains, rows out of order
    batch = make_batch(domain_ids, row_ids, [0, 1, 2, 0], lengths=(5, 5, 5, 5))
    got = metakd.row_scores(float32_tables(tables), DOMAINS, batch)
    want = [tables[DOMAINS[d]][r] for d, r in zip(domain_ids, row_ids)]
    np.testing.assert_allclose(np_of(got), want, rtol=1e-6)


def test_row_scores_need_row_ids():
    batch = make_batch([0, 0, 0], None, [0, 1, 2])
    with pytest.raises(BenchError, match="row_ids"):
        metakd.row_scores({"prototype_scores.a": torch.ones(3)}, DOMAINS, batch)


# -- the meta-teacher -------------------------------------------------------------------------
@pytest.mark.parametrize("domain_loss_weight", [0.5, 1.0])
def test_meta_teacher_loss_matches_numpy(rng, monkeypatch, domain_loss_weight):
    hidden_size, domains = 6, ("a", "b", "c")
    objective = metakd.MetaTeacher(domain_loss_weight)
    objective.domains = domains
    modules = objective.modules(SimpleNamespace(hidden_size=hidden_size, hidden_dropout_prob=0.0,
                                                initializer_range=0.02))
    modules = scramble(modules.double(), seed=1).eval()

    lengths, domain_ids, labels = (5, 3, 2, 4), np.array([0, 2, 1, 2]), np.array([1, 0, 2, 2])
    batch = make_batch(domain_ids.tolist(), [1, 0, 2, 3], labels.tolist(), lengths=lengths)
    tables = {"a": rng.normal(size=2), "b": rng.normal(size=3), "c": rng.normal(size=4)}
    hidden = rng.normal(size=(4, SEQ, hidden_size))
    out = ModelOutputs(logits=torch.tensor(rng.normal(size=(4, CLASSES)) * 2),
                       hidden_states=(torch.tensor(rng.normal(size=hidden.shape)), torch.tensor(hidden)))

    perm = [2, 0, 3, 1]  # the domain corruption's shuffle, fixed so the reference can follow it

    def fixed_randperm(n, device=None, **_):
        assert n == len(perm)
        return torch.tensor(perm, device=device)

    monkeypatch.setattr(metakd.torch, "randperm", fixed_randperm)
    got = objective.loss(batch, out, modules, float32_tables(tables))

    w = np.array([tables[domains[d]][r] for d, r in zip(domain_ids, [1, 0, 2, 3])])
    rep = modules["representation"]
    r = np_linear(np_of(rep.embedding.weight)[domain_ids] + np_content_mean(hidden, lengths), rep.dense)
    domain_logits = np_linear(np.tanh(r), modules["classifier"])
    want_ce = (w * np_ce(np_of(out.logits), labels)).mean()
    want_domain = (w * domain_loss_weight * np_ce(domain_logits, domain_ids[perm])).mean()
    assert set(got) == {"ce", "domain"}
    assert got["ce"].item() == pytest.approx(want_ce, rel=1e-5)
    assert got["domain"].item() == pytest.approx(want_domain, rel=1e-5)


def test_meta_teacher_prepare_scores_content_means(rng):
    hidden_size = 4
    # two domains, two batches each of different sizes and padding; row ids number each domain's rows
    plan = {"a": [(3, 5, 0), (2, 4, 3)], "b": [(2, 6, 0), (3, 3, 2)]}  # (rows, seq, first row id)
    train, hidden_of, content = {}, {}, {}
    for d, batches in plan.items():
        train[d], means = [], []
        for rows, seq, first in batches:
            lengths = tuple(int(n) for n in rng.integers(2, seq + 1, size=rows))
            batch = make_batch([DOMAINS.index(d)] * rows, list(range(first, first + rows)), [0] * rows,
                               lengths=lengths, seq=seq)
            hidden = rng.normal(size=(rows, seq, hidden_size)) + 0.5
            hidden_of[id(batch)] = hidden
            train[d].append(batch)
            means.append(np_content_mean(hidden, lengths))
        content[d] = np.concatenate(means)

    def teacher(batch, needs):
        assert "hidden" in needs
        hidden = torch.tensor(hidden_of[id(batch)])
        return ModelOutputs(logits=torch.zeros(len(batch), CLASSES), hidden_states=(torch.zeros_like(hidden), hidden))

    got = metakd.MetaTeacher().prepare(teacher, train)
    want = np_prototype_scores(content)
    assert set(got) == {"prototype_scores.a", "prototype_scores.b"}
    for d in DOMAINS:
        np.testing.assert_allclose(np_of(got[f"prototype_scores.{d}"]), want[d], rtol=1e-5, atol=1e-6, err_msg=d)


# -- the student's distillation ---------------------------------------------------------------
BATCH_DOMAINS, BATCH_ROWS, BATCH_LABELS = [1, 0, 1], [2, 0, 1], [0, 2, 1]
TABLE_SIZES = {"a": 3, "b": 4}


def make_outputs(rng, n_layers, hidden, masked_at, unmasked_at):
    """Random float64 outputs; padded keys hold -1e4, and one entry per layer sits exactly on the
    masking threshold (-100, masked) and one just above it (-99, kept)."""
    keys = make_batch(BATCH_DOMAINS, BATCH_ROWS, BATCH_LABELS).attention_mask.numpy()[:, None, None, :] == 1
    scores = []
    for _ in range(n_layers):
        s = np.where(keys, rng.normal(size=(len(LENGTHS), HEADS, SEQ, SEQ)) * 3, -1e4)
        s[masked_at], s[unmasked_at] = -100.0, -99.0
        scores.append(torch.tensor(s))
    return ModelOutputs(
        logits=torch.tensor(rng.normal(size=(len(LENGTHS), CLASSES)) * 2),
        hidden_states=tuple(torch.tensor(rng.normal(size=(len(LENGTHS), SEQ, hidden))) for _ in range(n_layers + 1)),
        attention_scores=tuple(scores),
    )


@pytest.fixture
def setup(rng):
    """Student and teacher outputs, the prototype tables and the frozen teacher representation."""
    teacher_out = make_outputs(rng, N_TEACHER, TEACHER_WIDTH, masked_at=(0, 1, 3, 1), unmasked_at=(1, 0, 2, 0))
    student_out = make_outputs(rng, N_STUDENT, STUDENT_WIDTH, masked_at=(0, 0, 1, 2), unmasked_at=(2, 1, 0, 1))
    tables = {d: rng.normal(size=n) for d, n in TABLE_SIZES.items()}
    representation = scramble(metakd.DomainRepresentation(TEACHER_WIDTH, len(DOMAINS), 0.02).double(), seed=2).eval()
    return SimpleNamespace(student=student_out, teacher=teacher_out, tables=tables, representation=representation)


def metakd_distiller(setup, options=None):
    d = metakd.MetaKD(options)
    modules = d.extra_modules(config(N_TEACHER, TEACHER_WIDTH), config(N_STUDENT, STUDENT_WIDTH))
    scramble(modules.double(), seed=3)
    d.bind_teacher(TeacherExtras(modules=nn.ModuleDict({"representation": setup.representation}),
                                 tensors=float32_tables(setup.tables),
                                 domains=DOMAINS))
    return d, modules


def np_intermediate_rows(setup, modules, teacher_layers):
    """Per row: the weight (1 + w) g and the summed hidden MSEs, attention MSEs and domain MSE."""
    hs = [np_of(h) for h in setup.student.hidden_states]
    ht = [np_of(h) for h in setup.teacher.hidden_states]
    a_s = [np_unmask(np_of(a)) for a in setup.student.attention_scores]
    a_t = [np_unmask(np_of(a)) for a in setup.teacher.attention_scores]
    fit, domain_ids = modules["fit"], np.array(BATCH_DOMAINS)

    w = np.array([setup.tables[DOMAINS[d]][r] for d, r in zip(BATCH_DOMAINS, BATCH_ROWS)])
    weights = (1 + w) * np_expertise(np_of(setup.teacher.logits), np.array(BATCH_LABELS))
    layers = (0, *teacher_layers)
    hidden = sum(np_row_mse(np_linear(hs[m], fit), ht[g]) for m, g in enumerate(layers))
    attention = sum(np_row_mse(a_s[m - 1], a_t[g - 1]) for m, g in enumerate(layers) if m > 0)

    rep_t = setup.representation
    content_t = np_content_mean(ht[-1], LENGTHS)
    teacher_domain = np_linear(np_of(rep_t.embedding.weight)[domain_ids] + content_t, rep_t.dense)
    rep_s = modules["domain"]  # a student sees one domain: its embedding's only row, whatever the batch's ids
    student_domain = np_linear(np_linear(np_of(rep_s.embedding.weight)[0] + np_content_mean(hs[-1], LENGTHS),
                                         rep_s.dense), fit)
    return weights, hidden, attention, np_row_mse(student_domain, teacher_domain)


CASES = [({}, (2, 4)), ({"layer_map": (1, 3)}, (1, 3)), ({"domain_loss_weight": 0.25}, (2, 4))]


@pytest.mark.parametrize("options,teacher_layers", CASES)
def test_intermediate_loss_matches_numpy_with_batch_mean_weights(setup, options, teacher_layers):
    d, modules = metakd_distiller(setup, options)
    assert d.teacher_layers == teacher_layers
    got = d.loss(make_batch(BATCH_DOMAINS, BATCH_ROWS, BATCH_LABELS), setup.student, setup.teacher, "intermediate")
    weights, hidden, attention, domain = np_intermediate_rows(setup, modules, teacher_layers)
    # every row has the same element count, so each batch MSE is the mean of the rows' MSEs
    scale, weight = weights.mean(), options.get("domain_loss_weight", 0.5)
    want = {"hidden": hidden.mean() * scale, "attention": attention.mean() * scale,
            "domain": weight * domain.mean() * scale}
    assert set(got) == set(want)
    for part in want:
        assert got[part].item() == pytest.approx(want[part], rel=1e-5), part


@pytest.mark.parametrize("options,teacher_layers", CASES)
def test_intermediate_loss_matches_numpy_with_per_example_weights(setup, options, teacher_layers):
    d, modules = metakd_distiller(setup, {**options, "per_example_weights": True})
    got = d.loss(make_batch(BATCH_DOMAINS, BATCH_ROWS, BATCH_LABELS), setup.student, setup.teacher, "intermediate")
    weights, hidden, attention, domain = np_intermediate_rows(setup, modules, teacher_layers)
    weight = options.get("domain_loss_weight", 0.5)
    want = {"hidden": (weights * hidden).mean(), "attention": (weights * attention).mean(),
            "domain": (weights * weight * domain).mean()}
    assert set(got) == set(want)
    for part in want:
        assert got[part].item() == pytest.approx(want[part], rel=1e-5), part


@pytest.mark.parametrize("options,t", [({}, 2.0), ({"temperature": 4.0}, 4.0)])
def test_prediction_loss_is_soft_cross_entropy_summed_over_classes(setup, options, t):
    d, _ = metakd_distiller(setup, options)
    got = d.loss(make_batch(BATCH_DOMAINS, BATCH_ROWS, BATCH_LABELS), setup.student, setup.teacher, "prediction")
    zs, zt = np_of(setup.student.logits), np_of(setup.teacher.logits)
    want = -(np_softmax(zt / t) * np_log_softmax(zs / t)).sum(-1).mean()
    assert set(got) == {"prediction"}
    assert got["prediction"].item() == pytest.approx(want, rel=1e-10)


# -- options and stages -----------------------------------------------------------------------
@pytest.mark.parametrize("options,what", [({"temperature": 0.0}, "temperature must be positive"),
                                          ({"temperature": -2.0}, "temperature must be positive"),
                                          ({"domain_loss_weight": -0.1}, "domain_loss_weight must be >= 0")])
def test_metakd_refuses_bad_options(options, what):
    with pytest.raises(BenchError, match=what):
        metakd.MetaKD(options)


def test_metakd_stages_and_teacher_objective():
    assert metakd.MetaKD.stages == ("intermediate", "prediction")
    d = metakd.MetaKD({"domain_loss_weight": 0.3})
    assert [d.selects_on_dev(s) for s in d.stages] == [False, True]
    objective = d.teacher_objective()
    assert isinstance(objective, metakd.MetaTeacher)
    assert objective.config() == {"domain_loss_weight": 0.3}
