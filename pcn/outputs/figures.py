"""Figures of the study, drawn from the aggregated tables alone (``pcn figure``).

Each figure is one function taking DataFrames and returning a matplotlib
``Figure``; :func:`save` writes it as PNG and PDF.  Tables (see
``pcn.outputs.aggregate``): ``summary.csv`` (one row per run), ``curves.csv`` (run x
epoch), ``traces.csv`` (run x step x layer x metric), ``sensitivity.csv`` (run x
test-time eta x T x metric), ``linear_probes.csv`` (run x step x layer x metric),
``alignment.csv`` (run x epoch x layer x metric), ``clamp.csv`` (run x mode x
label x metric) and ``images.npz`` (one row per image).

Figures: ``tradeoff``, ``ce_weight`` (summary), ``curves`` (curves),
``inference`` (traces), ``sensitivity``, ``probes`` (linear probes),
``alignment`` and ``images`` (images, with clamp metrics).

Conventions shared by all figures
* one line per learning rule / model (``pcn pc``, ``pcn bp``, ``ae``; other
  swept factors such as ``T`` are added to the label), one panel per dataset;
* lines show the mean over seeds of the runs that did not diverge, error bars /
  bands one standard deviation;
* diverged runs are never averaged in: they are drawn as ``x`` markers (where
  their numbers are finite) and counted in the panel title.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Callable

import matplotlib

matplotlib.use("Agg")
import matplotlib.ticker  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from pcn.outputs.naming import fmt_value  # noqa: E402

#: Columns that identify a run but are not drawn as separate lines.
_NOT_LABEL = {"run", "dataset", "model", "rule", "ce_weight", "seed", "T"}
_METRIC_NAMES = {
    "test_acc": "test accuracy",
    "val_acc": "validation accuracy",
    "train_acc": "train accuracy",
    "accuracy": "accuracy",
    "acc": "accuracy",
    "recon_mse": "reconstruction MSE",
    "gen_mse": "generation MSE",
    "energy": "energy",
    "energy_total": "energy",
    "train_loss": "training loss",
}
_WHOLE_NETWORK = {"-1", "all", "", "nan", "none"}


# --------------------------------------------------------------------------- helpers
def _as_bool(s: pd.Series) -> pd.Series:
    if s.dtype == bool:
        return s
    return s.astype(str).str.strip().str.lower().isin({"true", "1", "1.0", "yes"})


def _prepare(df: pd.DataFrame, extra_label: list[str] | None = None) -> pd.DataFrame:
    """Add ``label`` (line), ``facet`` (panel) and a boolean ``diverged``."""
    df = df.copy()
    if "diverged" in df:
        df["diverged"] = _as_bool(df["diverged"])
    else:
        df["diverged"] = False
    model = df["model"].astype(str) if "model" in df else pd.Series("pcn", index=df.index)
    rule = df["rule"].astype(str) if "rule" in df else pd.Series("", index=df.index)
    label = np.where(model == "ae", "ae", model + " " + rule)
    label = pd.Series(label, index=df.index).str.strip()
    for col in extra_label or []:
        if col in df:
            label = label + " " + col + "=" + df[col].map(_fmt)
    df["label"] = label
    df["facet"] = df["dataset"].astype(str) if "dataset" in df else ""
    if "ce_weight" in df:
        df["ce_weight"] = pd.to_numeric(df["ce_weight"], errors="coerce")
    return df


def _fmt(v) -> str:
    try:
        return fmt_value(v)
    except (ValueError, TypeError):
        return str(v)


def _extra_factors(summary: pd.DataFrame) -> list[str]:
    """Swept factors besides the standard ones (they become part of the line label)."""
    from pcn.outputs.aggregate import factor_columns  # local: keep import light

    return [c for c in factor_columns(summary) if c not in _NOT_LABEL and c != "T"] + (
        ["T"] if "T" in summary and summary["T"].astype(str).nunique() > 1 else []
    )


def _palette(labels) -> dict:
    labels = sorted(set(labels), key=lambda s: (s.startswith("ae"), s))
    colors = sns.color_palette("colorblind", max(len(labels), 3))
    return {lab: colors[i % len(colors)] for i, lab in enumerate(labels)}


def _weight_palette(weights) -> dict:
    weights = sorted(set(float(w) for w in weights if not pd.isna(w)))
    colors = sns.color_palette("viridis", max(len(weights), 2))
    return {w: colors[i] for i, w in enumerate(weights)}


def _finite(df: pd.DataFrame, cols) -> pd.DataFrame:
    mask = np.ones(len(df), dtype=bool)
    for c in cols:
        vals = pd.to_numeric(df[c], errors="coerce")
        mask &= np.isfinite(vals.to_numpy(dtype=float))
    return df[mask]


def _stats(df: pd.DataFrame, keys: list[str], cols: list[str]) -> pd.DataFrame:
    """Mean, sd and n over seeds of the finite, non-diverged rows."""
    ok = _finite(df[~df["diverged"]], cols)
    if ok.empty:
        return pd.DataFrame(columns=keys + [f"{c}_{s}" for c in cols for s in ("mean", "sd")] + ["n"])
    num = ok[keys + cols].copy()
    for c in cols:
        num[c] = pd.to_numeric(num[c], errors="coerce")
    g = num.groupby(keys, dropna=False)
    out = g[cols].agg(["mean", "std"])
    out.columns = [f"{c}_{'mean' if s == 'mean' else 'sd'}" for c, s in out.columns]
    out["n"] = g.size()
    return out.reset_index().fillna({f"{c}_sd": 0.0 for c in cols})


def _facets(df: pd.DataFrame) -> list[str]:
    return sorted(df["facet"].unique().tolist()) if len(df) else [""]


def _title(facet: str, n_div: int) -> str:
    parts = [facet] if facet else []
    if n_div:
        parts.append(f"{n_div} diverged run{'s' if n_div != 1 else ''} (x)")
    return "\n".join(parts)


def _empty(ax, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="0.4")
    ax.set_xticks([])
    ax.set_yticks([])


def _finish_ce_panel(ax, div: pd.DataFrame, key: str, y: str, colour, drawn: bool, empty: str, ylabel: str,
                     title: str, row: int, n_rows: int, zorder: float | None = None) -> None:
    """Finish one panel of a metric against the CE weight: diverged runs as x markers (one
    colour per ``key`` group, ``colour(group)``), a note if nothing was drawn, the y label, the
    title on the top row and the x label on the bottom row."""
    for group, g in div.groupby(key):
        ax.scatter(g["ce_weight"], pd.to_numeric(g[y]), marker="x", s=40, color=colour(group), zorder=zorder)
    if not drawn and div.empty:
        _empty(ax, empty)
    ax.set_ylabel(ylabel)
    if row == 0:
        ax.set_title(title)
    if row == n_rows - 1:
        ax.set_xlabel("CE weight w")


def _name(col: str) -> str:
    return _METRIC_NAMES.get(col, col.replace("_", " "))


def _first_present(df: pd.DataFrame, names) -> str | None:
    return next((n for n in names if n in df), None)


# --------------------------------------------------------------------------- figures
def tradeoff(summary: pd.DataFrame, x: str = "recon_mse", y: str = "test_acc") -> plt.Figure:
    """Trade-off front: test accuracy vs reconstruction error, one point per CE weight."""
    df = _prepare(summary, _extra_factors(summary))
    facets = _facets(df)
    pal = _palette(df["label"])
    fig, axes = plt.subplots(1, len(facets), figsize=(5.2 * len(facets), 4.4), squeeze=False)
    for ax, facet in zip(axes[0], facets):
        sub = df[df["facet"] == facet]
        st = _stats(sub, ["label", "ce_weight"], [x, y])
        for label, g in st.groupby("label"):
            g = g.sort_values("ce_weight")
            ax.errorbar(g[f"{x}_mean"], g[f"{y}_mean"], xerr=g[f"{x}_sd"], yerr=g[f"{y}_sd"],
                        marker="o", ms=5, lw=1.5, capsize=2, color=pal[label], label=label)
            for _, r in g.iterrows():
                ax.annotate(_fmt(r["ce_weight"]), (r[f"{x}_mean"], r[f"{y}_mean"]),
                            textcoords="offset points", xytext=(4, 4), fontsize=7, color=pal[label])
        div = sub[sub["diverged"]]
        for label, g in _finite(div, [x, y]).groupby("label"):
            ax.scatter(pd.to_numeric(g[x]), pd.to_numeric(g[y]), marker="x", s=50,
                       color=pal[label], label=f"{label} (diverged)")
        if st.empty and _finite(div, [x, y]).empty:
            _empty(ax, "no finite results")
        ax.set_xlabel(_name(x) + " (lower is better)")
        ax.set_ylabel(_name(y))
        ax.set_title(_title(facet, int(sub["diverged"].sum())))
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8, title="labels: CE weight w", title_fontsize=7)
    fig.suptitle("Classification-reconstruction trade-off (mean ± sd over seeds)")
    fig.tight_layout()
    return fig


def ce_weight(summary: pd.DataFrame, metrics=("test_acc", "recon_mse", "gen_mse")) -> plt.Figure:
    """Accuracy and reconstruction (and generation) error vs CE weight."""
    df = _prepare(summary, _extra_factors(summary))
    metrics = [m for m in metrics if m in df] or ["test_acc"]
    facets = _facets(df)
    pal = _palette(df["label"])
    fig, axes = plt.subplots(len(metrics), len(facets), figsize=(5 * len(facets), 3.2 * len(metrics)),
                             squeeze=False, sharex=True)
    for j, facet in enumerate(facets):
        sub = df[df["facet"] == facet]
        n_div = int(sub["diverged"].sum())
        for i, m in enumerate(metrics):
            ax = axes[i][j]
            if m not in sub:
                _empty(ax, f"no column {m}")
                continue
            st = _stats(sub, ["label", "ce_weight"], [m])
            for label, g in st.groupby("label"):
                g = g.sort_values("ce_weight")
                ax.plot(g["ce_weight"], g[f"{m}_mean"], marker="o", ms=4, color=pal[label], label=label)
                ax.fill_between(g["ce_weight"], g[f"{m}_mean"] - g[f"{m}_sd"],
                                g[f"{m}_mean"] + g[f"{m}_sd"], color=pal[label], alpha=0.2, lw=0)
            _finish_ce_panel(ax, _finite(sub[sub["diverged"]], [m, "ce_weight"]), "label", m, pal.get,
                             not st.empty, "no finite results", _name(m), _title(facet, n_div), i, len(metrics))
        if axes[0][j].get_legend_handles_labels()[0]:
            axes[0][j].legend(fontsize=8)
    fig.suptitle("Test metrics vs CE weight (mean ± sd over seeds; x = diverged run)")
    fig.tight_layout()
    return fig


def _whole_network(traces: pd.DataFrame) -> pd.DataFrame:
    if "layer" not in traces:
        return traces
    layer = traces["layer"].astype(str).str.strip().str.lower()
    return traces[layer.isin(_WHOLE_NETWORK)]


def _join_summary(table: pd.DataFrame, summary: pd.DataFrame | None) -> pd.DataFrame:
    """Bring factor columns and the diverged flag from the summary (by ``run``)."""
    if summary is None or "run" not in table or "run" not in summary:
        return table
    cols = [c for c in summary.columns if c == "run" or c not in table]
    keep = [c for c in cols if c in ("run", "diverged", "dataset", "model", "rule", "ce_weight", "seed", "T")]
    return table.merge(summary[keep], on="run", how="left")


def inference(traces: pd.DataFrame, summary: pd.DataFrame | None = None,
              metrics=(("energy", "energy_total"), ("acc", "accuracy", "test_acc"))) -> plt.Figure:
    """Energy and accuracy vs inference step (log steps), one panel per rule, training T marked."""
    df = _join_summary(_whole_network(traces), summary)
    if "model" in df:
        df = df[df["model"].astype(str) != "ae"]
    df = _prepare(df, _extra_factors(summary) if summary is not None else None)
    names = [m for m in (_first_present_metric(df, alts) for alts in metrics) if m]
    panels = _panels(df)
    rows = names or ["energy"]
    fig, axes = plt.subplots(len(rows), len(panels), figsize=(4.6 * len(panels), 3.3 * len(rows)),
                             squeeze=False, sharex=True)
    wpal = _weight_palette(df["ce_weight"]) if "ce_weight" in df else {}
    for j, (facet, label) in enumerate(panels):
        sub = df[(df["facet"] == facet) & (df["label"] == label)]
        for i, m in enumerate(rows):
            ax = axes[i][j]
            tm = sub[sub["metric"] == m].copy() if "metric" in sub else sub.iloc[0:0]
            tm["value"] = pd.to_numeric(tm.get("value"), errors="coerce")
            tm["step"] = pd.to_numeric(tm.get("step"), errors="coerce")
            tm = tm[np.isfinite(tm["value"].to_numpy(dtype=float))]
            if tm.empty:
                _empty(ax, f"no {m} trace")
            else:
                _weight_lines(ax, tm, "step", "value", wpal, marker=None)
                ax.set_xscale("symlog", linthresh=1)
                if m in ("energy_total", "energy") and (tm["value"] > 0).all():
                    ax.set_yscale("log")
            _mark_T(ax, sub)
            ax.set_ylabel(_name(m))
            if i == 0:
                ax.set_title(" ".join(p for p in (facet, label) if p) or "inference")
            if i == len(rows) - 1:
                ax.set_xlabel("inference step")
        handles, labs = axes[0][j].get_legend_handles_labels()
        if handles:
            axes[0][j].legend(fontsize=7, title="CE weight", title_fontsize=7)
    fig.suptitle("Inference dynamics on the test set (mean ± sd over seeds; dashed/x = diverged)")
    fig.tight_layout()
    return fig


def _first_present_metric(df: pd.DataFrame, alternatives) -> str | None:
    if "metric" not in df:
        return None
    present = set(df["metric"].astype(str))
    return next((m for m in alternatives if m in present), None)


def curves(curves_df: pd.DataFrame, summary: pd.DataFrame | None = None,
           metrics=(("test_acc", "val_acc"), ("recon_mse",), ("train_loss",))) -> plt.Figure:
    """Training curves per epoch: accuracy, reconstruction error and loss; one panel per rule."""
    df = _join_summary(curves_df, summary)
    df = _prepare(df, _extra_factors(summary) if summary is not None else None)
    rows = [m for m in (_first_present(df, alts) for alts in metrics) if m] or ["epoch"]
    panels = _panels(df)
    fig, axes = plt.subplots(len(rows), len(panels), figsize=(4.4 * len(panels), 3.0 * len(rows)),
                             squeeze=False, sharex=True)
    wpal = _weight_palette(df["ce_weight"]) if "ce_weight" in df else {}
    for j, (facet, label) in enumerate(panels):
        sub = df[(df["facet"] == facet) & (df["label"] == label)]
        for i, m in enumerate(rows):
            ax = axes[i][j]
            if m not in sub or "epoch" not in sub or sub.empty:
                _empty(ax, f"no {m}")
                continue
            _weight_lines(ax, sub.assign(**{m: pd.to_numeric(sub[m], errors="coerce")}), "epoch", m, wpal)
            ax.set_ylabel(_name(m))
            if i == 0:
                ax.set_title(" ".join(p for p in (facet, label) if p) or "training")
            ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
            if i == len(rows) - 1:
                ax.set_xlabel("epoch")
        if axes[0][j].get_legend_handles_labels()[0]:
            axes[0][j].legend(fontsize=7, title="CE weight", title_fontsize=7)
    fig.suptitle("Training curves (mean ± sd over seeds; dashed/x = diverged)")
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------- probe figures
def _numeric(df: pd.DataFrame, cols) -> pd.DataFrame:
    """A copy with ``cols`` (those present) as floats."""
    df = df.copy()
    for c in cols:
        if c in df:
            df[c] = pd.to_numeric(df[c], errors="coerce")
    return df


def _panels(df: pd.DataFrame) -> list[tuple[str, str]]:
    """(dataset, line label) pairs: one column of panels each."""
    return sorted({(f, lab) for f, lab in zip(df["facet"], df["label"])}) or [("", "")]


def _n_diverged_runs(df: pd.DataFrame) -> int:
    if "run" in df:
        return int(df.loc[df["diverged"], "run"].nunique())
    return int(df["diverged"].sum())


def _weight_lines(ax, df: pd.DataFrame, x: str, y: str, wpal: dict, marker: str | None = "o") -> bool:
    """One line per CE weight: mean ± sd over seeds (runs that did not diverge) of ``y``
    against ``x``; runs that diverged in training drawn dashed, ending in ``x``.  Returns
    whether anything was drawn."""
    drawn = False
    df = _finite(df, [x, y])
    for w, g in df.groupby("ce_weight", dropna=False):
        color = wpal.get(float(w), "0.3") if not pd.isna(w) else "0.3"
        ok = g[~g["diverged"]]
        if len(ok):
            st = ok.groupby(x)[y].agg(["mean", "std"]).reset_index().fillna(0.0).sort_values(x)
            ax.plot(st[x], st["mean"], color=color, lw=1.5, marker=marker, ms=3, label=f"w={_fmt(w)}")
            ax.fill_between(st[x], st["mean"] - st["std"], st["mean"] + st["std"], color=color, alpha=0.15, lw=0)
            drawn = True
        for _, gr in g[g["diverged"]].groupby("run" if "run" in g else "seed"):
            gr = gr.sort_values(x)
            ax.plot(gr[x], gr[y], color=color, lw=1, ls="--")
            ax.scatter(gr[x].iloc[-1:], gr[y].iloc[-1:], marker="x", color=color, s=40, zorder=3)
            drawn = True
    return drawn


def _mark_T(ax, sub: pd.DataFrame, col: str = "T", text: str = "train T") -> None:
    """Dotted vertical line(s) at the training value(s) ``col`` of the runs in ``sub``."""
    if col not in sub or sub.empty:
        return
    for t in sorted(pd.to_numeric(sub[col], errors="coerce").dropna().unique()):
        ax.axvline(t, color="k", ls=":", lw=1)
        ax.annotate(f"{text}={_fmt(float(t))}", (t, 1.0), xycoords=("data", "axes fraction"),
                    xytext=(2, -10), textcoords="offset points", fontsize=7)


def sensitivity(sens: pd.DataFrame, summary: pd.DataFrame | None = None,
                metrics=("acc", "recon_mse")) -> plt.Figure:
    """Test-time sensitivity: accuracy and reconstruction MSE against the test-time number of
    inference steps (at the training eta) and against eta (at the training T); one column of
    panels per rule, one colour per CE weight; points where some test images' inference went
    non-finite are ringed."""
    df = _join_summary(sens, summary)
    if "model" in df:
        df = df[df["model"].astype(str) != "ae"]
    df = _prepare(_numeric(df, ["value", "eta_factor", "test_T", "T"]),
                  _extra_factors(summary) if summary is not None else None)
    panels = _panels(df)
    rows = [(m, "T") for m in metrics] + [(m, "eta") for m in metrics]
    fig, axes = plt.subplots(len(rows), len(panels), figsize=(4.4 * len(panels), 2.9 * len(rows)), squeeze=False)
    wpal = _weight_palette(df["ce_weight"]) if "ce_weight" in df else {}
    for j, (facet, label) in enumerate(panels):
        sub = df[(df["facet"] == facet) & (df["label"] == label)]
        for i, (m, axis) in enumerate(rows):
            ax = axes[i][j]
            if axis == "T":
                sl, x = sub[np.isclose(sub.get("eta_factor", np.nan), 1.0)], "test_T"
            else:
                sl, x = sub[sub.get("test_T", np.nan) == sub.get("T", np.nan)], "eta_factor"
            tm = sl[sl["metric"] == m] if "metric" in sl else sl.iloc[0:0]
            if x not in tm or not _weight_lines(ax, tm, x, "value", wpal):
                _empty(ax, f"no {m} values")
            else:
                bad = sl[(sl["metric"] == "nonfinite") & (sl["value"] > 0)][["run", x]] if "run" in sl else None
                if bad is not None and len(bad):
                    ring = _finite(tm.merge(bad, on=["run", x]), [x, "value"])
                    ax.scatter(ring[x], ring["value"], s=70, facecolors="none", edgecolors="red", lw=1,
                               label="non-finite inference", zorder=3)
                if axis == "T":
                    ax.set_xscale("symlog", linthresh=1)
                    _mark_T(ax, sl)
                    ax.set_xlabel("test-time inference steps T (at the training eta)")
                else:
                    ax.set_xscale("log", base=2)
                    ax.axvline(1.0, color="k", ls=":", lw=1)
                    ax.set_xlabel("test-time eta / training eta (at the training T)")
                if m.endswith("mse") and (tm["value"].dropna() > 0).all() and len(tm):
                    ax.set_yscale("log")
            ax.set_ylabel(_name(m))
            if i == 0:
                ax.set_title(_title(" ".join(p for p in (facet, label) if p), _n_diverged_runs(sub)))
        if axes[0][j].get_legend_handles_labels()[0]:
            axes[0][j].legend(fontsize=7, title="CE weight", title_fontsize=7)
    fig.suptitle("Test-time sensitivity to T and eta (mean ± sd over seeds; dashed/x = diverged in training)")
    fig.tight_layout()
    return fig


def _layer_key(layer) -> tuple:
    text = str(layer)
    return (0, int(float(text))) if text.replace(".", "", 1).isdigit() else (1, text)


def probes(lp: pd.DataFrame, summary: pd.DataFrame | None = None,
           metrics=("probe_acc", "ridge_mse")) -> plt.Figure:
    """Per-layer linear probes against the CE weight: test accuracy of a logistic-regression
    probe and test MSE of a ridge reconstruction of x from each layer, one line per layer
    (layer 0, the image itself, dashed grey as the reference), one column per rule / model.
    Per run the probe at its largest probed inference step (the eval T; ae: 0)."""
    df = _join_summary(lp, summary)
    df = _prepare(_numeric(df, ["value", "step"]), _extra_factors(summary) if summary is not None else None)
    if "run" in df and len(df):
        df = df[df["step"] == df.groupby("run")["step"].transform("max")]
    df["layer"] = df["layer"].astype(str).str.replace(r"\.0$", "", regex=True) if "layer" in df else "?"
    panels = _panels(df)
    rows = [m for m in metrics if "metric" in df and m in set(df["metric"])] or list(metrics)
    layers = sorted(set(df["layer"]), key=_layer_key)
    lpal = dict(zip([lay for lay in layers if lay != "0"], sns.color_palette("crest", max(len(layers) - 1, 1))))
    lpal["0"] = "0.55"
    fig, axes = plt.subplots(len(rows), len(panels), figsize=(4.4 * len(panels), 3.2 * len(rows)),
                             squeeze=False, sharex=True)
    names = {"probe_acc": "probe accuracy (test)", "ridge_mse": "ridge reconstruction MSE (test)",
             "ridge_r2": "ridge reconstruction R²"}
    for j, (facet, label) in enumerate(panels):
        sub = df[(df["facet"] == facet) & (df["label"] == label)]
        top = max((_layer_key(lay) for lay in sub["layer"] if lay != "0"), default=None)
        for i, m in enumerate(rows):
            ax = axes[i][j]
            tm = sub[sub["metric"] == m] if "metric" in sub else sub.iloc[0:0]
            st = _stats(tm, ["layer", "ce_weight"], ["value"])
            for layer, g in sorted(st.groupby("layer"), key=lambda kv: _layer_key(kv[0])):
                g = g.sort_values("ce_weight")
                ref = layer == "0"
                name = "layer 0 (x)" if ref else f"layer {layer}" + (" (top)" if _layer_key(layer) == top else "")
                ax.plot(g["ce_weight"], g["value_mean"], marker="o", ms=3, lw=1.2 if ref else 1.6,
                        ls="--" if ref else "-", color=lpal.get(layer, "0.3"), label=name)
                ax.fill_between(g["ce_weight"], g["value_mean"] - g["value_sd"], g["value_mean"] + g["value_sd"],
                                color=lpal.get(layer, "0.3"), alpha=0.15, lw=0)
            _finish_ce_panel(ax, _finite(tm[tm["diverged"]], ["value", "ce_weight"]), "layer", "value",
                             lambda lay: lpal.get(lay, "0.3"), not st.empty, f"no {m} values",
                             names.get(m, _name(m)), _title(" ".join(p for p in (facet, label) if p),
                                                            _n_diverged_runs(sub)), i, len(rows), zorder=3)
        if axes[0][j].get_legend_handles_labels()[0]:
            axes[0][j].legend(fontsize=7)
    fig.suptitle("Linear probes per layer vs CE weight (mean ± sd over seeds; x = diverged run)")
    fig.tight_layout()
    return fig


def alignment(al: pd.DataFrame, summary: pd.DataFrame | None = None) -> plt.Figure:
    """PC-vs-BP gradient alignment over training: cosine between the PC weight update and the
    BP gradient of the same objective (logged each epoch on a fixed batch), for all weights
    together (top row) and per layer W_l; one column per rule, one colour per CE weight."""
    df = _join_summary(al, summary)
    if "model" in df:
        df = df[df["model"].astype(str) != "ae"]
    df = _prepare(_numeric(df, ["value", "epoch"]), _extra_factors(summary) if summary is not None else None)
    df["layer"] = df["layer"].astype(str).str.replace(r"\.0$", "", regex=True) if "layer" in df else "?"
    panels = _panels(df)
    layers = sorted({lay for lay, m in zip(df["layer"], df.get("metric", [])) if m == "cos_W"}, key=_layer_key)
    rows = [("all", "cos")] + [(lay, "cos_W") for lay in layers]
    fig, axes = plt.subplots(len(rows), len(panels), figsize=(4.4 * len(panels), 2.6 * len(rows)),
                             squeeze=False, sharex=True)
    wpal = _weight_palette(df["ce_weight"]) if "ce_weight" in df else {}
    for j, (facet, label) in enumerate(panels):
        sub = df[(df["facet"] == facet) & (df["label"] == label)]
        for i, (layer, m) in enumerate(rows):
            ax = axes[i][j]
            tm = sub[(sub["layer"] == layer) & (sub["metric"] == m)] if "metric" in sub else sub.iloc[0:0]
            undefined = _undefined_weights(sub, tm)
            if not _weight_lines(ax, tm, "epoch", "value", wpal, marker="o"):
                _empty(ax, "no alignment values" + (f"\n{undefined}" if undefined else ""))
            else:
                ax.axhline(1.0, color="k", lw=0.8, ls=":")
                ax.axhline(0.0, color="0.6", lw=0.8)
                if undefined and i == 0:
                    ax.text(0.02, 0.1, undefined, transform=ax.transAxes, fontsize=7, color="0.3",
                            bbox=dict(facecolor="white", edgecolor="none", alpha=0.8))
            ax.set_ylabel("cos, all weights" if layer == "all" else f"cos, W_{layer}")
            ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
            if i == 0:
                ax.set_title(_title(" ".join(p for p in (facet, label) if p), _n_diverged_runs(sub)))
            if i == len(rows) - 1:
                ax.set_xlabel("epoch (0 = initial weights)")
        if axes[0][j].get_legend_handles_labels()[0]:
            axes[0][j].legend(fontsize=7, title="CE weight", title_fontsize=7)
    fig.suptitle("PC update vs BP gradient of the same objective over training "
                 "(cosine; mean ± sd over seeds; dashed/x = diverged)")
    fig.tight_layout()
    return fig


def _undefined_weights(sub: pd.DataFrame, tm: pd.DataFrame) -> str:
    """A note naming the CE weights whose cosines are all nan in ``tm`` because the PC update is
    zero there (norm_ratio_W == 0; e.g. w = 1, where F has no energy term), else ''."""
    if tm.empty or "metric" not in sub:
        return ""
    nan_w = [w for w, g in tm.groupby("ce_weight") if g["value"].isna().all()]
    ratio = sub[sub["metric"] == "norm_ratio_W"]
    zero = [w for w in nan_w
            if len(ratio[ratio["ce_weight"] == w]) and (ratio.loc[ratio["ce_weight"] == w, "value"] == 0).all()]
    if not zero:
        return ""
    return "no cosine at " + ", ".join(f"w={_fmt(w)}" for w in zero) + ": the PC update of these weights is 0"


def _mosaic(pixels: np.ndarray, ncols: int) -> np.ndarray:
    """Images (n, d) tiled into one array, ``ncols`` per row, separated by a grey line;
    non-finite pixels stay nan (drawn red)."""
    n, d = pixels.shape
    side = int(round(np.sqrt(d)))
    h, w = (side, side) if side * side == d else (1, d)
    nrows = int(np.ceil(n / ncols))
    out = np.full((nrows * (h + 1) - 1, ncols * (w + 1) - 1), 0.0)
    for k in range(n):
        r, c = divmod(k, ncols)
        img = np.where(np.isfinite(pixels[k]), np.clip(pixels[k], -1, 1), np.nan).reshape(h, w)
        out[r * (h + 1):r * (h + 1) + h, c * (w + 1):c * (w + 1) + w] = img
    return out


def _show(ax, pixels: np.ndarray, ncols: int, diverged: bool = False, note: str = "") -> None:
    cmap = plt.get_cmap("gray").with_extremes(bad="red")
    ax.imshow(np.ma.masked_invalid(_mosaic(pixels, ncols)), cmap=cmap, vmin=-1, vmax=1, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_visible(diverged)
        spine.set_color("red")
        spine.set_linewidth(2)
    text = "; ".join(t for t in ("DIVERGED" if diverged else "", note) if t)
    if text:
        ax.set_xlabel(text, fontsize=7, color="red" if diverged else "0.2")


def _image_index(table: dict, summary: pd.DataFrame | None) -> pd.DataFrame:
    """One row per image of the images table (``row`` = its row in ``pixels``, ``cls`` = its
    class) with its run's factors, line label (``line``), panel (``facet``) and diverged flag;
    factors missing from the summary are read from the run folder name."""
    from pcn.outputs.naming import parse_run_dir

    idx = pd.DataFrame({"run": table["run"], "kind": table["kind"], "pos": table["pos"], "cls": table["label"]})
    idx["row"] = np.arange(len(idx))
    runs = pd.DataFrame({"run": sorted(set(idx["run"]))})
    extra = _extra_factors(summary) if summary is not None else None
    if summary is not None and "run" in summary:
        keep = [c for c in summary.columns
                if c in ("run", "diverged", "dataset", "model", "rule", "ce_weight", "seed") or c in (extra or [])]
        runs = runs.merge(summary[keep], on="run", how="left")
    parsed = pd.DataFrame([parse_run_dir(r) for r in runs["run"]], index=runs.index)
    for c in parsed.columns:
        runs[c] = runs[c].fillna(parsed[c]) if c in runs else parsed[c]
    if "diverged" in runs:
        runs["diverged"] = runs["diverged"].fillna(False)
    runs = _prepare(runs, extra).rename(columns={"label": "line"})
    runs["seed"] = pd.to_numeric(runs["seed"], errors="coerce") if "seed" in runs else 0
    if "ce_weight" not in runs:
        runs["ce_weight"] = np.nan
    return idx.merge(runs, on="run", how="left")


def images(table: dict, summary: pd.DataFrame | None = None, clamp: pd.DataFrame | None = None,
           n_show: int = 8) -> plt.Figure:
    """Image grids per rule / model (rows) and CE weight (columns), for the lowest seed of each:
    (1) reconstruction mu_0 and top-down generation of the first test digits; (2) label -> image
    generation (classes 0-9, from the clamp outputs); (3) completion of images whose bottom half
    is occluded.  Diverged runs are framed red; non-finite and occluded pixels are red."""
    idx = _image_index(table, summary)
    pixels = table["pixels"]
    sections = [("Reconstruction (mu_0 after inference) and top-down generation of test digits",
                 [("recon", "reconstruction"), ("gen", "generation")], "x", "input x"),
                ("Label -> image: class clamped through the CE term (classes 0-9)",
                 [("generated", "generated")], None, None),
                ("Occlusion: bottom half hidden (red), completed by inference", [("completed", "completed")],
                 "occluded", "occluded input")]
    datasets = sorted(set(idx["facet"].astype(str))) or [""]
    weights = sorted(set(idx["ce_weight"].dropna().astype(float))) or [float("nan")]
    metrics = _clamp_notes(clamp)
    plan = []  # (dataset, section, rows); a row = (title, kind, line label or None)
    for ds in datasets:
        sub = idx[idx["facet"].astype(str) == ds]
        lines = sorted(set(sub["line"]), key=lambda s: (s.startswith("ae"), s))
        for title, kinds, ref_kind, ref_title in sections:
            rows = [(ref_title, ref_kind, None)] if ref_kind and (sub["kind"] == ref_kind).any() else []
            for line in lines:
                for kind, name in kinds:
                    if kind == "gen" and line.startswith("ae"):
                        continue  # an ae's generation from its latent is its reconstruction
                    if ((sub["line"] == line) & (sub["kind"] == kind)).any():
                        rows.append((f"{line}\n{name}", kind, line))
            if rows:
                plan.append((ds, title, rows))
    if not plan:
        fig, ax = plt.subplots(figsize=(6, 3))
        _empty(ax, "no images")
        return fig
    ncols = {"generated": 5}
    cell_w = 2.3
    heights = [1.35 * len(r) + (0.85 if k == 0 else 0.6) for k, (_, _, r) in enumerate(plan)]
    fig = plt.figure(figsize=(1.6 + cell_w * len(weights), sum(heights)))
    subfigs = np.atleast_1d(fig.subfigures(len(plan), 1, height_ratios=heights))
    for k, (sf, (ds, title, rows)) in enumerate(zip(subfigs, plan)):
        note = "\n(rows: rule / model; columns: CE weight w; lowest seed; red frame = diverged run)" if k == 0 else ""
        sf.suptitle((f"{ds}: {title}" if ds else title) + note, fontsize=9, x=0.02, ha="left")
        height = heights[k]
        top = 1 - (height - 1.35 * len(rows) + 0.05) / height
        sf.subplots_adjust(left=1.5 / fig.get_figwidth(), right=0.98, top=top,
                           bottom=0.1 / height,
                           hspace=0.3, wspace=0.08)
        axes = sf.subplots(len(rows), len(weights), squeeze=False)
        sub = idx[idx["facet"].astype(str) == ds]
        for i, (row_title, kind, line) in enumerate(rows):
            for j, w in enumerate(weights):
                ax = axes[i][j]
                ax.axis("off")
                if line is None:  # reference row: the same test images in every run, drawn once
                    if j > 0:
                        continue
                    sel = sub[sub["kind"] == kind]
                else:
                    sel = sub[(sub["kind"] == kind) & (sub["line"] == line)]
                    if not pd.isna(w):
                        sel = sel[np.isclose(sel["ce_weight"].astype(float), w)]
                if sel.empty:
                    continue
                run = sel.sort_values(["seed", "run"])["run"].iloc[0]
                sel = sel[sel["run"] == run].sort_values("pos").head(10 if kind == "generated" else n_show)
                ax.axis("on")
                k = len(sel)
                _show(ax, pixels[sel["row"].to_numpy()], ncols.get(kind, int(np.ceil(k / 2)) if k > 4 else k),
                      bool(sel["diverged"].iloc[0]) if line is not None else False,
                      metrics.get((run, kind), "") if line is not None else "")
            axes[i][0].text(-0.06, 0.5, row_title, transform=axes[i][0].transAxes, ha="right", va="center",
                            fontsize=8)
        for j, w in enumerate(weights):
            axes[0][j].set_title(f"w = {_fmt(w)}", fontsize=8)
    return fig


def _clamp_notes(clamp: pd.DataFrame | None) -> dict:
    """{(run, kind): short text} from the clamp table: self-classification of the generated
    images and completion MSE against the mean-image baseline."""
    if clamp is None or clamp.empty or "run" not in clamp:
        return {}
    c = clamp[clamp["label"].astype(str) == "all"]
    notes = {}
    for run, g in c.groupby("run"):
        v = {(m, k): float(x) for m, k, x in zip(g["mode"], g["metric"], pd.to_numeric(g["value"], errors="coerce"))}
        if ("generate", "self_acc") in v:
            notes[(run, "generated")] = f"self-classified {v[('generate', 'self_acc')]:.0%}"
        if ("complete", "completion_mse") in v:
            notes[(run, "completed")] = (f"MSE {v[('complete', 'completion_mse')]:.3f} "
                                         f"(mean img {v.get(('complete', 'mean_image_mse'), float('nan')):.3f})")
    return notes


# --------------------------------------------------------------------------- I/O and CLI
def save(fig: plt.Figure, out: str | Path) -> list[Path]:
    """Write ``out`` (PNG) and the same name with ``.pdf``; returns both paths."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    png = out if out.suffix.lower() == ".png" else out.with_suffix(".png")
    pdf = png.with_suffix(".pdf")
    fig.savefig(png, dpi=150, bbox_inches="tight")
    fig.savefig(pdf, bbox_inches="tight")
    plt.close(fig)
    return [png, pdf]


