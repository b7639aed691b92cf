"""Figures of the inference dynamics: energy and accuracy over the inference steps
(``inference``, from the traces table) and the test-time sensitivity to T and eta
(``sensitivity``)."""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from pcn.outputs.figures.common import (
    _WHOLE_NETWORK, _prepare, _extra_factors, _palette, _numeric, _finite, _metric, _lines,
    _legend, _frame, _panels, _panel, _where, _n_diverged_runs, _title, _empty, _name, _present,
    _mark_T, _join_summary, _grid, _finish,
)


def _whole_network(traces: pd.DataFrame) -> pd.DataFrame:
    if "layer" not in traces:
        return traces
    layer = traces["layer"].astype(str).str.strip().str.lower()
    return traces[layer.isin(_WHOLE_NETWORK)]


def inference(traces: pd.DataFrame, summary: pd.DataFrame | None = None,
              metrics=(("energy", "energy_total"), ("acc", "accuracy", "test_acc"))) -> plt.Figure:
    """Energy and accuracy vs inference step (log steps), one panel per rule, training T marked."""
    df = _prepare(_join_summary(_whole_network(traces), summary, drop_ae=True), _extra_factors(summary))
    rows = _present(set(df["metric"].astype(str)) if "metric" in df else set(), metrics) or ["energy"]
    panels, wpal = _panels(df), _palette(df, "w")
    fig, axes = _grid(len(rows), len(panels), 4.6, 3.3, sharex=True)
    for j, (facet, label) in enumerate(panels):
        sub = _panel(df, facet, label)
        for i, m in enumerate(rows):
            ax, tm = axes[i][j], _finite(_metric(sub, m), ["step", "value"])
            _frame(ax, i, len(rows), _where(facet, label) or "inference", "inference step", _name(m))
            if _lines(ax, tm, "step", "value", "w", wpal, legend=i == 0, marker=None):
                ax.set_xscale("symlog", linthresh=1)
                if m in ("energy_total", "energy") and (tm["value"] > 0).all():
                    ax.set_yscale("log")
                ax.autoscale_view()  # limits for the new scales (seaborn set them for linear ones)
            else:
                _empty(ax, f"no {m} trace")
            _mark_T(ax, sub)
        _legend(axes[0][j], "CE weight")
    return _finish(fig, "Inference dynamics on the test set (mean ± sd over seeds; dashed/x = diverged)")


def sensitivity(sens: pd.DataFrame, summary: pd.DataFrame | None = None,
                metrics=("acc", "recon_mse")) -> plt.Figure:
    """Test-time sensitivity: accuracy and reconstruction MSE against the test-time number of
    inference steps (at the training eta) and against eta (at the training T); one column of
    panels per rule, one colour per CE weight; points where some test images' inference went
    non-finite are ringed."""
    df = _join_summary(sens, summary, drop_ae=True)
    df = _prepare(_numeric(df, ["value", "eta_factor", "test_T", "T"]), _extra_factors(summary))
    panels, wpal = _panels(df), _palette(df, "w")
    rows = [(m, "T") for m in metrics] + [(m, "eta") for m in metrics]
    fig, axes = _grid(len(rows), len(panels), 4.4, 2.9)
    for j, (facet, label) in enumerate(panels):
        sub = _panel(df, facet, label)
        for i, (m, axis) in enumerate(rows):
            ax = axes[i][j]
            if axis == "T":
                sl, x = sub[np.isclose(sub.get("eta_factor", np.nan), 1.0)], "test_T"
                xlabel = "test-time inference steps T (at the training eta)"
            else:
                sl, x = sub[sub.get("test_T", np.nan) == sub.get("T", np.nan)], "eta_factor"
                xlabel = "test-time eta / training eta (at the training T)"
            tm = _finite(_metric(sl, m), [x, "value"])
            _frame(ax, i, None, _title(_where(facet, label), _n_diverged_runs(sub)), xlabel, _name(m))
            if not _lines(ax, tm, x, "value", "w", wpal, legend=i == 0):
                _empty(ax, f"no {m} values")
            else:
                bad = _metric(sl, "nonfinite")
                ring = tm.merge(bad.loc[bad["value"] > 0, ["run", x]], on=["run", x])
                if len(ring):
                    ax.scatter(ring[x], ring["value"], s=70, facecolors="none", edgecolors="red", lw=1,
                               label="non-finite inference", zorder=3)
                if axis == "T":
                    ax.set_xscale("symlog", linthresh=1)
                    _mark_T(ax, sl)
                else:
                    ax.set_xscale("log", base=2)
                    ax.axvline(1.0, color="k", ls=":", lw=1)
                if m.endswith("mse") and (tm["value"] > 0).all():
                    ax.set_yscale("log")
                ax.autoscale_view()
        _legend(axes[0][j], "CE weight")
    return _finish(fig, "Test-time sensitivity to T and eta (mean ± sd over seeds; dashed/x = diverged in training)")
