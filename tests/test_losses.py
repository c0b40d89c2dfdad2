"""Losses against values computed independently here, with numpy in float64."""

import numpy as np
import pytest
import torch

from bench.api import Batch, ModelOutputs
from bench.losses import kd_kl
from bench.plugins import get_registry


def np_log_softmax(z):
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def np_kd(zs, zt, y, alpha, T):
    log_ps, log_pt = np_log_softmax(zs / T), np_log_softmax(zt / T)
    kl = (np.exp(log_pt) * (log_pt - log_ps)).sum(-1).mean()
    ce = -np_log_softmax(zs)[np.arange(len(y)), y].mean()
    return alpha * T * T * kl, (1 - alpha) * ce


@pytest.fixture
def logits():
    rng = np.random.default_rng(0)
    return rng.normal(size=(5, 3)) * 3, rng.normal(size=(5, 3)) * 3, np.array([0, 2, 1, 1, 0])


def test_kd_kl_matches_numpy(logits):
    zs, zt, _ = logits
    for T in (1.0, 2.0, 4.0):
        log_ps, log_pt = np_log_softmax(zs / T), np_log_softmax(zt / T)
        want = T * T * (np.exp(log_pt) * (log_pt - log_ps)).sum(-1).mean()
        got = kd_kl(torch.tensor(zs), torch.tensor(zt), T).item()
        assert got == pytest.approx(want, rel=1e-10)


def test_kd_kl_is_zero_for_identical_logits(logits):
    zs, _, _ = logits
    assert kd_kl(torch.tensor(zs), torch.tensor(zs), 2.0).item() == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("alpha,T", [(0.5, 2.0), (0.9, 4.0), (0.0, 1.0), (1.0, 3.0)])
def test_kd_distiller_loss_matches_numpy(logits, alpha, T):
    zs, zt, y = logits
    kd = get_registry().distiller("kd")({"alpha": alpha, "temperature": T})
    batch = Batch(*(torch.zeros(5, 4, dtype=torch.long),) * 3, labels=torch.tensor(y),
                  domain_ids=torch.zeros(5, dtype=torch.long))
    parts = kd.loss(batch, ModelOutputs(torch.tensor(zs)), ModelOutputs(torch.tensor(zt)), "main")
    want_kd, want_ce = np_kd(zs, zt, y, alpha, T)
    assert parts["kd"].item() == pytest.approx(want_kd, rel=1e-10, abs=1e-12)
    assert parts["ce"].item() == pytest.approx(want_ce, rel=1e-10, abs=1e-12)


def test_finetune_loss_is_cross_entropy(logits):
    zs, _, y = logits
    ft = get_registry().distiller("finetune")()
    batch = Batch(*(torch.zeros(5, 4, dtype=torch.long),) * 3, labels=torch.tensor(y),
                  domain_ids=torch.zeros(5, dtype=torch.long))
    parts = ft.loss(batch, ModelOutputs(torch.tensor(zs)), None, "main")
    assert parts["ce"].item() == pytest.approx(-np_log_softmax(zs)[np.arange(5), y].mean(), rel=1e-10)


def np_masked_attention_mse(s, t, mask):
    """TinyBERT's attention-score MSE over the real (query, key) pairs of each row, cutting the
    padding away rather than masking it."""
    total, count = 0.0, 0
    for b, n in enumerate(mask.sum(1)):
        ss, tt = s[b, :, :n, :n].copy(), t[b, :, :n, :n].copy()
        ss[ss <= -100], tt[tt <= -100] = 0.0, 0.0
        total += ((ss - tt) ** 2).sum()
        count += ss.size
    return total / count


def np_masked_hidden_mse(hs, ht, w, bias, mask):
    total, count = 0.0, 0
    for b, n in enumerate(mask.sum(1)):
        projected = hs[b, :n] @ w.T + bias
        total += ((projected - ht[b, :n]) ** 2).sum()
        count += projected.size
    return total / count


def test_masked_attention_and_hidden_mse_match_numpy_on_the_real_tokens():
    from bench.losses import attention_score_mse, projected_hidden_mse

    rng = np.random.default_rng(1)
    mask = np.array([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 1, 0, 0, 0]])
    s, t = rng.normal(size=(3, 2, 5, 5)) * 4, rng.normal(size=(3, 2, 5, 5)) * 4
    keys = mask[:, None, None, :].astype(bool)
    s, t = np.where(keys, s, -1e4), np.where(keys, t, -1e4)  # padded keys carry the additive mask
    s[:, :, 3:, :][np.broadcast_to(~mask[:, None, 3:, None].astype(bool), s[:, :, 3:, :].shape)] = 7.0  # noise
    torch_mask = torch.tensor(mask)
    got = attention_score_mse(torch.tensor(s), torch.tensor(t), torch_mask)
    assert got.item() == pytest.approx(np_masked_attention_mse(s, t, mask), rel=1e-12)
    # without a mask: the references' mean over every element (padding included)
    s0, t0 = np.where(s <= -100, 0.0, s), np.where(t <= -100, 0.0, t)
    assert attention_score_mse(torch.tensor(s), torch.tensor(t)).item() == pytest.approx(((s0 - t0) ** 2).mean())

    hs, ht = rng.normal(size=(3, 5, 4)), rng.normal(size=(3, 5, 6))
    projection = torch.nn.Linear(4, 6).double()
    w, bias = projection.weight.detach().numpy(), projection.bias.detach().numpy()
    got = projected_hidden_mse(torch.tensor(hs), torch.tensor(ht), projection, torch_mask)
    assert got.item() == pytest.approx(np_masked_hidden_mse(hs, ht, w, bias, mask), rel=1e-12)
    full = projected_hidden_mse(torch.tensor(hs), torch.tensor(ht), projection)
    assert full.item() == pytest.approx((((hs @ w.T + bias) - ht) ** 2).mean(), rel=1e-12)
