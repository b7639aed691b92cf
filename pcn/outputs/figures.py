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
  bands one standard deviation (seaborn's ``lineplot(errorbar="sd")``);
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
    """Add ``label`` (line: rule / model), ``facet`` (panel: dataset), a numeric ``ce_weight``,
    ``w`` (its legend text, "w=0.5") and a boolean ``diverged``."""
    df = df.copy()
    df["diverged"] = _as_bool(df["diverged"]) if "diverged" in df else False
    model = df["model"].astype(str) if "model" in df else pd.Series("pcn", index=df.index)
    rule = df["rule"].astype(str) if "rule" in df else pd.Series("", index=df.index)
    label = pd.Series(np.where(model.isin(["ae", "cre"]), model, model + " " + rule), index=df.index).str.strip()
    for col in extra_label or []:
        if col in df:
            part = " " + col + "=" + df[col].map(_fmt)
            if col == "init":   # ae and cre have no inference: no arm in their label
                part = part.where(~model.isin(["ae", "cre"]), "")
            label = label + part
    df["label"] = label
    df["facet"] = df["dataset"].astype(str) if "dataset" in df else ""
    df["ce_weight"] = pd.to_numeric(df["ce_weight"], errors="coerce") if "ce_weight" in df else np.nan
    df["w"] = "w=" + df["ce_weight"].map(_fmt)
    return df


def _fmt(v) -> str:
    try:
        return fmt_value(v)
    except (ValueError, TypeError):
        return str(v)


def _extra_factors(summary: pd.DataFrame | None) -> list[str] | None:
    """Swept factors besides the standard ones (they become part of the line label); T only
    where it differs within a model x rule x init (a T set per arm, e.g. by the workflow's
    ``train_by_init``, is not a sweep)."""
    from pcn.outputs.aggregate import factor_columns  # local: keep import light

    if summary is None:
        return None
    arm = [c for c in ("model", "rule", "init") if c in summary]
    T_swept = "T" in summary and (summary.groupby(arm)["T"].nunique().max() if arm else summary["T"].nunique()) > 1
    return [c for c in factor_columns(summary) if c not in _NOT_LABEL and c != "T"] + (["T"] if T_swept else [])


def _palette(df: pd.DataFrame, hue: str) -> dict:
    """Colour of each value of ``hue``: CE weights (``w``) from viridis in weight order, lines
    (rules / models) from the colour-blind palette, ae and cre last."""
    if hue == "w":
        levels = df.sort_values("ce_weight")["w"].drop_duplicates().tolist()
        return dict(zip(levels, sns.color_palette("viridis", max(len(levels), 2))))
    levels = sorted(set(df[hue]), key=lambda s: (s.startswith(("ae", "cre")), s))
    return dict(zip(levels, sns.color_palette("colorblind", max(len(levels), 3))))


def _numeric(df: pd.DataFrame, cols) -> pd.DataFrame:
    """A copy with ``cols`` (those present) as floats."""
    return df.assign(**{c: pd.to_numeric(df[c], errors="coerce") for c in cols if c in df})


def _finite(df: pd.DataFrame, cols) -> pd.DataFrame:
    """The rows whose ``cols`` are finite numbers (as floats); none if a column is missing."""
    if not set(cols) <= set(df.columns):
        return df.iloc[0:0]
    df = _numeric(df, cols)
    return df[np.isfinite(df[list(cols)].to_numpy(dtype=float)).all(axis=1)]


def _metric(df: pd.DataFrame, m: str) -> pd.DataFrame:
    """The rows of a long table (``metric``, ``value``) for metric ``m``."""
    return df[df["metric"] == m] if "metric" in df else df.iloc[0:0]


def _lines(ax, df: pd.DataFrame, x: str, y: str, hue: str, palette: dict, legend: bool = False,
           marker: str | None = "o", path: bool = True, **kw) -> bool:
    """One line per value of ``hue``: mean ± sd over seeds of ``y`` against ``x`` (seaborn,
    ``errorbar="sd"``) of the runs that did not diverge.  Diverged runs are drawn on their own:
    dashed and ending in an ``x`` (``path``), or as ``x`` markers only.  Returns whether anything
    was drawn."""
    df = _finite(df, [x, y])
    ok, div = df[~df["diverged"]], df[df["diverged"]]
    common = dict(x=x, y=y, hue=hue, palette=palette, ax=ax)
    if len(ok):
        order = [k for k in palette if k in set(ok[hue])]
        sns.lineplot(ok, errorbar="sd", marker=marker, ms=4, hue_order=order, legend=legend, **common, **kw)
    if len(div):
        if path:
            sns.lineplot(div, units="run", estimator=None, ls="--", lw=1, legend=False, **common)
            div = div.sort_values(x).groupby("run").tail(1)
        sns.scatterplot(div, marker="x", s=40, linewidth=1.5, legend=False, zorder=3, **common)
    return not df.empty


def _legend(ax, title: str | None = None) -> None:
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7, title=title, title_fontsize=7)


def _frame(ax, row: int, n_rows: int | None, title: str, xlabel: str, ylabel: str) -> None:
    """Label a panel before drawing in it (seaborn then keeps the labels, and skips working out
    whether to show its own): the title on the top row, the x label on the bottom row of a grid
    that shares x (of ``n_rows`` rows; ``None``: x not shared, every row shows it)."""
    ax.set(title=title if row == 0 else "", xlabel=xlabel, ylabel=ylabel)
    ax.xaxis.label.set_visible(n_rows is None or row == n_rows - 1)


