"""`run --log-with tensorboard`: each student training's curves in event files, one directory a run."""

import json

import pytest

from bench.cli import main
from bench.errors import BenchError
from bench.training.tracking import check_trackers


def scalars(folder):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder))
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def test_tensorboard_gets_each_evaluation(tmp_path, data_dir):
    """The event files hold, at each dev evaluation, the loss, its parts, the dev accuracy and the learning rate
    that the result's history holds (float32 in the events)."""
    pytest.importorskip("tensorboard")
    assert main(["run", "--methods", "kd", "--suite", "amazon", "--domains", "books", "--preset", "smoke",
                 "--log-with", "tensorboard", "--results-dir", str(tmp_path), "--data-dir", str(data_dir)]) == 0
    record = json.loads((tmp_path / "amazon/smoke/kd/books/seed1.json").read_text())
    history = record["train"]["history"]
    got = scalars(tmp_path / "trackers/amazon/smoke/kd/books/seed1")
    assert {"loss", "dev_accuracy", "kd", "ce", "lr"} <= set(got)
    for tag in ("loss", "dev_accuracy", "kd", "ce"):
        assert [s for s, _ in got[tag]] == [h["step"] for h in history] == [3, 6, 9, 12]
        assert [v for _, v in got[tag]] == pytest.approx([h[tag] for h in history], rel=1e-6)
    lr = [v for _, v in got["lr"]]  # linear decay to 0 over 12 steps after warm-up
    assert lr[-1] == 0.0 and lr[0] > lr[1] > lr[2] > 0


def test_a_tracker_that_is_missing_or_unknown_stops_before_training(monkeypatch):
    monkeypatch.setattr("accelerate.utils.is_tensorboard_available", lambda: False)
    with pytest.raises(BenchError) as err:
        check_trackers(["tensorboard"])
    assert str(err.value) == ("--log-with tensorboard: the tensorboard package is not installed\n"
                              "  pip install kd-bench[tensorboard], or leave --log-with out")
    with pytest.raises(BenchError, match="unknown tracker 'tensorbord'; did you mean 'tensorboard'"):
        check_trackers(["tensorbord"])
