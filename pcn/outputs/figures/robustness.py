"""Inference under corrupted inputs (issue 23 item 3): figure ``robustness``, from the
robustness table (pcn/study/robustness.py).

For every corruption (columns: none, Gaussian noise sigma 0.25 / 0.5 / 1, random 25 % / 50 %
of the pixels occluded, the bottom half occluded) it draws the accuracy and the generation MSE
against the clean image, against the CE weight, with one line per inference stage: step 0
(the first guess), T and 10 T (T = the training T).  A line of T or 10 T above (accuracy) or
below (MSE) the step-0 line is inference beating its own first guess.  Rows: metric x rule
(and init, model, dataset); mean ± sd over seeds.
"""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

from pcn.outputs.aggregate import corruption_label
from pcn.outputs.figures.common import (
    _prepare, _extra_factors, _numeric, _finite, _metric, _lines, _legend, _frame, _empty, _name,
    _join_summary, _grid, _finish, _n_diverged_runs, _title,
)

METRICS = ("acc", "gen_mse")
STAGES = ("step 0", "T", "10 T")


def stage_of(step: pd.Series, T: pd.Series) -> pd.Series:
    """Inference stage of each row: "step 0" at step 0, "T" at the training T, "10 T" at
    10 x T; "" for any other step."""
    step, T = pd.to_numeric(step, errors="coerce"), pd.to_numeric(T, errors="coerce")
    out = np.where(step == 0, "step 0", np.where(step == T, "T", np.where(step == 10 * T, "10 T", "")))
    return pd.Series(out, index=step.index)


def robustness(table: pd.DataFrame, summary: pd.DataFrame | None = None) -> plt.Figure:
    """Accuracy and generation MSE (against the clean image) vs CE weight, one line per
    inference stage; columns = corruption, rows = metric x rule (module docstring)."""
    df = _join_summary(table, summary, drop_ae=True)
    df = _prepare(_numeric(df, ["value", "step", "level", "T"]), _extra_factors(summary))
    df["stage"] = stage_of(df["step"], df["T"]) if "T" in df else ""
    df = df[df["stage"] != ""]
    df["corruption_label"] = [corruption_label(str(c), float(v)) for c, v in zip(df["corruption"], df["level"])]
    order = list(dict.fromkeys(df.sort_values(["corruption", "level"], key=_corruption_order)["corruption_label"]))
    rows = [(m, f, lab) for m in METRICS for f, lab in sorted(set(zip(df["facet"], df["label"])))]
    rows = rows or [(m, "", "") for m in METRICS]
    pal = dict(zip(STAGES, sns.color_palette("rocket_r", 3)))
    fig, axes = _grid(len(rows), max(len(order), 1), 2.8, 2.3)
    for j, c in enumerate(order or [""]):
        for i, (m, facet, label) in enumerate(rows):
            ax = axes[i][j]
            sub = df[(df["corruption_label"] == c) & (df["facet"] == facet) & (df["label"] == label)]
            head = _title(" ".join(p for p in (c, facet, label) if p), _n_diverged_runs(sub) if len(sub) else 0)
            _frame(ax, 0, None, head, "CE weight w", f"{_name(m)}")
            tm = _finite(_metric(sub, m), ["ce_weight", "value"])
            if not _lines(ax, tm, "ce_weight", "value", "stage", pal, legend=(i == 0 and j == 0)):
                _empty(ax, f"no {_name(m)}")
            elif m.endswith("mse") and (tm["value"] > 0).all():
                ax.set_yscale("log")
    _legend(axes[0][0], "inference")
    return _finish(fig, "Inference from corrupted images, scored against the clean image "
                        "(mean ± sd over seeds; x = diverged)")


def _corruption_order(col: pd.Series) -> pd.Series:
    """Sort key: none, noise, pixels, half (then any other name), levels ascending."""
    rank = {"none": 0, "noise": 1, "pixels": 2, "half": 3}
    return col.map(lambda v: rank.get(v, 9)) if col.name == "corruption" else col
