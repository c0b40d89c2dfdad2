import torch
from torch import nn
from torch.utils.data import DataLoader

from bench.api import Batch
from bench.training.loop import TrainConfig, fit, make_accelerator, param_groups


def toy_batches(n=6, size=4):
    g = torch.Generator().manual_seed(0)
    rows = []
    for _ in range(n):
        ids = torch.randint(0, 5, (size, 3), generator=g)
        rows.append(Batch(ids, torch.ones_like(ids), torch.zeros_like(ids),
                          torch.randint(0, 2, (size,), generator=g), torch.zeros(size, dtype=torch.long)))
    return DataLoader(rows, batch_size=None, shuffle=False)


def test_the_best_dev_checkpoint_is_the_one_kept():
    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    scripted = iter([0.5, 0.9, 0.7, 0.9, 0.6, 0.8])  # best at the second evaluation (step 2)
    snapshots = {}

    def compute_loss(batch):
        return {"ce": nn.functional.cross_entropy(model(batch.input_ids.float()), batch.labels)}

    def evaluate():
        snapshots[len(snapshots) + 1] = model.weight.detach().clone()
        return next(scripted)

    result = fit(model, toy_batches(), compute_loss, evaluate,
                 TrainConfig(epochs=1, batch_size=4, lr=0.1, eval_every=1), make_accelerator())
    assert result.steps == 6 and result.examples == 24
    assert result.selected_step == 2 and result.best_dev_accuracy == 0.9
    assert torch.equal(model.weight, snapshots[2])
    assert not torch.equal(model.weight, snapshots[6])
    assert [h["dev_accuracy"] for h in result.history] == [0.5, 0.9, 0.7, 0.9, 0.6, 0.8]


def test_warmup_then_linear_decay_and_max_steps(monkeypatch):
    model = nn.Linear(3, 2)
    optimizers, lrs = [], []

    class RecordingAdamW(torch.optim.AdamW):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            optimizers.append(self)

    monkeypatch.setattr(torch.optim, "AdamW", RecordingAdamW)

    def compute_loss(batch):
        lrs.append(optimizers[0].param_groups[0]["lr"])
        return {"ce": nn.functional.cross_entropy(model(batch.input_ids.float()), batch.labels)}

    fit(model, toy_batches(n=10), compute_loss, lambda: 0.0,
        TrainConfig(epochs=3, lr=1.0, warmup_ratio=0.2, max_steps=10), make_accelerator())
    assert len(lrs) == 10  # max_steps stops before the 30 steps of 3 epochs
    assert lrs[:3] == [0.0, 0.5, 1.0]  # 2 warm-up steps
    assert lrs[-1] == 1.0 * 1 / 8  # linear decay, reaching 0 after step 10


def test_no_weight_decay_on_biases_and_layer_norms():
    model = nn.Sequential(nn.Linear(3, 3), nn.LayerNorm(3))
    decay, no_decay = param_groups([model], 0.01)
    assert decay["weight_decay"] == 0.01 and len(decay["params"]) == 1
    assert no_decay["weight_decay"] == 0.0 and len(no_decay["params"]) == 3


def test_a_stage_that_keeps_its_last_weights_ignores_dev_accuracy():
    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    scripted = iter([0.5, 0.9, 0.7, 0.9, 0.6, 0.8])

    def compute_loss(batch):
        return {"ce": nn.functional.cross_entropy(model(batch.input_ids.float()), batch.labels)}

    result = fit(model, toy_batches(), compute_loss, lambda: next(scripted),
                 TrainConfig(epochs=1, batch_size=4, lr=0.1, eval_every=1), make_accelerator(), select_best=False)
    last = result.selection.state["weight"]
    assert result.selected_step == 6 and result.best_dev_accuracy == 0.8
    assert torch.equal(model.weight, last)


def test_extra_modules_come_back_to_the_chosen_step_with_the_model():
    """A teacher objective's modules are stored with the teacher: they must match its weights."""
    torch.manual_seed(0)
    model, extra = nn.Linear(3, 2), nn.Linear(2, 2)
    scripted = iter([0.5, 0.9, 0.7, 0.6, 0.6, 0.8])
    snapshots = {}

    def compute_loss(batch):
        return {"ce": nn.functional.cross_entropy(extra(model(batch.input_ids.float())), batch.labels)}

    def evaluate():
        snapshots[len(snapshots) + 1] = extra.weight.detach().clone()
        return next(scripted)

    result = fit(model, toy_batches(), compute_loss, evaluate,
                 TrainConfig(epochs=1, batch_size=4, lr=0.1, eval_every=1), make_accelerator(), extra_modules=extra)
    assert result.selected_step == 2
    assert torch.equal(extra.weight, snapshots[2]) and not torch.equal(extra.weight, snapshots[6])
