"""The tables a figure reads: reading them from their files and checking their columns.

A table that lacks a column a figure needs is refused in one line (:class:`TableError`) that
names the table, the missing columns, every column the figure needs and those the table has; so
is a summary that names a run in more than one row (another table given as the summary).  A
table with no rows is not an error here (the figure says so in an empty panel instead).
"""
from __future__ import annotations

import zipfile

import pandas as pd

from pcn.errors import PcnError
from pcn.outputs.aggregate import TABLE_COLUMNS

#: every table a figure can read (``pcn figure --NAME FILE``)
TABLES = ("summary", "curves", "traces", "sensitivity", "linear_probes", "alignment", "clamp", "robustness",
          "images")

#: Columns a table must have wherever a figure reads it; each entry is a group of alternative
#: names, one of which must be present: ``run`` and the columns pcn aggregate requires of the
#: table (pcn.outputs.aggregate.TABLE_COLUMNS; the images table: the arrays of its .npz).
COLUMNS: dict[str, tuple[tuple[str, ...], ...]] = {
    "summary": (("run",),),
    **{table: (("run",),) + tuple((c,) for c in cols) for table, cols in TABLE_COLUMNS.items()},
    "images": (("run",), ("kind",), ("pos",), ("label",), ("pixels",)),
}

#: Columns a figure needs besides its tables' COLUMNS: {figure: {table: groups}}.
FIGURE_COLUMNS: dict[str, dict[str, tuple[tuple[str, ...], ...]]] = {
    "tradeoff": {"summary": (("ce_weight",), ("test_acc",), ("gen_mse", "recon_mse"))},
    "ce_weight": {"summary": (("ce_weight",), ("test_acc", "recon_mse", "gen_mse"))},
    "inference_gain": {"summary": (("ce_weight",),)},
    "curves": {"curves": (("test_acc", "val_acc", "recon_mse", "train_loss"),)},
    # the stages step 0 / T / 10 T are told apart by the training T (from the summary when joined)
    "robustness": {"robustness": (("T",), ("ce_weight",))},
}


class TableError(PcnError, ValueError):
    """A table lacks columns a figure needs (exit 1, one line)."""


def option(table: str) -> str:
    """The ``pcn figure`` option that gives ``table`` (``--linear-probes``)."""
    return "--" + table.replace("_", "-")


def n_rows(table) -> int:
    """Rows of a table: a DataFrame, or the images table (a dict of arrays, one row per image)."""
    if isinstance(table, pd.DataFrame):
        return len(table)
    return len(table["run"]) if "run" in table else 0


def _names(groups) -> list[str]:
    return [g[0] if len(g) == 1 else "(" + " or ".join(g) + ")" for g in groups]


def _listed(names: list[str], most: int = 15) -> str:
    shown = ", ".join(names[:most])
    return shown + (f", ... ({len(names)} in all)" if len(names) > most else "") if names else "none"


def check_columns(figure: str, table: str, data, source: str | None = None) -> None:
    """Refuse (TableError) a ``table`` of ``figure`` that lacks a column it needs; a table
    with no rows passes (the figure draws an empty panel).  ``source`` names the table in the
    message (default: "the TABLE table")."""
    if n_rows(data) == 0:
        return
    groups = COLUMNS.get(table, ()) + FIGURE_COLUMNS.get(figure, {}).get(table, ())
    have = [str(c) for c in (data.columns if isinstance(data, pd.DataFrame) else data)]
    missing = [g for g in groups if not set(g) & set(have)]
    if missing:
        raise TableError(f"{source or f'the {table} table'}: missing column(s) {', '.join(_names(missing))}; "
                         f"figure {figure} needs {', '.join(_names(groups))}; the table has {_listed(have)}")
    if table == "summary":
        _check_one_row_per_run(data, source or "the summary table")
    if not isinstance(data, pd.DataFrame):
        _check_arrays(data, source or f"the {table} table")


def _check_one_row_per_run(summary: pd.DataFrame, source: str) -> None:
    """The summary has one row per run: a run named in several rows means another table
    (curves.csv has the summary's columns too, one row per epoch) was given as the summary."""
    counts = summary["run"].value_counts()
    if len(counts) and counts.iloc[0] > 1:
        raise TableError(f"{source}: run {counts.index[0]} is in {counts.iloc[0]} rows; the summary has one row "
                         "per run (pcn aggregate --out): is this another table, such as curves.csv?")


def _check_arrays(data: dict, source: str) -> None:
    """The images table: ``pixels`` is (images, pixels) and every array has one entry per image."""
    n, shape = len(data["run"]), getattr(data["pixels"], "shape", ())
    uneven = [k for k in COLUMNS["images"] if len(data[k[0]]) != n]
    if len(shape) != 2 or uneven:
        raise TableError(f"{source}: pixels has shape {shape} and {n} images are named in run; every array must "
                         f"have one row per image and pixels must be (images, pixels)")


def read(path: str | None, what: str, required: bool):
    """The table ``what`` from ``path`` (CSV; the images table: NPZ), or None where no path is
    given and the figure can do without it; a file that cannot be read is a one-line PcnError."""
    if not path:
        if required:
            raise SystemExit(f"pcn figure: this figure needs {option(what)} "
                             f"{'NPZ' if what == 'images' else 'CSV'}")
        return None
    if what == "images":
        from pcn.outputs.aggregate import read_images

        try:
            return read_images(path)
        except (ValueError, zipfile.BadZipFile, EOFError, KeyError) as err:
            raise PcnError(f"--images {path}: not a readable images table ({type(err).__name__}: {err})") from None
    try:
        return pd.read_csv(path)
    except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError) as err:
        raise PcnError(f"{option(what)} {path}: not a readable CSV table ({str(err).splitlines()[0]})") from None
