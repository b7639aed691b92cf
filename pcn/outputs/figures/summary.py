"""Figures of the summary table (one row per run) against the CE weight: the trade-off front
(``tradeoff``), the test metrics (``ce_weight``) and what inference adds (``inference_gain``)."""
from __future__ import annotations

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns

from pcn.outputs.figures.common import (
    _prepare, _fmt, _extra_factors, _palette, _finite, _metric, _lines, _legend, _frame, _facets,
    _panels, _panel, _where, _n_diverged_runs, _title, _empty, _name, _grid, _finish, _log_if_wide,
)


def tradeoff(summary: pd.DataFrame, xs=("gen_mse", "recon_mse"), y: str = "test_acc") -> plt.Figure:
    """Trade-off front: test accuracy against gen_mse (top-down reconstruction from z_L alone,
    the bottleneck measure that compares with an autoencoder; first row) and against recon_mse
    (prediction of x after inference with x clamped; second row), one point per CE weight, one
    line per rule / model.  Both axes carry mean ± sd over seeds, so this figure draws its own
    error bars (seaborn's are along one axis only)."""
    df = _prepare(summary, _extra_factors(summary))
    xs = [x for x in xs if x in df] or ["recon_mse"]
    facets, pal = _facets(df), _palette(df, "label")
    fig, axes = _grid(len(xs), len(facets), 5.2, 4.4)
    for i, x in enumerate(xs):
        for ax, facet in zip(axes[i], facets):
            panel = df[df["facet"] == facet]
            _front(ax, panel, x, y, pal)
            log = _log_if_wide(ax, _finite(panel, [x, y])[x])
            ax.set(xlabel=_name(x) + (" (lower is better, log scale)" if log else " (lower is better)"),
                   ylabel=_name(y), title=_title(facet, _n_diverged_runs(panel)))
    return _finish(fig, "Classification-reconstruction trade-off (mean ± sd over seeds)")


def _front(ax, df: pd.DataFrame, x: str, y: str, pal: dict) -> None:
    """One front per line label: the seed means of (x, y) per CE weight with sd error bars, the
    weights annotated; diverged runs as x."""
    sub = _finite(df, [x, y])
    stats = sub[~sub["diverged"]].groupby(["label", "ce_weight"])[[x, y]].agg(["mean", "std"]).fillna(0.0)
    for label, g in stats.groupby(level="label"):
        mx, my = g[(x, "mean")], g[(y, "mean")]
        ax.errorbar(mx, my, xerr=g[(x, "std")], yerr=g[(y, "std")], marker="o", ms=5, lw=1.5, capsize=2,
                    color=pal[label], label=label)
        for (_, w), px, py in zip(g.index, mx, my):
            ax.annotate(_fmt(w), (px, py), textcoords="offset points", xytext=(4, 4), fontsize=7,
                        color=pal[label])
    for label, g in sub[sub["diverged"]].groupby("label"):
        ax.scatter(g[x], g[y], marker="x", s=50, color=pal[label], label=f"{label} (diverged)")
    if sub.empty:
        _empty(ax, "no finite results")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8, title="labels: CE weight w", title_fontsize=7)


def inference_gain(summary: pd.DataFrame, metrics=("acc", "gen_mse")) -> plt.Figure:
    """What inference adds: test accuracy and gen_mse at inference step 0 (the initial guess),
    at the training T and at 10 T (the summary's ``{metric}_{stage}`` columns, from the probe
    traces) against the CE weight; one panel column per rule (and init, when swept), one line
    per stage, mean ± sd over seeds."""
    from pcn.outputs.aggregate import STAGES

    df = _prepare(summary, _extra_factors(summary))
    df = df[df["model"].astype(str) == "pcn"] if "model" in df else df
    long = [df.assign(stage=stage, value=pd.to_numeric(df.get(f"{m}_{stage}"), errors="coerce"), metric=m)
            for m in metrics for stage in STAGES if f"{m}_{stage}" in df]
    panels = _panels(df)
    fig, axes = _grid(len(metrics), max(len(panels), 1), 4.6, 3.3, sharex=True)
    table = pd.concat(long, ignore_index=True) if long else pd.DataFrame()
    pal = dict(zip(STAGES, sns.color_palette("rocket_r", len(STAGES))))
    for j, (facet, label) in enumerate(panels or [("", "")]):
        for i, m in enumerate(metrics):
            ax = axes[i][j]
            _frame(ax, i, len(metrics), _where(facet, label) or "inference", "CE weight w",
                   ("test " if m == "acc" else "") + _name(m))
            sub = _metric(_panel(table, facet, label), m) if not table.empty else table
            ok = _finite(sub, ["ce_weight", "value"]) if not table.empty else table
            if table.empty or not _lines(ax, ok, "ce_weight", "value", "stage", pal, legend=i == 0):
                _empty(ax, "no probe traces in the summary")
            elif m != "acc" and _log_if_wide(ax, ok["value"], axis="y"):
                ax.set_ylabel(ax.get_ylabel() + " (log scale)")
        _legend(axes[0][j], "inference step")
    return _finish(fig, "What inference adds: step 0 vs T vs 10 T (mean ± sd over seeds)")


def ce_weight(summary: pd.DataFrame, metrics=("test_acc", "recon_mse", "gen_mse")) -> plt.Figure:
    """Accuracy and reconstruction (and generation) error vs CE weight, one line per rule / model."""
    df = _prepare(summary, _extra_factors(summary))
    metrics = [m for m in metrics if m in df] or ["test_acc"]
    facets, pal = _facets(df), _palette(df, "label")
    fig, axes = _grid(len(metrics), len(facets), 5, 3.2, sharex=True)
    for j, facet in enumerate(facets):
        sub = df[df["facet"] == facet]
        for i, m in enumerate(metrics):
            _frame(axes[i][j], i, len(metrics), _title(facet, _n_diverged_runs(sub)), "CE weight w", _name(m))
            if not _lines(axes[i][j], sub, "ce_weight", m, "label", pal, legend=i == 0, path=False):
                _empty(axes[i][j], "no finite results")
        _legend(axes[0][j])
    return _finish(fig, "Test metrics vs CE weight (mean ± sd over seeds; x = diverged run)")
