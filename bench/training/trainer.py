"""Training on the grid's data, for teachers and students alike: a model fitted on one domain
(`train_and_test`) or on all the grid's domains at once (`train_and_test_joint`), its checkpoint
selected on dev, and tested."""

from __future__ import annotations

from dataclasses import dataclass

from bench.data.batching import MultiDomainLoader, make_loader
from bench.data.domains import DomainData
from bench.measure import accuracy
from bench.presets import TrainConfig
from bench.training.checkpoint import Checkpoint
from bench.training.context import GridContext
from bench.training.loop import FitResult, Selection, fit
from bench.training.predict import predict
from bench.training.tracking import CurveLog


@dataclass
class Trained:
    """A training's figures, and one domain's selected checkpoint with its test predictions."""

    fit: FitResult
    selection: Selection
    test_preds: list[int]
    test_golds: list[int]

    @property
    def test_accuracy(self) -> float:
        return accuracy(self.test_preds, self.test_golds)


class Trainer:
    def __init__(self, ctx: GridContext):
        self.ctx = ctx

    def eval_loader(self, data: DomainData, split: str, tokenizer):
        """Dev or test rows in batches of 64, sorted by length (predictions come back in row order)."""
        rows = data.tokenized(split, tokenizer)
        return self.ctx.accelerator.prepare(make_loader(rows, 64, tokenizer.pad_token_id, shuffle=False,
                                                        by_length=True))

    def train_loader(self, data: DomainData, tokenizer, batch_size: int, seed: int, length_buckets: int):
        """One domain's training rows in batches, shuffled by `seed`."""
        return make_loader(data.tokenized("train", tokenizer), batch_size, tokenizer.pad_token_id, shuffle=True,
                           seed=seed, length_buckets=length_buckets)

    def train_and_test(self, model, compute_loss, data: DomainData, tokenizer, config: TrainConfig, seed: int,
                       desc: str, extra_modules=None, trace=None, select_best: bool = True,
                       checkpoint: Checkpoint | None = None, curves: CurveLog | None = None) -> Trained:
        from accelerate.utils import set_seed

        accelerator = self.ctx.accelerator
        set_seed(seed)
        train_loader = self.train_loader(data, tokenizer, config.batch_size, seed, config.length_buckets)
        dev_loader, test_loader = (self.eval_loader(data, s, tokenizer) for s in ("dev", "test"))
        model.to(accelerator.device)

        def dev_accuracy() -> float:
            return accuracy(*predict(model, dev_loader, accelerator, desc, "while predicting dev"))

        result = fit(model, train_loader, compute_loss, dev_accuracy, config, accelerator,
                     extra_modules=extra_modules, desc=desc, trace=trace, select_best=select_best,
                     checkpoint=checkpoint, checkpoint_every=self.ctx.grid.checkpoint_every,
                     curves=curves and curves.log)
        return Trained(result, result.selection, *predict(model, test_loader, accelerator, desc,
                                                          "while predicting test"))

    def joint_train_loader(self, kind: str, batch_size: int, seed: int, length_buckets: int = 0):
        """multi: a MultiDomainLoader of `batch_size` rows per domain; mix: batches of `batch_size`
        x domains rows of the shuffled union (bucketed by length with `length_buckets`)."""
        from datasets import concatenate_datasets

        tokenizer, domains = self.ctx.student_tokenizer, list(self.ctx.grid.domains)
        train = [self.ctx.data(d).tokenized("train", tokenizer) for d in domains]
        if kind == "multi":
            return MultiDomainLoader({
                d: self.ctx.accelerator.prepare(make_loader(rows, batch_size, tokenizer.pad_token_id, shuffle=True,
                                                            seed=seed + 1009 * i, length_buckets=length_buckets))
                for i, (d, rows) in enumerate(zip(domains, train))})
        return make_loader(concatenate_datasets(train), batch_size * len(domains), tokenizer.pad_token_id,
                           shuffle=True, seed=seed, length_buckets=length_buckets)

    def train_and_test_joint(self, model, compute_loss, kind: str, config: TrainConfig, seed: int, desc: str,
                             extra_modules=None, trace=None, select_best: bool = True,
                             checkpoint: Checkpoint | None = None, curves: CurveLog | None = None
                             ) -> dict[str, Trained]:
        """Train on all the grid's domains at once. multi: MultiDomainBatches of `batch_size`
        rows per domain, each domain's best dev checkpoint kept and tested on that domain; mix:
        batches of `batch_size` x domains rows from the shuffled union, one checkpoint selected
        on the mean dev accuracy over domains."""
        from accelerate.utils import set_seed

        accelerator = self.ctx.accelerator
        set_seed(seed)
        tokenizer, domains = self.ctx.student_tokenizer, list(self.ctx.grid.domains)
        train_loader = self.joint_train_loader(kind, config.batch_size, seed, config.length_buckets)
        dev, test = ({d: self.eval_loader(self.ctx.data(d), split, tokenizer) for d in domains}
                     for split in ("dev", "test"))
        model.to(accelerator.device)

        def dev_accuracy() -> dict[str, float]:
            return {d: accuracy(*predict(model, loader, accelerator, desc, f"while predicting {d} dev"))
                    for d, loader in dev.items()}

        result = fit(model, train_loader, compute_loss, dev_accuracy, config, accelerator,
                     extra_modules=extra_modules, desc=desc, trace=trace, select_on_mean=kind != "multi",
                     select_best=select_best, checkpoint=checkpoint,
                     checkpoint_every=self.ctx.grid.checkpoint_every, curves=curves and curves.log)
        out = {}
        for d in domains:
            selection = result.selections[d] if kind == "multi" else result.selection
            if kind == "multi":
                model.load_state_dict(selection.state)
            out[d] = Trained(result, selection, *predict(model, test[d], accelerator, desc,
                                                         f"while predicting {d} test"))
        return out
