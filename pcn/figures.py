"""Figures of the study, drawn from the aggregated tables alone (``pcn figure``).

Each figure is one function taking DataFrames and returning a matplotlib
``Figure``; :func:`save` writes it as PNG and PDF.  Tables (see
``pcn.aggregate``): ``summary.csv`` (one row per run), ``curves.csv`` (run x
epoch), ``traces.csv`` (run x step x layer x metric).

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

from pcn.naming import fmt_value  # noqa: E402

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
    from pcn.aggregate import factor_columns  # local: keep import light

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
            div = _finite(sub[sub["diverged"]], [m, "ce_weight"])
            for label, g in div.groupby("label"):
                ax.scatter(g["ce_weight"], pd.to_numeric(g[m]), marker="x", s=40, color=pal[label])
            if st.empty and div.empty:
                _empty(ax, "no finite results")
            ax.set_ylabel(_name(m))
            if i == 0:
                ax.set_title(_title(facet, n_div))
            if i == len(metrics) - 1:
                ax.set_xlabel("CE weight w")
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
    panels = sorted({(f, lab) for f, lab in zip(df["facet"], df["label"])}) or [("", "")]
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
                for w, g in tm.groupby("ce_weight", dropna=False):
                    color = wpal.get(float(w), "0.3") if not pd.isna(w) else "0.3"
                    ok = g[~g["diverged"]]
                    if len(ok):
                        mean = ok.groupby("step")["value"].agg(["mean", "std"]).reset_index().fillna(0.0)
                        ax.plot(mean["step"], mean["mean"], color=color, lw=1.5, label=f"w={_fmt(w)}")
                        ax.fill_between(mean["step"], mean["mean"] - mean["std"], mean["mean"] + mean["std"],
                                        color=color, alpha=0.15, lw=0)
                    for _, gr in g[g["diverged"]].groupby("run" if "run" in g else "seed"):
                        gr = gr.sort_values("step")
                        ax.plot(gr["step"], gr["value"], color=color, lw=1, ls="--")
                        ax.scatter(gr["step"].iloc[-1:], gr["value"].iloc[-1:], marker="x", color=color, s=40)
                ax.set_xscale("symlog", linthresh=1)
                if m in ("energy_total", "energy") and (tm["value"] > 0).all():
                    ax.set_yscale("log")
            if "T" in sub and len(sub):
                for t in sorted(pd.to_numeric(sub["T"], errors="coerce").dropna().unique()):
                    ax.axvline(t, color="k", ls=":", lw=1)
                    ax.annotate(f"train T={int(t)}", (t, 1.0), xycoords=("data", "axes fraction"),
                                xytext=(2, -10), textcoords="offset points", fontsize=7)
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
    panels = sorted({(f, lab) for f, lab in zip(df["facet"], df["label"])}) or [("", "")]
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
            for w, g in sub.groupby("ce_weight", dropna=False):
                color = wpal.get(float(w), "0.3") if not pd.isna(w) else "0.3"
                ok = _finite(g[~g["diverged"]], [m, "epoch"])
                if len(ok):
                    vals = ok.assign(**{m: pd.to_numeric(ok[m])})
                    mean = vals.groupby("epoch")[m].agg(["mean", "std"]).reset_index().fillna(0.0)
                    ax.plot(mean["epoch"], mean["mean"], color=color, marker="o", ms=3, lw=1.5,
                            label=f"w={_fmt(w)}")
                    ax.fill_between(mean["epoch"], mean["mean"] - mean["std"], mean["mean"] + mean["std"],
                                    color=color, alpha=0.15, lw=0)
                bad = _finite(g[g["diverged"]], [m, "epoch"])
                for _, gr in bad.groupby("run" if "run" in bad else "seed"):
                    gr = gr.sort_values("epoch")
                    ax.plot(gr["epoch"], pd.to_numeric(gr[m]), color=color, lw=1, ls="--")
                    ax.scatter(gr["epoch"].iloc[-1:], pd.to_numeric(gr[m]).iloc[-1:], marker="x",
                               color=color, s=40)
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


def _read(path: str | None, what: str, required: bool) -> pd.DataFrame | None:
    if not path:
        if required:
            raise SystemExit(f"pcn figure: this figure needs --{what} CSV")
        return None
    return pd.read_csv(path)


#: figure name -> (function, tables it needs, tables it can use)
FIGURES: dict[str, tuple[Callable, tuple[str, ...]]] = {
    "tradeoff": (lambda t: tradeoff(t["summary"]), ("summary",)),
    "ce_weight": (lambda t: ce_weight(t["summary"]), ("summary",)),
    "inference": (lambda t: inference(t["traces"], t.get("summary")), ("traces",)),
    "curves": (lambda t: curves(t["curves"], t.get("summary")), ("curves",)),
}


def draw(name: str, tables: dict[str, pd.DataFrame | None], out: str | Path) -> list[Path]:
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
    parser.add_argument("--out", required=True, metavar="PNG", help="output PNG; a PDF is written beside it")


def run(args: argparse.Namespace) -> int:
    needed = FIGURES[args.name][1]
    tables = {t: _read(getattr(args, t), t, t in needed) for t in ("summary", "curves", "traces")}
    paths = draw(args.name, tables, args.out)
    print("wrote " + ", ".join(str(p) for p in paths))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="pcn figure", description=__doc__)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
