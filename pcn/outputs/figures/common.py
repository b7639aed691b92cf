"""Conventions and helpers shared by the figure modules (private to ``pcn.outputs.figures``).

* one line per learning rule / model (``pcn pc``, ``pcn bp``, ``ae``; other swept factors such
  as ``T`` are added to the label), one panel per dataset;
* lines show the mean over seeds of the runs that did not diverge, error bars / bands one
  standard deviation (seaborn's ``lineplot(errorbar="sd")``);
* diverged runs are never averaged in: they are drawn as ``x`` markers (where their numbers
  are finite) and counted in the panel title.
"""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
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
    df["w"] = "w=" + df["ce_weight"].map(_fmt).astype(str)  # astype: an empty map is float
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
    from pcn.outputs.aggregate import ARM, factor_columns  # local: keep import light

    if summary is None:
        return None
    arm = [c for c in ARM if c in summary]
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

def _log_if_wide(ax, values: pd.Series, span: float = 10.0, axis: str = "x") -> bool:
    """A log ``axis`` where the (positive) values span more than ``span``x: an MSE axis where one
    point (e.g. bp at w = 1, whose reconstruction is left untrained) would otherwise squash the
    whole front into a corner.  Returns whether it did."""
    if len(values) < 2 or (values <= 0).any() or values.max() / values.min() <= span:
        return False
    (ax.set_xscale if axis == "x" else ax.set_yscale)("log")
    return True


def _layer_key(layer) -> tuple:
    text = str(layer)
    return (0, int(float(text))) if text.replace(".", "", 1).isdigit() else (1, text)


def _layers(df: pd.DataFrame) -> pd.DataFrame:
    """``layer`` as text ("0", "1", ..., "all")."""
    return df.assign(layer=df["layer"].astype(str).str.replace(r"\.0$", "", regex=True) if "layer" in df else "?")
