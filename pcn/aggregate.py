"""Collect finished runs into tidy tables (``pcn aggregate``).

* ``summary``: one row per run, from ``RUN/final.json`` (every config key, so
  every factor, is a column) plus a ``run`` column with the run folder.
* ``curves``: every ``RUN/metrics.csv`` (one row per run x epoch) with the run's
  factor columns prepended.
* ``traces``: every ``RUN/trace.csv`` of ``pcn probe`` (one row per
  run x step x layer x metric) with the run's factor columns prepended.

Any figure can be redrawn from these three tables without touching the runs.
"""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Iterable

import pandas as pd

from pcn.naming import fmt_value, parse_run_dir

#: Factor columns always carried into the curves and traces tables (when the
#: runs have them); config keys that differ between runs are added to these.
KEY_FACTORS = ("dataset", "model", "rule", "ce_weight", "seed", "T")
#: Config keys that never count as factors.
NOT_FACTORS = {"data_dir", "data_root"}


def _cell(v):
    """Make a final.json value fit one CSV cell (lists -> ``784-256-32``)."""
    if isinstance(v, (list, tuple)):
        try:
            return fmt_value(list(v))
        except ValueError:
            return json.dumps(v)
    if isinstance(v, dict):
        return json.dumps(v, sort_keys=True)
    return v


def _as_bool(v) -> bool:
    if isinstance(v, str):
        return v.strip().lower() in {"true", "1", "yes"}
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return False
    return bool(v)


def read_final(run_dir: str | Path) -> dict:
    """One summary row: the run's final.json plus ``run`` (the folder)."""
    path = Path(run_dir) / "final.json"
    if not path.exists():
        raise FileNotFoundError(f"run {run_dir}: {path} is missing (did the run finish?)")
    try:
        final = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"run {run_dir}: {path} is not valid JSON: {err}") from err
    row = {"run": str(run_dir)}
    # Factors named in the folder are a fallback for keys final.json lacks.
    for key, value in parse_run_dir(str(run_dir)).items():
        row.setdefault(key, value)
    row.update({k: _cell(v) for k, v in final.items()})
    return row


def aggregate(run_dirs: Iterable[str | Path]) -> pd.DataFrame:
    """One row per run from ``final.json``; every config key and result is a column."""
    rows = [read_final(d) for d in run_dirs]
    if not rows:
        raise ValueError("no runs to aggregate")
    df = pd.DataFrame(rows)
    if "diverged" in df:
        df["diverged"] = df["diverged"].map(_as_bool)
    else:
        df["diverged"] = False
    first = [c for c in ("run",) + KEY_FACTORS if c in df]
    return df[first + [c for c in df.columns if c not in first]]


def factor_columns(summary: pd.DataFrame) -> list[str]:
    """Key factors plus every training-config column that differs between the runs.

    Where the data lives (``data_dir``, ``data_root``) is not a factor.
    """
    from pcn.config import defaults

    config_keys = set(defaults()) - NOT_FACTORS
    cols = [c for c in KEY_FACTORS if c in summary]
    for c in summary.columns:
        if c not in config_keys or c in cols:
            continue
        if summary[c].astype(str).nunique(dropna=False) > 1:
            cols.append(c)
    return cols


def _attach(summary: pd.DataFrame, filename: str, missing_ok: bool) -> pd.DataFrame:
    cols = factor_columns(summary)
    frames = []
    for _, row in summary.iterrows():
        path = Path(row["run"]) / filename
        if not path.exists():
            if missing_ok:
                continue
            raise FileNotFoundError(f"run {row['run']}: {path} is missing")
        table = pd.read_csv(path)
        if table.empty:
            continue
        for c in reversed(cols):
            table.insert(0, c, row[c])
        table.insert(0, "run", row["run"])
        frames.append(table)
    if not frames:
        return pd.DataFrame(columns=["run", *cols])
    return pd.concat(frames, ignore_index=True)


def curves(run_dirs: Iterable[str | Path], summary: pd.DataFrame | None = None) -> pd.DataFrame:
    """All runs' ``metrics.csv`` (training curves) with factor columns."""
    summary = aggregate(run_dirs) if summary is None else summary
    return _attach(summary, "metrics.csv", missing_ok=False)


def traces(run_dirs: Iterable[str | Path], summary: pd.DataFrame | None = None) -> pd.DataFrame:
    """All runs' ``trace.csv`` (inference-dynamics probes) with factor columns.

    Runs without a trace (e.g. ``ae`` runs, which have no inference) are skipped.
    """
    summary = aggregate(run_dirs) if summary is None else summary
    return _attach(summary, "trace.csv", missing_ok=True)


def _write(df: pd.DataFrame, out: str) -> None:
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(out, index=False)


def _read_list(path: str) -> list[str]:
    return [line.strip() for line in Path(path).read_text().splitlines() if line.strip()]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--runs", nargs="+", default=[], metavar="DIR",
                        help="run folders (each holding final.json)")
    parser.add_argument("--runs-from", metavar="FILE",
                        help="text file listing run folders, one a line (added to --runs)")
    parser.add_argument("--out", metavar="CSV", help="summary table, one row per run")
    parser.add_argument("--curves-out", metavar="CSV",
                        help="training curves of all runs (metrics.csv), one row per run x epoch")
    parser.add_argument("--traces-out", metavar="CSV",
                        help="probe traces of all runs (trace.csv), one row per run x step x layer x metric")


def run(args: argparse.Namespace) -> int:
    run_dirs = list(args.runs or [])
    if getattr(args, "runs_from", None):
        run_dirs += _read_list(args.runs_from)
    if not run_dirs:
        raise SystemExit("pcn aggregate: no runs given (--runs DIR ... or --runs-from FILE)")
    if not (args.out or args.curves_out or args.traces_out):
        raise SystemExit("pcn aggregate: nothing to write (give --out, --curves-out and/or --traces-out)")
    summary = aggregate(run_dirs)
    if args.out:
        _write(summary, args.out)
        print(f"wrote {args.out}: {len(summary)} runs, {int(summary['diverged'].sum())} diverged")
    if args.curves_out:
        table = curves(run_dirs, summary)
        _write(table, args.curves_out)
        print(f"wrote {args.curves_out}: {len(table)} rows")
    if args.traces_out:
        table = traces(run_dirs, summary)
        _write(table, args.traces_out)
        print(f"wrote {args.traces_out}: {len(table)} rows")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="pcn aggregate", description=__doc__)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
