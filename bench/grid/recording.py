"""A finished run as its result record: the student's test metrics as it stands (the domain's
selected checkpoint), the setting it ran under, its training curve and convergence, its
per-example test predictions and its costs; written by the main process alone."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from bench import __version__
from bench.api import Distiller, EvalContext
from bench.grid.failures import clear_failure
from bench.grid.spec import jsonable
from bench.plugins import Registry, plugin_version
from bench.results.convergence import convergence
from bench.results.records import SCHEMA_VERSION, RunKey, git_state, now_utc, write_result
from bench.results.significance import encode_labels
from bench.teachers.store import StoredTeacher
from bench.teachers.supply import TeacherSupply
from bench.training.context import GridContext
from bench.training.memory import peak_rss_mib
from bench.training.trainer import Trained

log = logging.getLogger(__name__)


class Recorder:
    def __init__(self, ctx: GridContext, registry: Registry, teachers: TeacherSupply, machine: dict[str, Any]):
        self.ctx = ctx
        self.registry = registry
        self.teachers = teachers
        self.machine = machine
        # What metrics measured of the preset's student (its latency), by its number of heads: the
        # timing depends on the architecture only, so each is measured once per process, not per run.
        self._measured: dict[int, dict[str, Any]] = {}

    def write(self, key: RunKey, record: dict[str, Any]) -> Path:
        path = key.path(self.ctx.grid.results_dir)
        if not self.ctx.main:
            return path
        write_result(path, record)
        clear_failure(self.ctx.grid.results_dir, key)
        self.registry.pm.hook.bench_run_finished(result=record)
        log.info("%s on %s/%s seed %d: accuracy %.4f -> %s", key.method, key.suite, key.domain,
                 key.seed, record["metrics"].get("accuracy", float("nan")), path)
        return path

    def record(self, key: RunKey, distiller: Distiller, stages: list[Trained], student, extra,
               teacher: StoredTeacher | None, train_seconds: float, trained_on: list[str]) -> dict[str, Any]:
        """Test metrics of the student as it stands (the domain's selected checkpoint) and the
        result record of one (method, domain, seed)."""
        g, p = self.ctx.grid, self.ctx.grid.preset
        data = self.ctx.data(key.domain)
        method = type(distiller)
        fits = [t.fit for t in stages]
        preds, golds = stages[-1].test_preds, stages[-1].test_golds

        eval_start = time.perf_counter()
        timing = self.teachers.timing(teacher)
        ctx = EvalContext(g.suite, key.domain, preds, golds, student, extra, latency=p.latency,
                          teacher_latency=timing["latency"], teacher_params=timing["params"],
                          cache=self._measured.setdefault(len(student.heads), {}))
        metrics = {name: spec.compute(ctx) for name, spec in self.registry.metrics.items() if spec.default}
        eval_seconds = time.perf_counter() - eval_start

        selection = stages[-1].selection
        examples = sum(f.examples for f in fits)
        wall = sum(f.wall_seconds for f in fits)
        plugin = self.registry.owner("distiller", method.name)
        return {
            "schema_version": SCHEMA_VERSION,
            "bench_version": __version__,
            "plugin_versions": {plugin: plugin_version(plugin)},
            "git": git_state(),
            "created": now_utc(),
            "seed": key.seed,
            "preset": p.name,
            # the preset as it ran (a setting changed by --set or a file is named after, not by, its base)
            "setting": {k: v for k, v in p.to_dict().items() if k not in ("name", "suite_overrides")},
            "machine": self.machine,
            "suite": {"name": g.suite.name, "version": g.suite.version, "domain": key.domain,
                      "train_ratio": g.train_ratio, "sizes": data.sizes, "fingerprint": data.fingerprint,
                      "left_out": data.left_out, "trained_on": trained_on,
                      # a files:DIR suite: the folder its name leaves out, and its labels (not fixed by a plugin)
                      **({"labels": list(g.suite.labels), "source": g.suite.source} if g.suite.source else {})},
            "method": {"name": method.name, "label": g.label(method), "plugin": plugin,
                       "config": jsonable(vars(distiller.options)), "student_kind": distiller.student_kind,
                       "layer_map": None if (mapped := distiller.mapped_layers()) is None
                       else [[m, t] for m, t in sorted(mapped.items())]},
            "teacher": None if teacher is None else {
                "ref": p.teacher.ref, "key": teacher.key, "kind": distiller.teacher_kind, "params": timing["params"],
                "precision": g.teacher_precision, "cache": g.teacher_cache,
                "objective": objective.name if (objective := distiller.teacher_objective()) else None,
                "latency": timing["latency"],
                "dev_accuracy": teacher.info.get("dev_accuracy"),
                "test_accuracy": teacher.info.get("test_accuracy"),
                # its training's wall time, whoever trained it (the store keeps it)
                "train_seconds": teacher.info.get("wall_seconds"),
                "reused": not teacher.trained_now},
            "student": {"ref": p.student.ref, "init": p.student.init,
                        "layers": list(p.student.layers) if p.student.layers else None,
                        "precision": g.student_precision},
            "train": {**p.student_train.to_dict(), "max_len": p.max_len, "steps": sum(f.steps for f in fits),
                      "examples": examples, "wall_seconds": round(wall, 3),
                      "examples_per_second": round(examples / wall, 2) if wall else None,
                      "selected_step": selection.step, "best_dev_accuracy": selection.dev_accuracy,
                      **convergence(fits[-1].history, fits[-1].steps, key.domain if len(trained_on) > 1 else None),
                      "history": [h for f in fits for h in f.history]},
            # per-example test predictions in the test set's row order, for paired significance tests
            "test": {"predictions": encode_labels(preds), "labels": encode_labels(golds)},
            "metrics": metrics,
            # teacher time spent by this run: its training when it was trained for it, else 0
            "timings": {"teacher_seconds": teacher.info.get("wall_seconds") if teacher and teacher.trained_now
                        else 0.0,
                        "train_seconds": round(train_seconds, 3), "eval_seconds": round(eval_seconds, 3),
                        # the process's peak RSS over this run's training and testing (per run on Linux)
                        "peak_rss_mib": round(peak_rss_mib())},
        }