def _read(path: str | None, what: str, required: bool):
    if not path:
        if required:
            raise SystemExit(f"pcn figure: this figure needs --{what.replace('_', '-')} "
                             f"{'NPZ' if what == 'images' else 'CSV'}")
        return None
    if what == "images":
        from pcn.outputs.aggregate import read_images

        import zipfile

        try:
            return read_images(path)
        except (ValueError, zipfile.BadZipFile, EOFError, KeyError) as err:
            from pcn.errors import PcnError

            raise PcnError(f"--images {path}: not a readable images table ({type(err).__name__}: {err})") from None
    try:
        return pd.read_csv(path)
    except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError) as err:
        from pcn.errors import PcnError

        raise PcnError(f"--{what.replace('_', '-')} {path}: not a readable CSV table ({str(err).splitlines()[0]})") from None


#: figure name -> (function of the tables, tables it needs); every function also uses the
#: summary (diverged flags, factors) when it is given.
FIGURES: dict[str, tuple[Callable, tuple[str, ...]]] = {
    "tradeoff": (lambda t: tradeoff(t["summary"]), ("summary",)),
    "ce_weight": (lambda t: ce_weight(t["summary"]), ("summary",)),
    "inference": (lambda t: inference(t["traces"], t.get("summary")), ("traces",)),
    "curves": (lambda t: curves(t["curves"], t.get("summary")), ("curves",)),
    "sensitivity": (lambda t: sensitivity(t["sensitivity"], t.get("summary")), ("sensitivity",)),
    "probes": (lambda t: probes(t["linear_probes"], t.get("summary")), ("linear_probes",)),
    "alignment": (lambda t: alignment(t["alignment"], t.get("summary")), ("alignment",)),
    "images": (lambda t: images(t["images"], t.get("summary"), t.get("clamp")), ("images",)),
}
#: every table a figure can read (``pcn figure --NAME FILE``)
TABLES = ("summary", "curves", "traces", "sensitivity", "linear_probes", "alignment", "clamp", "images")


