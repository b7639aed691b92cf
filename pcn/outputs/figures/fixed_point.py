"""Fixed point versus trajectory (issue 23 item 2): figure ``dynamics``, from the traces table.

Per run and recorded inference step t (out to 100 T by default, ``probe.trace_factor``) it
draws the readout accuracy, the generation MSE, the energy E(z^t; x) and the relative update
r_t = ||z^t - z^(t-1)|| / ||z^t|| (``relative_update``: the whole-network ``dz_norm`` over the
root of the summed squared per-layer ``z_norm``; the summary's ``settle_*`` columns are r at
its stages).  A fixed point that classifies is one where r_t falls towards 0 while the accuracy
holds.  One line per rule (and per model / other swept factor), mean ± sd over seeds; panels:
rows = init x metric, columns = dataset x CE weight; the training T is dotted.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import matplotlib.pyplot as plt

from pcn.outputs.figures.common import (
    _WHOLE_NETWORK, _prepare, _extra_factors, _palette, _finite, _metric, _lines, _legend, _frame,
    _empty, _name, _mark_T, _join_summary, _grid, _finish, _fmt,
)

#: (metric of the long table, axis label) drawn, in row order within an init.
METRICS = (("acc", "accuracy"), ("gen_mse", "generation MSE"), ("energy", "energy"),
           ("rel_update", "relative update ||dz|| / ||z||"))


def relative_update(traces: pd.DataFrame) -> pd.DataFrame:
    """Rows (run, step, metric "rel_update", value) with r_t = dz_norm(all)_t / sqrt(sum_l
    z_norm_l(t)^2) over the latent layers (nan where ||z^t|| = 0; no row at step 0, which has
    no update)."""
    cols = ["run", "step", "metric", "value"]
    if not {"run", "step", "layer", "metric", "value"} <= set(traces.columns):
        return pd.DataFrame(columns=cols)
    tr = traces.assign(layer=traces["layer"].astype(str).str.strip().str.lower(),
                       value=pd.to_numeric(traces["value"], errors="coerce"))
    whole = tr["layer"].isin(_WHOLE_NETWORK)
    dz = tr[whole & (tr["metric"] == "dz_norm")].groupby(["run", "step"])["value"].first()
    z2 = tr[~whole & (tr["metric"] == "z_norm")].assign(sq=lambda d: d["value"] ** 2)
    zn = z2.groupby(["run", "step"])["sq"].sum() ** 0.5
    both = pd.concat({"dz": dz, "zn": zn}, axis=1).dropna(subset=["dz"])
    rel = (both["dz"] / both["zn"].where(both["zn"] > 0)).rename("value").reset_index()
    return rel.assign(metric="rel_update")[cols]


def _dynamics_rows(traces: pd.DataFrame) -> pd.DataFrame:
    """The whole-network rows of METRICS, with the relative update, and the run's factors."""
    layer = traces["layer"].astype(str).str.strip().str.lower() if "layer" in traces else None
    whole = traces if layer is None else traces[layer.isin(_WHOLE_NETWORK)]
    factors = [c for c in traces.columns if c not in ("step", "layer", "metric", "value")]
    rel = relative_update(traces)
    if len(rel):
        rel = rel.merge(traces[factors].drop_duplicates("run"), on="run", how="left")
    keep = whole[whole["metric"].isin([m for m, _ in METRICS])]
    return pd.concat([keep.drop(columns=["layer"], errors="ignore"), rel], ignore_index=True)


def dynamics(traces: pd.DataFrame, summary: pd.DataFrame | None = None) -> plt.Figure:
    """Accuracy, generation MSE, energy and relative update vs inference step (symlog axis),
    one line per rule; rows init x metric, columns dataset x CE weight (module docstring)."""
    extra = [c for c in (_extra_factors(summary) or []) if c != "init"]
    df = _prepare(_join_summary(_dynamics_rows(traces), summary, drop_ae=True), extra)
    df["init"] = df["init"].astype(str) if "init" in df else ""
    inits = sorted(df["init"].unique()) or [""]
    cols = sorted({(f, w, cw) for f, w, cw in zip(df["facet"], df["w"], df["ce_weight"])},
                  key=lambda k: (k[0], k[2])) or [("", "", np.nan)]
    pal = _palette(df, "label")
    n_rows = len(inits) * len(METRICS)
    fig, axes = _grid(n_rows, len(cols), 3.4, 2.4, sharex=True)
    for j, (facet, w, _) in enumerate(cols):
        sub = df[(df["facet"] == facet) & (df["w"] == w)]
        for a, init in enumerate(inits):
            arm = sub[sub["init"] == init]
            for k, (m, ylabel) in enumerate(METRICS):
                i = a * len(METRICS) + k
                ax = axes[i][j]
                title = " ".join(p for p in (facet, w, f"init={init}" if init else "") if p)
                _frame(ax, 0 if k == 0 else 1, None if i == n_rows - 1 else n_rows, title if k == 0 else "",
                       "inference step", ylabel)
                tm = _finite(_metric(arm, m), ["step", "value"])
                if _lines(ax, tm, "step", "value", "label", pal, legend=(i == 0), marker=None):
                    ax.set_xscale("symlog", linthresh=1)
                    if m != "acc" and (tm["value"] > 0).all():
                        ax.set_yscale("log")
                    ax.autoscale_view()
                else:
                    _empty(ax, f"no {_name(m)}")
                _mark_T(ax, arm)
        _legend(axes[0][j], "rule")
    return _finish(fig, "Fixed point versus trajectory: inference out to 100 T "
                        "(mean ± sd over seeds; dashed/x = diverged)")
