"""Figures over training epochs: the training curves (``curves``) and the alignment of the
local rule's update with the BP gradient (``alignment``)."""
from __future__ import annotations

import matplotlib.ticker
import matplotlib.pyplot as plt
import pandas as pd

from pcn.outputs.figures.common import (
    _prepare, _fmt, _extra_factors, _palette, _numeric, _metric, _lines, _legend, _frame, _panels,
    _panel, _where, _n_diverged_runs, _title, _empty, _name, _present, _join_summary, _grid,
    _finish, _layer_key, _layers,
)


def curves(curves_df: pd.DataFrame, summary: pd.DataFrame | None = None,
           metrics=(("test_acc", "val_acc"), ("recon_mse",), ("train_loss",))) -> plt.Figure:
    """Training curves per epoch: accuracy, reconstruction error and loss; one panel per rule."""
    df = _prepare(_join_summary(curves_df, summary), _extra_factors(summary))
    rows = _present(df.columns, metrics) or ["epoch"]
    panels, wpal = _panels(df), _palette(df, "w")
    fig, axes = _grid(len(rows), len(panels), 4.4, 3.0, sharex=True)
    for j, (facet, label) in enumerate(panels):
        sub = _panel(df, facet, label)
        for i, m in enumerate(rows):
            ax = axes[i][j]
            ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
            _frame(ax, i, len(rows), _where(facet, label) or "training", "epoch", _name(m))
            if not _lines(ax, sub, "epoch", m, "w", wpal, legend=i == 0):
                _empty(ax, f"no {m}")
        _legend(axes[0][j], "CE weight")
    return _finish(fig, "Training curves (mean ± sd over seeds; dashed/x = diverged)")


def alignment(al: pd.DataFrame, summary: pd.DataFrame | None = None) -> plt.Figure:
    """Local-vs-BP gradient alignment over training: cosine between the run's local rule's weight
    update (pc for bp runs) and the
    BP gradient of the same objective (logged each epoch on a fixed batch), for all weights
    together (top row) and per layer W_l; one column per rule, one colour per CE weight."""
    df = _layers(_prepare(_numeric(_join_summary(al, summary, drop_ae=True), ["value", "epoch"]),
                          _extra_factors(summary)))
    panels, wpal = _panels(df), _palette(df, "w")
    rows = [("all", "cos")] + [(lay, "cos_W") for lay in sorted(set(_metric(df, "cos_W")["layer"]), key=_layer_key)]
    fig, axes = _grid(len(rows), len(panels), 4.4, 2.6, sharex=True)
    for j, (facet, label) in enumerate(panels):
        sub = _panel(df, facet, label)
        for i, (layer, m) in enumerate(rows):
            ax, tm = axes[i][j], _metric(sub[sub["layer"] == layer], m)
            undefined = _undefined_weights(sub, tm)
            ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
            _frame(ax, i, len(rows), _title(_where(facet, label), _n_diverged_runs(sub)),
                   "epoch (0 = initial weights)", "cos, all weights" if layer == "all" else f"cos, W_{layer}")
            if not _lines(ax, tm, "epoch", "value", "w", wpal, legend=i == 0):
                _empty(ax, "no alignment values" + (f"\n{undefined}" if undefined else ""))
            else:
                ax.axhline(1.0, color="k", lw=0.8, ls=":")
                ax.axhline(0.0, color="0.6", lw=0.8)
                if undefined and i == 0:
                    ax.text(0.02, 0.1, undefined, transform=ax.transAxes, fontsize=7, color="0.3",
                            bbox=dict(facecolor="white", edgecolor="none", alpha=0.8))
        _legend(axes[0][j], "CE weight")
    return _finish(fig, "local-rule update vs BP gradient of the same objective over training "
                        "(cosine; mean ± sd over seeds; dashed/x = diverged)")


def _undefined_weights(sub: pd.DataFrame, tm: pd.DataFrame) -> str:
    """A note naming the CE weights whose cosines are all nan in ``tm`` because the PC update is
    zero there (norm_ratio_W == 0; e.g. w = 1, where F has no energy term), else ''."""
    if tm.empty or "metric" not in sub:
        return ""
    nan_w = [w for w, g in tm.groupby("ce_weight") if g["value"].isna().all()]
    ratio = _metric(sub, "norm_ratio_W")
    zero = [w for w in nan_w
            if len(ratio[ratio["ce_weight"] == w]) and (ratio.loc[ratio["ce_weight"] == w, "value"] == 0).all()]
    if not zero:
        return ""
    return "no cosine at " + ", ".join(f"w={_fmt(w)}" for w in zero) + ": the PC update of these weights is 0"
