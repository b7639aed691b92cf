"""Drawing a figure by name from its tables, and the ``pcn figure`` command line."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Callable

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns

from pcn.outputs.figures.common import _empty
from pcn.outputs.figures.dynamics import inference, sensitivity
from pcn.outputs.figures.fixed_point import dynamics
from pcn.outputs.figures.image_grids import images
from pcn.outputs.figures.linear_probes import probes
from pcn.outputs.figures.robustness import robustness
from pcn.outputs.figures.summary import ce_weight, inference_gain, tradeoff
from pcn.outputs.figures.tables import TABLES, check_columns, n_rows, option, read
from pcn.outputs.figures.training import alignment, curves


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
    "dynamics": (lambda t: dynamics(t["traces"], t.get("summary")), ("traces",)),
    "robustness": (lambda t: robustness(t["robustness"], t.get("summary")), ("robustness",)),
}
#: tables a figure reads when given, besides its own and the summary
OPTIONAL: dict[str, tuple[str, ...]] = {"images": ("clamp",)}


def empty_table(name: str, tables: dict) -> str | None:
    """The first table figure ``name`` needs that has no rows (None: every one has some)."""
    return next((t for t in FIGURES[name][1] if tables.get(t) is not None and not n_rows(tables[t])), None)


def _empty_figure(name: str, text: str) -> plt.Figure:
    fig, ax = plt.subplots(figsize=(6, 3))
    ax.set_title(name)
    _empty(ax, text)
    return fig


def draw(name: str, tables: dict, out: str | Path, sources: dict[str, str] | None = None) -> list[Path]:
    """Draw figure ``name`` from ``tables`` and save it (PNG + PDF).  Every table it reads is
    checked for the columns it needs first (TableError, naming the table as ``sources[table]``);
    a needed table with no rows gives a figure that says so, an optional one is left out."""
    if name not in FIGURES:
        raise ValueError(f"unknown figure {name!r}; choose from {', '.join(FIGURES)}")
    func, needed = FIGURES[name]
    missing = [t for t in needed if tables.get(t) is None]
    if missing:
        raise ValueError(f"figure {name!r} needs the table(s) {missing}")
    sources = sources or {}
    for t in dict.fromkeys((*needed, "summary", *OPTIONAL.get(name, ()))):
        if tables.get(t) is not None:
            check_columns(name, t, tables[t], sources.get(t))
    sns.set_theme(style="whitegrid", context="paper")
    empty = empty_table(name, tables)
    if empty:
        return save(_empty_figure(name, f"{sources.get(empty, f'the {empty} table')} has no rows: nothing to draw"), out)
    return save(func({k: _text_filled(v) for k, v in tables.items() if v is not None and (k in needed or n_rows(v))}),
                out)


#: Columns that name a line or panel (text): an empty cell is read as empty text.
TEXT_COLUMNS = ("dataset", "model", "rule", "init")


def _text_filled(table):
    """``table`` with the empty cells of its TEXT_COLUMNS as "" (pandas reads them as nan,
    which would end the line labels); other tables (the images) unchanged."""
    if not isinstance(table, pd.DataFrame):
        return table
    gaps = [c for c in TEXT_COLUMNS if c in table and table[c].isna().any()]
    return table.assign(**{c: table[c].astype(object).where(table[c].notna(), "") for c in gaps}) if gaps else table


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
    parser.add_argument("--robustness", metavar="CSV",
                        help="results/robustness.csv (pcn aggregate --robustness-out)")
    parser.add_argument("--images", metavar="NPZ", help="results/images.npz (pcn aggregate --images-out)")
    parser.add_argument("--out", required=True, metavar="PNG", help="output PNG; a PDF is written beside it")


def run(args: argparse.Namespace) -> int:
    """``pcn figure NAME --TABLE FILE ... --out PNG``."""
    needed = FIGURES[args.name][1]
    paths = {t: getattr(args, t, None) for t in TABLES}
    tables = {t: read(paths[t], t, t in needed) for t in TABLES}
    sources = {t: f"{option(t)} {p}" for t, p in paths.items() if p}
    written = draw(args.name, tables, args.out, sources)
    empty = empty_table(args.name, tables)
    note = f" (an empty figure: {sources[empty]} has no rows)" if empty else ""
    print("wrote " + ", ".join(str(p) for p in written) + note)
    return 0


def main(argv: list[str] | None = None) -> int:
    from pcn.outputs import figures

    parser = argparse.ArgumentParser(prog="pcn figure", description=figures.__doc__)
    add_arguments(parser)
    return run(parser.parse_args(argv))
