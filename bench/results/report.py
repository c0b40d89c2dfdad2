"""Tables built from the result store only (never from live objects).

One table per (suite, train ratio, preset): a row per method (the teacher first, then the
measured methods, then any rows a paper reports), a column per domain, the average over
domains, the seeds, the parameters, the batch-1 latency and the speed-up over the teacher.
Scores are in percent: the mean over seeds, with the sample standard deviation when there
are several. The table types are in bench/results/tables.py; bench/results/render.py renders
them; bench/results/paper.py reads rows a paper reports.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from typing import Any

import pandas as pd

from bench.errors import BenchError
from bench.results.convergence import convergence
from bench.results.significance import Paired, decode_labels, discordant, pooled
from bench.results.tables import METRICS, TEACHER_ROW, Row, Stat, Table, Versus

log = logging.getLogger(__name__)


STUDENT_LATENCY = "metrics.latency.batch_1.median_ms"
TEACHER_LATENCY = "teacher.latency.batch_1.median_ms"
SPEEDUP = "metrics.speedup.batch_1"
TIMING_FIELDS = ("device", "threads", "seq_len")
# a teacher whose test accuracy is less than this above always answering the most frequent label has not
# learnt the task: what a student distils from it says nothing of the method (MNLI's test sets, 35.7% that
# way: teachers trained on a tenth of their training pairs came out 3 to 15 points above it, on all of them
# 28 to 33)
LEARNT_MARGIN = 0.10


def to_frame(records: Iterable[dict[str, Any]]) -> pd.DataFrame:
    """One row per result, with dotted column names (`method.name`, `metrics.accuracy` ...)."""
    rows = list(records)
    if not rows:
        return pd.DataFrame()
    slim = [{k: v for k, v in r.items() if k != "train"} | {"train": {
        k: v for k, v in (r.get("train") or {}).items() if k != "history"}} for r in rows]
    return pd.json_normalize(slim)


# --- building tables from records ---------------------------------------------------------

def build_tables(records: Iterable[dict[str, Any]], suite: str | None, domain_orders: Mapping[str, Sequence[str]],
                 method_order: Sequence[str] | None = None, *, paper: Sequence[Row] | None = None,
                 metric: str = "accuracy", versus: str | None = None) -> list[Table]:
    """One Table per (suite, train ratio, preset) in the records, in sorted order; `paper`
    rows (see `read_paper`) are appended to each table. A table where method `versus` ran
    compares it with each other measured method (`Table.comparisons`)."""
    if metric not in METRICS:
        raise BenchError(f"unknown report metric {metric!r}", f"use one of: {', '.join(METRICS)}")
    df = to_frame(with_convergence(r) for r in records)
    if df.empty:
        raise BenchError("the results dir holds no results", "run `python -m bench run ...` first")
    if suite is not None:
        df = df[df["suite.name"] == suite]
        if df.empty:
            raise BenchError(f"no results for suite {suite!r}", "check --suite, or run that suite first")
    df = _with_columns(df, metric)
    if "method.label" in df:  # a method run with user options is its own row: kd[temperature=4]
        df["method.name"] = df["method.label"].fillna(df["method.name"])
    teacher_seconds = _teacher_seconds(df)
    tables = []
    for (suite_name, ratio, preset), sub in df.groupby(["suite.name", "suite.train_ratio", "preset"], sort=True):
        _check_one_data(sub, f"{suite_name}/{preset}")
        domains = [d for d in domain_orders.get(suite_name) or [] if d in set(sub["suite.domain"])]
        domains += sorted(set(sub["suite.domain"]) - set(domains))
        reported = [replace(r, scores=dict(r.scores)) for r in paper or []]
        rows = _measured_rows(sub, domains, metric, method_order, teacher_seconds) + reported
        timing = _timing(sub, f"{suite_name}/{preset}")
        majority = _majority(sub, domains)
        unlearnt = _unlearnt_teachers(sub, domains, majority)
        none_learnt = bool(unlearnt) and len(unlearnt) == sum(r.is_teacher for r in rows)
        table = Table(suite_name, float(ratio), preset, metric, domains, rows, timing, _retimed(sub),
                      unconverged=_unconverged(sub), unjudged=_unjudged(sub),
                      retrained_teachers=_retrained_teachers(sub, domains, metric), unlearnt_teachers=unlearnt,
                      majority=None if majority is None else 100 * majority,
                      unranked=frozenset([*domains, "avg"]) if none_learnt else frozenset())
        if versus in set(sub["method.name"]):
            table.versus = versus
            table.comparisons = _comparisons(sub, versus, {r.method: r for r in rows if r.ranked}, domains, metric)
        tables.append(table)
    if paper:
        _warn_unused_paper_columns(paper, tables)
    return tables


def _check_one_data(df: pd.DataFrame, where: str) -> None:
    """Stop when a domain's runs of one table were not all on the same data (`suite.fingerprint`, the
    bytes read) and suite version: averaging them, or ranking one against another, would compare
    other test sets. The report stops rather than splitting the table, so that nothing is dropped
    from a comparison unseen."""
    def column(name: str, width: int) -> pd.Series:
        values = df[name] if name in df else pd.Series(None, index=df.index, dtype=object)
        return values.astype(object).where(values.notna(), "-").astype(str).str[:width]

    data = "suite version " + column("suite.version", 20) + ", data " + column("suite.fingerprint", 12)
    for domain, runs in df.assign(_data=data).groupby("suite.domain", sort=True):
        if runs["_data"].nunique() > 1:
            groups = "; ".join(
                f"{v}: " + ", ".join(f"{m} seed {s}" for m, s in zip(g["method.name"], g["seed"]))
                for v, g in runs.groupby("_data", sort=True))
            raise BenchError(f"{where}: the runs on {domain} were not all on the same data ({groups})",
                             "report runs of one data version together: move the others to a results dir of "
                             "their own (each result's suite.fingerprint says which data it ran on)")


def with_convergence(record: dict[str, Any]) -> dict[str, Any]:
    """A record with `train.converged`: records written before it was recorded get it from their dev
    history, judged as a run does on its last stage (the entries after the last restart of the step
    count; a stage's last evaluation is at its last step)."""
    train = record.get("train") or {}
    history = train.get("history")
    if "converged" in train or not history:
        return record
    starts = [i for i in range(1, len(history)) if history[i]["step"] <= history[i - 1]["step"]]
    last_stage = history[starts[-1] if starts else 0:]
    trained_on = record["suite"].get("trained_on") or []
    judged = convergence(last_stage, last_stage[-1]["step"], record["suite"]["domain"] if len(trained_on) > 1 else None)
    return {**record, "train": {**train, **judged}}


def _unconverged(df: pd.DataFrame) -> list[str]:
    if "train.converged" not in df:
        return []
    late = df[df["train.converged"].eq(False)].sort_values(["method.name", "suite.domain", "seed"])
    return [f"{m} {d} seed {s} (+{g:.1f})" for m, d, s, g in
            late[["method.name", "suite.domain", "seed", "train.last_quarter_gain"]].itertuples(index=False)]


def _unjudged(df: pd.DataFrame) -> dict[str, int]:
    """The methods with runs whose convergence is unknown (bench.results.convergence), and how many."""
    return {str(m): int(n) for m, n in df[df["train.converged"].isna()].groupby("method.name").size().items()}


def _with_columns(df: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Older records lack the newer fields: give them empty columns, so they render as "-"."""
    needed = [f"metrics.{metric}", f"teacher.test_{metric}", "teacher.key", STUDENT_LATENCY, TEACHER_LATENCY,
              "train.converged", "timings.teacher_seconds", "teacher.train_seconds", "test.predictions", "test.labels",
              SPEEDUP, *(f"{p}.params.{k}" for p in ("metrics", "teacher") for k in ("total", "non_embedding")),
              *(f"{p}.latency.{k}" for p in ("metrics", "teacher") for k in TIMING_FIELDS)]
    missing = {c: float("nan") for c in needed if c not in df}
    return df.assign(**missing) if missing else df


def _measured_rows(df: pd.DataFrame, domains: list[str], metric: str, method_order: Sequence[str] | None,
                   teacher_seconds: Mapping[str, float]) -> list[Row]:
    """The teacher, then `method_order`, then any other method alphabetically."""
    rows = _teacher_rows(df, domains, metric, teacher_seconds)
    present = set(df["method.name"])
    methods = [m for m in method_order or [] if m in present] + sorted(present - set(method_order or []))
    return rows + [_method_row(m, df[df["method.name"] == m], domains, metric, teacher_seconds) for m in methods]


def _teacher_rows(df: pd.DataFrame, domains: list[str], metric: str, teacher_seconds: Mapping[str, float]) -> list[Row]:
    """One teacher row per teacher kind (or objective) the methods used ("teacher" when there is one): a
    multi teacher serves every domain under one key, so rows are told apart by (key, domain)."""
    with_teacher = df.dropna(subset=["teacher.key"])
    if with_teacher.empty:
        return []
    kinds = _teacher_kinds(with_teacher)
    names = sorted(set(kinds))
    return [_teacher_row(with_teacher[kinds == kind], domains, metric,
                         TEACHER_ROW if len(names) == 1 else f"{TEACHER_ROW} ({kind})", teacher_seconds)
            for kind in names]


def _teacher_kinds(df: pd.DataFrame) -> pd.Series:
    """Each run's teacher row name part: its objective (Meta-KD's meta-teacher), else its kind."""
    kinds = df["teacher.kind"].fillna("single") if "teacher.kind" in df else pd.Series("single", index=df.index)
    return df["teacher.objective"].fillna(kinds) if "teacher.objective" in df else kinds


def _trainings(df: pd.DataFrame, metric: str) -> pd.DataFrame:
    """One line per distinct training of each (teacher, domain): a teacher trained again (on another
    machine, whose store did not travel) under the same key can come out different in its last bits."""
    return df.drop_duplicates(["teacher.key", "suite.domain", f"teacher.test_{metric}"])


def _retrained_teachers(df: pd.DataFrame, domains: list[str], metric: str) -> list[str]:
    """The (teacher, domain)s whose runs distilled from trainings with different test scores, described."""
    with_teacher = df.dropna(subset=["teacher.key"])
    trainings = _trainings(with_teacher, metric).assign(kind=_teacher_kinds(with_teacher))
    described = []
    for (kind, key, domain), group in trainings.groupby(["kind", "teacher.key", "suite.domain"], sort=False):
        scores = sorted(group[f"teacher.test_{metric}"].dropna())
        if len(scores) > 1:
            described.append((kind, domains.index(domain), domain, ", ".join(f"{100 * v:.1f}" for v in scores)))
    return [f"{kind} {domain} ({scores})" for kind, _, domain, scores in sorted(described)]


def _majority(df: pd.DataFrame, domains: list[str]) -> float | None:
    """The accuracy of answering each domain's most frequent test label, averaged over the domains;
    None where a domain's runs kept no test labels (written before they were recorded)."""
    rates = []
    for domain in domains:
        labels = df.loc[df["suite.domain"] == domain, "test.labels"].dropna()
        if labels.empty:
            return None
        counts = Counter(decode_labels(labels.iloc[0]))  # every run of a table tested on the same data
        rates.append(max(counts.values()) / sum(counts.values()))
    return sum(rates) / len(rates)


def _unlearnt_teachers(df: pd.DataFrame, domains: list[str], majority: float | None) -> list[str]:
    """The teachers (by kind) whose test accuracy, averaged over the domains, is less than LEARNT_MARGIN
    above `majority`, each with that average and the methods distilled from it. Judged on accuracy
    whatever the table's metric: the question is whether the task was learnt."""
    with_teacher = df.dropna(subset=["teacher.key"])
    if majority is None or with_teacher.empty:
        return []
    kinds = _teacher_kinds(with_teacher)
    described = []
    for kind in sorted(set(kinds)):
        runs = with_teacher[kinds == kind]
        per_domain = _teacher_scores(runs, domains, "accuracy")
        if not all(per_domain.values()):
            continue
        average = sum(sum(v) / len(v) for v in per_domain.values()) / len(domains)
        if average < majority + LEARNT_MARGIN:
            methods = ", ".join(sorted(set(runs["method.name"])))
            described.append(f"{kind} {100 * average:.1f} ({methods})")
    return described


def _teacher_scores(df: pd.DataFrame, domains: list[str], metric: str) -> dict[str, list[float]]:
    """Each domain's teacher test scores, one per distinct training (one, unless it was trained again)."""
    trainings = _trainings(df, metric)
    column = f"teacher.test_{metric}"
    return {d: trainings.loc[trainings["suite.domain"] == d, column].dropna().tolist() for d in domains}


def _teacher_row(df: pd.DataFrame, domains: list[str], metric: str, name: str,
                 teacher_seconds: Mapping[str, float]) -> Row:
    teachers = df.drop_duplicates(["teacher.key", "suite.domain"])
    # a domain's cell: its teacher's distinct trainings (mean ± std where it was trained again)
    per_domain = _teacher_scores(df, domains, metric)
    complete = all(len(teachers[teachers["suite.domain"] == d]) == 1 and per_domain[d] for d in domains)
    average = [sum(sum(v) / len(v) for v in per_domain.values()) / len(domains)] if complete else []
    # every run timed the teacher again, in its own process: take the median of all of them
    latency = _median(df, TEACHER_LATENCY)
    return Row(name, is_teacher=True,
               scores={**{d: Stat.of(v) for d, v in per_domain.items()}, "avg": Stat.of(average)},
               params=_largest(teachers, "teacher.params.total"),
               non_embedding=_largest(teachers, "teacher.params.non_embedding"),
               latency_ms=latency, speedup=None if latency is None else 1.0,
               teacher_minutes=_teacher_minutes(df, teacher_seconds))


def _method_row(method: str, df: pd.DataFrame, domains: list[str], metric: str,
                teacher_seconds: Mapping[str, float]) -> Row:
    """A method's average is taken per seed over all domains, then its mean (± std) over
    seeds; a method that lacks a domain has no average."""
    column = f"metrics.{metric}"
    pivot = df.pivot_table(index="seed", columns="suite.domain", values=column)
    average = pivot.reindex(columns=list(domains)).dropna().mean(axis=1).tolist()
    late = df["train.converged"].eq(False)
    known = df["train.converged"].notna().any()
    late_domains = set(df.loc[late, "suite.domain"])
    return Row(method,
               scores={**{d: Stat.of(df.loc[df["suite.domain"] == d, column]) for d in domains},
                       "avg": Stat.of(average)},
               seeds=int(df.groupby("suite.domain")["seed"].nunique().min()),
               params=_largest(df, "metrics.params.total"),
               non_embedding=_largest(df, "metrics.params.non_embedding"),
               # speed-up is the median of per-run ratios, each timed in one process, not the
               # ratio of two medians that may come from differently loaded moments
               latency_ms=_median(df, STUDENT_LATENCY), speedup=_median(df, SPEEDUP),
               train_minutes=_train_minutes(df, domains), teacher_minutes=_teacher_minutes(df, teacher_seconds),
               unconverged=int(late.sum()) if known else None,
               unconverged_in=frozenset(late_domains | ({"avg"} if late_domains else set())))


def _comparisons(df: pd.DataFrame, versus: str, rows: Mapping[str, Row], domains: list[str],
                 metric: str) -> list[Versus]:
    """`versus` against each method of `rows` (the measured students): the difference of their domain
    averages seed by seed, over the seeds both ran on every domain, the domains where `versus` leads
    on the means, and the paired randomisation test over every test example of those seeds."""
    column = f"metrics.{metric}"
    methods = list(rows)
    scores = {m: df[df["method.name"] == m].pivot_table(index="seed", columns="suite.domain", values=column)
              .reindex(columns=domains) for m in methods}
    ours = scores[versus]
    out = []
    for method in [versus, *(m for m in methods if m != versus)]:
        theirs = scores[method]
        paired = (ours - theirs).dropna()
        means = ours.mean() - theirs.mean()
        test = None if method == versus else _paired_test(df, versus, method, list(paired.index), domains)
        out.append(Versus(method, None if method == versus else Stat.of(paired.mean(axis=1)), len(paired),
                          int((means > 0).sum()), int(means.notna().sum()), rows[method].train_minutes,
                          rows[method].teacher_minutes,
                          None if test is None else test.p_value, 0 if test is None else test.examples))
    return out


def _paired_test(df: pd.DataFrame, ours: str, theirs: str, seeds: Sequence[int],
                 domains: Sequence[str]) -> Paired | None:
    """Both methods' test predictions on every (domain, seed) of `seeds`, pooled into one paired
    comparison; None when a run lacks its predictions (written before they were recorded)."""
    runs = df.set_index(["method.name", "suite.domain", "seed"])
    pairs = []
    for domain in domains:
        for seed in seeds:
            a, b = runs.loc[(ours, domain, seed)], runs.loc[(theirs, domain, seed)]
            if isinstance(a, pd.DataFrame) or isinstance(b, pd.DataFrame):
                raise BenchError(f"{ours} or {theirs} has several results for {domain} seed {seed} in one table",
                                 "keep one result per run in the results dirs")
            if not isinstance(a["test.predictions"], (str, list)) or not isinstance(b["test.predictions"], (str, list)):
                return None
            labels = decode_labels(a["test.labels"])
            if labels != decode_labels(b["test.labels"]):
                raise BenchError(f"{ours} and {theirs} were tested on different labels for {domain} seed {seed}",
                                 "compare runs of one suite version and data (their suite.fingerprint)")
            pairs.append(discordant(decode_labels(a["test.predictions"]), decode_labels(b["test.predictions"]),
                                    labels))
    return pooled(pairs) if pairs else None


def _train_minutes(df: pd.DataFrame, domains: Sequence[str]) -> float | None:
    """Student training per seed, in minutes, over the seeds run on every domain (a seed still
    under way would pull the mean down): a run per domain adds up; a run on all domains at once
    (multi, mix) writes the same time into each domain's record, counted once."""
    if "timings.train_seconds" not in df or df["timings.train_seconds"].isna().any():
        return None
    joint = df.get("method.student_kind", pd.Series("single", index=df.index)).isin(["multi", "mix"])
    per_seed = [(g["timings.train_seconds"].iloc[0] if joint[g.index].all() else g["timings.train_seconds"].sum())
                for _, g in df.groupby("seed") if set(domains) <= set(g["suite.domain"])]
    return float(sum(per_seed) / len(per_seed) / 60) if per_seed else None


def _teacher_seconds(df: pd.DataFrame) -> dict[str, float]:
    """Each teacher's training wall time in seconds as recorded, by store key: every run names the
    training of the teacher it used (`teacher.train_seconds`; older records only in the run that
    trained it, `timings.teacher_seconds`, the others 0). Runs that used one training record the same
    value, a teacher trained again on a fresh machine another: the median of the distinct trainings."""
    times = pd.concat([df["teacher.train_seconds"], df["timings.teacher_seconds"]])
    keys = pd.concat([df["teacher.key"], df["teacher.key"]])
    trained = pd.DataFrame({"key": keys, "seconds": times})
    trained = trained[trained["seconds"].gt(0) & trained["key"].notna()]
    return {key: float(pd.Series(sorted(set(seconds))).median())
            for key, seconds in trained.groupby("key")["seconds"]}


def _teacher_minutes(df: pd.DataFrame, teacher_seconds: Mapping[str, float]) -> float | None:
    """The training of the teachers `df`'s runs distilled from, each once, in minutes: 0 without a
    teacher, None when one of them has no recorded training."""
    keys = set(df["teacher.key"].dropna())
    if any(key not in teacher_seconds for key in keys):
        return None
    return sum(teacher_seconds[key] for key in keys) / 60


def _largest(df: pd.DataFrame, column: str) -> float | None:
    value = df[column].max()
    return None if pd.isna(value) else float(value)


def _median(df: pd.DataFrame, column: str) -> float | None:
    values = df[column].dropna()
    return float(values.median()) if len(values) else None


def _timing(df: pd.DataFrame, table: str) -> str | None:
    """The conditions of every latency in the table, e.g. `cpu, 2 threads, sequence length 128`."""
    seen = set()
    for prefix in ("metrics.latency", "teacher.latency"):
        cols = [f"{prefix}.{k}" for k in TIMING_FIELDS]
        for device, threads, seq_len in df[cols].dropna().itertuples(index=False):
            seen.add((str(device), int(threads), int(seq_len)))
    if not seen:
        return None
    described = "; ".join(f"{d}, {t} thread{'s' if t != 1 else ''}, sequence length {n}"
                          for d, t, n in sorted(seen))
    if len(seen) > 1:
        log.warning("%s: latencies were measured under different conditions (%s); compare them with care",
                    table, described)
        return f"mixed: {described}"
    return described


def _retimed(df: pd.DataFrame) -> str | None:
    """The day of the one `bench retime` sitting that timed every run here; "mixed" when runs were
    timed in more than one sitting; None when each run timed itself (under its moment's load)."""
    if "retimed.created" not in df or df["retimed.created"].isna().all():
        return None
    sittings = set(df["retimed.created"].fillna("own run"))
    return sittings.pop()[:10] if len(sittings) == 1 else "mixed"


def _warn_unused_paper_columns(paper: Sequence[Row], tables: Sequence[Table]) -> None:
    known = {"avg"} | {d for t in tables for d in t.domains}
    unused = sorted({k for r in paper for k in r.scores} - known)
    if unused:
        log.warning("paper columns %s match no measured domain; they are left out", ", ".join(unused))