def _facets(df: pd.DataFrame) -> list[str]:
    return sorted(df["facet"].unique().tolist()) if len(df) else [""]


def _panels(df: pd.DataFrame) -> list[tuple[str, str]]:
    """(dataset, line label) pairs: one column of panels each."""
    return sorted({(f, lab) for f, lab in zip(df["facet"], df["label"])}) or [("", "")]


def _panel(df: pd.DataFrame, facet: str, label: str) -> pd.DataFrame:
    return df[(df["facet"] == facet) & (df["label"] == label)]


def _where(facet: str, label: str) -> str:
    return " ".join(p for p in (facet, label) if p)


def _n_diverged_runs(df: pd.DataFrame) -> int:
    return int(df.loc[df["diverged"], "run"].nunique()) if "run" in df else int(df["diverged"].sum())


def _title(facet: str, n_div: int) -> str:
    parts = [facet] if facet else []
    if n_div:
        parts.append(f"{n_div} diverged run{'s' if n_div != 1 else ''} (x)")
    return "\n".join(parts)


def _empty(ax, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="0.4")
    ax.set_xticks([])
    ax.set_yticks([])


def _name(col: str) -> str:
    return _METRIC_NAMES.get(col, col.replace("_", " "))


def _present(present, alternatives) -> list[str]:
    """Per group of alternative names, the first that is in ``present`` (a group with none: left out)."""
    return [m for m in (next((n for n in alts if n in present), None) for alts in alternatives) if m]


def _mark_T(ax, sub: pd.DataFrame, col: str = "T", text: str = "train T") -> None:
    """Dotted vertical line(s) at the training value(s) ``col`` of the runs in ``sub``."""
    if col not in sub or sub.empty:
        return
    for t in sorted(pd.to_numeric(sub[col], errors="coerce").dropna().unique()):
        ax.axvline(t, color="k", ls=":", lw=1)
        ax.annotate(f"{text}={_fmt(float(t))}", (t, 1.0), xycoords=("data", "axes fraction"),
                    xytext=(2, -10), textcoords="offset points", fontsize=7)


def _join_summary(table: pd.DataFrame, summary: pd.DataFrame | None, drop_ae: bool = False) -> pd.DataFrame:
    """Bring factor columns and the diverged flag from the summary (by ``run``); without the ae
    runs if ``drop_ae`` (figures of inference, which an ae does not have)."""
    if summary is not None and "run" in table and "run" in summary:
        keep = [c for c in summary.columns if c == "run" or (c not in table and c in _NOT_LABEL | {"diverged"})]
        table = table.merge(summary[keep], on="run", how="left")
    return table[~table["model"].astype(str).isin(["ae", "cre"])] if drop_ae and "model" in table else table


def _grid(n_rows: int, n_cols: int, width: float, height: float, **kw):
    return plt.subplots(n_rows, n_cols, figsize=(width * n_cols, height * n_rows), squeeze=False, **kw)


def _finish(fig, title: str) -> plt.Figure:
    fig.suptitle(title)
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------- figures
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


def _log_if_wide(ax, values: pd.Series, span: float = 10.0, axis: str = "x") -> bool:
    """A log ``axis`` where the (positive) values span more than ``span``x: an MSE axis where one
    point (e.g. bp at w = 1, whose reconstruction is left untrained) would otherwise squash the
    whole front into a corner.  Returns whether it did."""
    if len(values) < 2 or (values <= 0).any() or values.max() / values.min() <= span:
        return False
    (ax.set_xscale if axis == "x" else ax.set_yscale)("log")
    return True


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


# --------------------------------------------------------------------------- probe figures
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


def _layer_key(layer) -> tuple:
    text = str(layer)
    return (0, int(float(text))) if text.replace(".", "", 1).isdigit() else (1, text)


def _layers(df: pd.DataFrame) -> pd.DataFrame:
    """``layer`` as text ("0", "1", ..., "all")."""
    return df.assign(layer=df["layer"].astype(str).str.replace(r"\.0$", "", regex=True) if "layer" in df else "?")


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
        lines = sorted(set(sub["line"]), key=lambda s: (s.startswith(("ae", "cre")), s))
        for title, kinds, ref_kind, ref_title in sections:
            rows = [(ref_title, ref_kind, None)] if ref_kind and (sub["kind"] == ref_kind).any() else []
            for line in lines:
                for kind, name in kinds:
                    if kind == "gen" and line.startswith(("ae", "cre")):
                        continue  # an ae's (cre's) generation from its latent is its reconstruction
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
    images and completion MSE on the hidden pixels against the mean-image and (where the table
    has it) PCA baselines."""
    if clamp is None or clamp.empty or "run" not in clamp:
        return {}
    c = clamp[clamp["label"].astype(str) == "all"]
    notes = {}
    for run, g in c.groupby("run"):
        v = {(m, k): float(x) for m, k, x in zip(g["mode"], g["metric"], pd.to_numeric(g["value"], errors="coerce"))}
        if ("generate", "self_acc") in v:
            notes[(run, "generated")] = f"self-classified {v[('generate', 'self_acc')]:.0%}"
        if ("complete", "completion_mse") in v:
            pca = f", PCA {v[('complete', 'pca_mse')]:.3f}" if ("complete", "pca_mse") in v else ""
            notes[(run, "completed")] = (f"MSE {v[('complete', 'completion_mse')]:.3f} "
                                         f"(mean img {v.get(('complete', 'mean_image_mse'), float('nan')):.3f}{pca})")
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
    "inference_gain": (lambda t: inference_gain(t["summary"]), ("summary",)),
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
