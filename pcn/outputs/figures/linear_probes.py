"""The per-layer linear-probe figure (``probes``, from the linear_probes table)."""
from __future__ import annotations

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns

from pcn.outputs.figures.common import (
    _prepare, _extra_factors, _numeric, _metric, _lines, _legend, _frame, _panels, _panel, _where,
    _n_diverged_runs, _title, _empty, _name, _join_summary, _grid, _finish, _layer_key, _layers,
)


def probes(lp: pd.DataFrame, summary: pd.DataFrame | None = None,
           metrics=("probe_acc", "ridge_mse")) -> plt.Figure:
    """Per-layer linear probes against the CE weight: test accuracy of a logistic-regression
    probe and test MSE of a ridge reconstruction of x from each layer, one line per layer
    (layer 0, the image itself, dashed grey as the reference), one column per rule / model.
    Per run the probe at its largest probed inference step (the eval T; ae: 0)."""
    df = _layers(_prepare(_numeric(_join_summary(lp, summary), ["value", "step"]), _extra_factors(summary)))
    if "run" in df and len(df):
        df = df[df["step"] == df.groupby("run")["step"].transform("max")]
    panels = _panels(df)
    rows = [m for m in metrics if m in set(df.get("metric", []))] or list(metrics)
    layers = sorted(set(df["layer"]) - {"0"}, key=_layer_key)
    colours = dict(zip(layers, sns.color_palette("crest", max(len(layers), 1))), **{"0": "0.55"})
    fig, axes = _grid(len(rows), len(panels), 4.4, 3.2, sharex=True)
    names = {"probe_acc": "probe accuracy (test)", "ridge_mse": "ridge reconstruction MSE (test)",
             "ridge_r2": "ridge reconstruction R²"}
    for j, (facet, label) in enumerate(panels):
        sub = _panel(df, facet, label)
        top = max((lay for lay in sub["layer"] if lay != "0"), key=_layer_key, default=None)
        line = {lay: "layer 0 (x)" if lay == "0" else f"layer {lay}" + (" (top)" if lay == top else "")
                for lay in sorted(set(sub["layer"]), key=_layer_key)}
        sub = sub.assign(line=sub["layer"].map(line))
        pal = {name: colours[lay] for lay, name in line.items()}
        dashes = {name: (4, 2) if lay == "0" else "" for lay, name in line.items()}
        for i, m in enumerate(rows):
            ax = axes[i][j]
            _frame(ax, i, len(rows), _title(_where(facet, label), _n_diverged_runs(sub)),
                   "CE weight w", names.get(m, _name(m)))
            if not _lines(ax, _metric(sub, m), "ce_weight", "value", "line", pal, legend=i == 0, path=False,
                          style="line", dashes=dashes):
                _empty(ax, f"no {m} values")
        _legend(axes[0][j])
    return _finish(fig, "Linear probes per layer vs CE weight (mean ± sd over seeds; x = diverged run)")
