"""Heatmaps of the per-layer domain ratios a method traced during training (HRKD's picture of
which domains each layer learns from, and how that moves over training).

A method's `trace()` is stored with every dev evaluation in the result's `train.history`; a
trace with `ratios` (layers x domains, each layer summing to 1) and `domains` is drawn here, one
PNG per training: a row of panels per layer, domains against steps. The domains of a joint
(multi-domain) training share one history, so one file stands for all of them.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from bench.errors import BenchError
from bench.results.plots import DPI, _save
from bench.results.tables import Table


def ratio_traces(records: Iterable[dict[str, Any]], suite: str | None = None) -> dict[str, dict[str, Any]]:
    """One record per training whose history traced ratios, keyed by the file stem it is drawn to."""
    out: dict[str, dict[str, Any]] = {}
    for r in records:
        if suite not in (None, r["suite"]["name"]):
            continue
        if not any("ratios" in (h.get("trace") or {}) for h in r["train"].get("history", [])):
            continue
        ratio = r["suite"].get("train_ratio", 1.0)
        name = r["suite"]["name"] + (f"-r{ratio:g}" if ratio < 1.0 else "")
        stem = f"{name}-{r['preset']}-{r['method']['label']}-seed{r['seed']}-ratios"
        out.setdefault(stem.replace("/", "_"), r)
    return out


def drawn_ratio_plots(records: Iterable[dict[str, Any]], tables: Sequence[Table],
                      out_dir: str | Path) -> dict[str, list[tuple[str, Path]]]:
    """The heatmaps an earlier `--ratios out_dir` drew of these tables' trainings, as (method and
    seed, path) by table slug, for the page to link."""
    slugs = {(t.suite, t.train_ratio, t.preset): t.slug for t in tables}
    out: dict[str, list[tuple[str, Path]]] = {}
    for stem, r in sorted(ratio_traces(records).items()):
        slug = slugs.get((r["suite"]["name"], float(r["suite"].get("train_ratio", 1.0)), r["preset"]))
        path = Path(out_dir) / f"{stem}.png"
        if slug is not None and path.is_file():
            out.setdefault(slug, []).append((f"{r['method']['label']} seed {r['seed']}", path))
    return out


def plot_ratios(record: dict[str, Any], path: Path) -> Path:
    """Per layer (embeddings first), each domain's ratio at every traced step, as a heatmap."""
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    points = [h for h in record["train"]["history"] if "ratios" in (h.get("trace") or {})]
    steps = [h["step"] for h in points]
    domains = points[0]["trace"]["domains"]
    ratios = np.array([h["trace"]["ratios"] for h in points])  # (steps, layers, domains)
    layers = ratios.shape[1]
    fig = Figure(figsize=(max(6.4, 0.25 * len(steps) + 2.5), 0.9 + 0.55 * len(domains) * layers), dpi=DPI,
                 layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(layers, 1, sharex=True, squeeze=False)[:, 0]
    uniform = 1.0 / len(domains)
    # centred on the uniform weight 1/D, so a panel shows which domains a layer favours
    spread = max(float(np.abs(ratios - uniform).max()), 1e-3)
    for layer, ax in enumerate(axes):
        image = ax.imshow(ratios[:, layer, :].T, aspect="auto", cmap="RdBu_r", interpolation="nearest",
                          vmin=uniform - spread, vmax=uniform + spread)
        ax.set_yticks(range(len(domains)), domains, fontsize=8)
        ax.set_ylabel("emb" if layer == 0 else f"layer {layer}", fontsize=8)
    ticks = np.linspace(0, len(steps) - 1, min(len(steps), 8)).round().astype(int)
    axes[-1].set_xticks(ticks, [str(steps[i]) for i in ticks], fontsize=8)
    axes[-1].set_xlabel("training step (ratios averaged since the previous point)")
    fig.colorbar(image, ax=list(axes), label=f"domain ratio (uniform = {uniform:.3g})", shrink=0.8)
    fig.suptitle(f"{record['method']['label']} on {record['suite']['name']} ({record['preset']}, "
                 f"seed {record['seed']})", fontsize=10)
    return _save(fig, path)


def write_ratio_plots(records: Iterable[dict[str, Any]], out_dir: str | Path, suite: str | None = None) -> list[Path]:
    traces = ratio_traces(records, suite)
    if not traces:
        raise BenchError("no result in the store traced domain ratios",
                         "run a method that traces them first, e.g. `python -m bench run --methods hrkd ...`")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    return [plot_ratios(record, out / f"{stem}.png") for stem, record in sorted(traces.items())]