def draw(name: str, tables: dict, out: str | Path) -> list[Path]:
    """Draw figure ``name`` from ``tables`` and save it (PNG + PDF)."""
    if name not in FIGURES:
        raise ValueError(f"unknown figure {name!r}; choose from {', '.join(FIGURES)}")
    func, needed = FIGURES[name]
    missing = [t for t in needed if tables.get(t) is None]
    if missing:
        raise ValueError(f"figure {name!r} needs the table(s) {missing}")
    sns.set_theme(style="whitegrid", context="paper")
    return save(func({k: v for k, v in tables.items() if v is not None}), out)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", choices=sorted(FIGURES), help="which figure")
    parser.add_argument("--summary", metavar="CSV", help="results/summary.csv (pcn aggregate --out)")
    parser.add_argument("--curves", metavar="CSV", help="results/curves.csv (pcn aggregate --curves-out)")
    parser.add_argument("--traces", metavar="CSV", help="results/traces.csv (pcn aggregate --traces-out)")
    parser.add_argument("--sensitivity", metavar="CSV",
                        help="results/sensitivity.csv (pcn aggregate --sensitivity-out)")
    parser.add_argument("--linear-probes", metavar="CSV",
                        help="results/linear_probes.csv (pcn aggregate --linear-probes-out)")
    parser.add_argument("--alignment", metavar="CSV", help="results/alignment.csv (pcn aggregate --alignment-out)")
    parser.add_argument("--clamp", metavar="CSV", help="results/clamp.csv (pcn aggregate --clamp-out)")
    parser.add_argument("--images", metavar="NPZ", help="results/images.npz (pcn aggregate --images-out)")
    parser.add_argument("--out", required=True, metavar="PNG", help="output PNG; a PDF is written beside it")


def run(args: argparse.Namespace) -> int:
    needed = FIGURES[args.name][1]
    tables = {t: _read(getattr(args, t, None), t, t in needed) for t in TABLES}
    paths = draw(args.name, tables, args.out)
    print("wrote " + ", ".join(str(p) for p in paths))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="pcn figure", description=__doc__)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
