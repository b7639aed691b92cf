"""Collect finished runs into tidy tables (``pcn aggregate``).

* ``summary``: one row per run, from ``RUN/final.json`` (every config key, so
  every factor, is a column) plus a ``run`` column with the run folder.
* ``curves``: every ``RUN/metrics.csv`` (one row per run x epoch) with the run's
  factor columns prepended.
* ``traces``: every ``RUN/trace.csv`` of ``pcn probe`` (one row per
  run x step x layer x metric) with the run's factor columns prepended.
* ``sensitivity``: every ``RUN/sensitivity.csv`` (run x eta x test-time T x metric);
  the probe's ``T`` and ``eta`` columns are renamed ``test_T`` and ``test_eta`` so they
  cannot clash with the training factors ``T`` and ``eta``.
* ``linear_probes``: every ``RUN/linear_probes.csv`` (run x step x layer x metric; pcn
  and ae runs).
* ``alignment``: every ``RUN/alignment.csv`` written during training (PC-vs-BP cosine,
  run x epoch x layer x metric; pcn runs).
* ``clamp``: every ``RUN/clamp/clamp.csv`` (run x mode x label x metric).
* ``robustness``: every ``RUN/robustness.csv`` (run x corruption x level x step x metric; pcn runs).
* ``images``: one .npz of images (one row per image: run, kind, pos, label, pixels)
  from ``RUN/images.npz`` (kinds x, recon, gen) and, where present, the clamp outputs
  ``RUN/clamp/generated.npy`` (kind generated) and ``RUN/clamp/clamp_images.npz``
  (kinds original, occluded, completed).

With ``--parquet`` each long table (all but the summary) is also written as Parquet beside
its CSV (same name, ``.parquet``): typed columns, and list-valued config keys such as
``layers`` kept as lists instead of the CSV's ``784-256-32`` text.  The columns of every
table are described in docs/results-tables.md.

Runs lacking a probe file (e.g. ``ae`` runs have no trace) are skipped.  Every table
carries ``run`` and the same factor columns, so any figure can be redrawn from these
tables without touching the runs.
"""
from __future__ import annotations

import argparse
import json
import math
import zipfile
from pathlib import Path
from typing import Iterable

import numpy as np
import pandas as pd

from pcn.errors import PcnError
from pcn.outputs.naming import fmt_value, parse_run_dir


class RunError(PcnError, ValueError):
    """A run folder's file is damaged (``pcn aggregate`` reports it as one line)."""

#: Factor columns always carried into the curves and traces tables (when the
#: runs have them); config keys that differ between runs are added to these.
KEY_FACTORS = ("dataset", "model", "rule", "ce_weight", "seed", "T")
#: Config keys that never count as factors.
NOT_FACTORS = {"data_dir", "data_root"}
#: The factors of an arm: keys set per arm by the workflow (``train_by_model``, ``_rule``,
#: ``_init``, ``_arch``: e.g. a conv run's layers and channels) are constant within one and are
#: not factors of their own.
ARM = ("model", "rule", "init", "arch")


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


#: Result fields of final.json: numbers (null or NaN where undefined).  ``test_acc`` is required.
RESULT_FIELDS = ("train_acc", "val_acc", "test_acc", "recon_mse", "gen_mse", "energy", "train_settle",
                 "train_nudge_gap", "wall_s")
REQUIRED_FIELDS = ("test_acc",)
#: Fields of final.json besides the training keys (pcn/train_schema.yaml) and RESULT_FIELDS, with
#: what each may hold: counts, flags and the provenance of the run.
OTHER_FIELDS: dict[str, tuple[tuple[type, ...], str]] = {
    "epochs_done": ((int,), "a whole number"),
    "diverged_epoch": ((int, type(None)), "a whole number or null"),
    "diverged_batch": ((int, type(None)), "a whole number or null"),
    "diverged": ((bool,), "true or false"),
    "code_commit": ((str, type(None)), "text or null"),
    "code_dirty": ((bool, type(None)), "true, false or null"),
    "code_sha256": ((str,), "text"),
    "compute_device": ((str,), "text"),
    "compute_name": ((str,), "text"),
    "torch_version": ((str,), "text"),
    "data_files": ((dict,), "an object of file names"),
}


def _shown(v) -> str:
    text = json.dumps(v) if not isinstance(v, float) or math.isfinite(v) else str(v)
    return (text if len(text) <= 40 else text[:37] + "...") + f" ({type(v).__name__})"


def _field_problems(final: dict) -> list[str]:
    """What is wrong with the fields of one final.json: unknown keys, values of the wrong type
    (training keys judged by pcn/train_schema.yaml), required fields missing; [] if none."""
    import jsonschema

    from pcn.study.config import schema

    keys = schema()["properties"]
    problems = [f"field {k!r} is missing (a finished run has it)" for k in REQUIRED_FIELDS if k not in final]
    for key, value in final.items():
        if key in RESULT_FIELDS:
            ok, allowed = value is None or (isinstance(value, (int, float)) and not isinstance(value, bool)), \
                "a number or null"
        elif key in OTHER_FIELDS:
            types, allowed = OTHER_FIELDS[key]
            ok = isinstance(value, types) and not (isinstance(value, bool) and bool not in types)
        elif key in keys:
            err = jsonschema.exceptions.best_match(jsonschema.Draft7Validator(keys[key]).iter_errors(value))
            ok, allowed = err is None, f"as pcn/train_schema.yaml says ({err.message if err else ''})"
        else:
            problems.append(f"field {key!r} is not one pcn train writes (a training key of pcn/train_schema.yaml, "
                            "a result or a provenance field: docs/results-tables.md)")
            continue
        if not ok:
            problems.append(f"field {key!r} is {_shown(value)}; must be {allowed}")
    return problems


def read_final(run_dir: str | Path) -> dict:
    """One summary row: the run's final.json plus ``run`` (the folder).  Its fields are checked
    first (``_field_problems``): a field of the wrong type or unknown is a RunError naming it."""
    path = Path(run_dir) / "final.json"
    if not path.exists():
        raise FileNotFoundError(f"run {run_dir}: {path} is missing (did the run finish?)")
    try:
        final = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise RunError(f"run {run_dir}: {path} is not valid JSON ({err}); re-run the run's training") from None
    if not isinstance(final, dict):
        raise RunError(f"run {run_dir}: {path} holds a {type(final).__name__}, not a JSON object; re-run the run's training")
    problems = _field_problems(final)
    if problems:
        raise RunError(f"run {run_dir}: {path}: " + "; ".join(problems) + "; re-run the run's training")
    row = {"run": str(run_dir)}
    # Factors named in the folder are a fallback for keys final.json lacks.
    for key, value in parse_run_dir(str(run_dir)).items():
        row.setdefault(key, value)
    row.update({k: _cell(v) for k, v in final.items()})
    return row


#: Inference stages of the summary's step columns: step 0 (the initial guess), the training
#: T, 10 T and 100 T (each: or the last probed step when the probe ran fewer).
STAGES = ("step0", "T", "10T", "100T")
#: How far (accuracy as a fraction: 0.01 = 1 point) from its last value the accuracy may stray
#: after ``steps_to_final_acc``.
FINAL_ACC_TOL = 0.01
STAGE_METRICS = ("acc", "gen_mse", "recon_mse", "energy")


def inference_stages(trace: pd.DataFrame, T: int) -> dict:
    """Summary columns from one run's probe trace (``RUN/trace.csv``, whole-network rows):
    ``{metric}_{stage}`` for the metrics in STAGE_METRICS at the STAGES, ``probe_steps`` (the
    last step probed), the settling measure ``settle_{stage}`` = ||z^t - z^{t-1}|| / ||z^t||
    over all latent layers (nan at step 0; a run whose inference has settled at T has a small
    ``settle_T``, docs/methods.md) and ``steps_to_final_acc`` (``steps_to_final``)."""
    tr = trace.copy()
    tr["layer"] = tr["layer"].astype(str)
    last = int(tr["step"].max())
    steps = {"step0": 0, "T": min(int(T), last), "10T": min(10 * int(T), last), "100T": min(100 * int(T), last)}
    whole = tr[tr["layer"] == "all"].pivot_table(index="step", columns="metric", values="value")
    z2 = tr[(tr["metric"] == "z_norm") & (tr["layer"] != "all")].assign(sq=lambda d: d["value"] ** 2)
    znorm = z2.groupby("step")["sq"].sum() ** 0.5
    out: dict = {"probe_steps": last}
    for stage, t in steps.items():
        for m in STAGE_METRICS:
            out[f"{m}_{stage}"] = float(whole.at[t, m]) if m in whole and t in whole.index else float("nan")
        dz = float(whole.at[t, "dz_norm"]) if "dz_norm" in whole and t in whole.index else float("nan")
        zn = float(znorm.get(t, float("nan")))
        out[f"settle_{stage}"] = dz / zn if zn > 0 else float("nan")
    out["steps_to_final_acc"] = steps_to_final(whole["acc"]) if "acc" in whole else float("nan")
    return out


def steps_to_final(values: pd.Series, tol: float = FINAL_ACC_TOL) -> float:
    """The first recorded step s (``values`` indexed by step) after which the value stays within
    ``tol`` of its value at the last step: min s such that |v(t) - v(last)| <= tol for every
    recorded t >= s (up to a rounding slack of 1e-9, so that a value exactly ``tol`` away counts as
    within).  nan when the last value is not finite (a diverged inference)."""
    v = pd.to_numeric(values, errors="coerce").sort_index()
    if v.empty or not math.isfinite(float(v.iloc[-1])):
        return float("nan")
    off = ~((v - v.iloc[-1]).abs() <= tol + 1e-9)   # nan counts as off
    later_off = off[::-1].cummax()[::-1]     # some step at or after t is off
    return float(v.index[~later_off.to_numpy()][0])


def corruption_label(corruption: str, level: float) -> str:
    """Short name of a corruption of pcn/study/robustness.py for column names and legends:
    none, noise0.25, pixels0.5, half."""
    if corruption in ("none", "half"):
        return corruption
    return f"{corruption}{float(level):g}"


def robustness_columns(table: pd.DataFrame, T: int) -> dict:
    """Summary columns from one run's robustness table (pcn/study/robustness.py): per corruption
    c (``corruption_label``: none, noise0.25, ..., half) ``robust_gain_T_{c}`` = acc(T) - acc(0)
    and ``robust_gain_10T_{c}`` = acc(10 T) - acc(0): what inference adds to the first guess
    on corrupted images (> 0: inference beats its own first guess)."""
    acc = table[table["metric"] == "acc"]
    out = {}
    for (name, level), g in acc.groupby(["corruption", "level"], sort=False):
        at = dict(zip(pd.to_numeric(g["step"]), pd.to_numeric(g["value"], errors="coerce")))
        label = corruption_label(str(name), float(level))
        for stage, t in (("T", int(T)), ("10T", 10 * int(T))):
            out[f"robust_gain_{stage}_{label}"] = at.get(t, float("nan")) - at.get(0, float("nan"))
    return out


#: Summary columns from the clamp table: (mode, metric of label "all") -> column.
CLAMP_COLUMNS = {
    ("generate", "self_acc"): "gen_self_acc", ("generate", "judge_acc"): "gen_judge_acc",
    ("generate", "judge_real_acc"): "gen_judge_real_acc", ("generate", "class_mean_dist"): "gen_class_mean_dist",
    ("complete", "completion_mse"): "completion_mse", ("complete", "mean_image_mse"): "completion_mean_image_mse",
    ("complete", "pca_mse"): "completion_pca_mse", ("complete", "beats_mean_image"): "completion_beats_mean_image",
    ("complete", "beats_pca"): "completion_beats_pca",
}


def clamp_columns(table: pd.DataFrame) -> dict:
    """Summary columns from one run's clamp table: CLAMP_COLUMNS, and the verdicts
    ``completion_verdict_mean_image`` / ``completion_verdict_pca``: "beats" or "does not beat"
    (empty where the comparison is undefined)."""
    whole = table[table["label"].astype(str) == "all"]
    vals = {(m, k): float(v) for m, k, v in zip(whole["mode"], whole["metric"], pd.to_numeric(whole["value"],
                                                                                         errors="coerce"))}
    out = {col: vals[key] for key, col in CLAMP_COLUMNS.items() if key in vals}
    for base in ("mean_image", "pca"):
        b = out.get(f"completion_beats_{base}", float("nan"))
        out[f"completion_verdict_{base}"] = "" if not math.isfinite(b) else ("beats" if b > 0 else "does not beat")
    return out


def aggregate(run_dirs: Iterable[str | Path]) -> pd.DataFrame:
    """One row per run from ``final.json``; every config key and result is a column.  Runs
    probed already (``RUN/trace.csv``) also get their ``inference_stages`` columns, those with
    a ``RUN/robustness.csv`` its ``robustness_columns``, clamped ones (``RUN/clamp/clamp.csv``)
    their ``clamp_columns``."""
    rows = [read_final(d) for d in run_dirs]
    for row in rows:
        path = Path(row["run"]) / RUN_FILES["traces"]
        trace = _read_run_table(row["run"], "traces") if path.exists() and "T" in row else None
        if trace is not None and len(trace):
            row.update(inference_stages(trace, int(row["T"])))
        if (Path(row["run"]) / RUN_FILES["robustness"]).exists() and "T" in row:
            table = _read_run_table(row["run"], "robustness")
            if len(table):
                row.update(robustness_columns(table, int(row["T"])))
        if (Path(row["run"]) / RUN_FILES["clamp"]).exists():
            table = _read_run_table(row["run"], "clamp")
            if len(table):
                row.update(clamp_columns(table))
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
    """Key factors plus every training-config column that differs between runs of the same model.

    ``init`` and ``arch`` are factors wherever they are swept (the inference arms, MLP vs conv).  Where the data lives
    (``data_dir``, ``data_root``) is not a factor, nor is a key that is
    constant within each model x rule x init (e.g. the cre runs' own batch size, or bpc's
    bu_weight, or a conv run's layers, set by the workflow's ``train_by_model`` / ``train_by_rule``
    / ``train_by_init`` / ``train_by_arch``):
    those factors already tell the runs apart.
    """
    from pcn.study.config import defaults

    config_keys = set(defaults()) - NOT_FACTORS
    cols = [c for c in KEY_FACTORS if c in summary]
    arm = [c for c in ARM if c in summary]
    group = (summary[arm].astype(str).fillna("").agg("/".join, axis=1) if arm
             else pd.Series("", index=summary.index))
    # the arm factors themselves: init (not a key factor) is one wherever it is swept
    cols += [c for c in arm if c not in cols and summary[c].astype(str).nunique() > 1]
    for c in summary.columns:
        if c not in config_keys or c in cols:
            continue
        if len(summary) and summary[c].astype(str).groupby(group).nunique(dropna=False).max() > 1:
            cols.append(c)
    return cols


#: Each long table: the run file it is made of (in the run folder), its columns renamed (the
#: probe's T and eta, which would clash with the training factors) and the columns it must have.
RUN_FILES = {"curves": "metrics.csv", "traces": "trace.csv", "sensitivity": "sensitivity.csv",
             "linear_probes": "linear_probes.csv", "alignment": "alignment.csv", "clamp": "clamp/clamp.csv",
             "robustness": "robustness.csv"}
RENAMED = {"sensitivity": {"T": "test_T", "eta": "test_eta"}}
TABLE_COLUMNS = {
    "curves": ("epoch",),
    "traces": ("step", "layer", "metric", "value"),
    "sensitivity": ("eta_factor", "test_T", "metric", "value"),
    "linear_probes": ("step", "layer", "metric", "value"),
    "alignment": ("epoch", "layer", "metric", "value"),
    "clamp": ("mode", "label", "metric", "value"),
    "robustness": ("corruption", "level", "step", "metric", "value"),
}
#: Columns that must hold numbers (where the table has rows).
NUMERIC_COLUMNS = ("epoch", "step", "value", "eta_factor", "test_T", "level")


def _read_run_table(run: str, table: str) -> pd.DataFrame:
    """The run file of ``table`` (RUN_FILES) with its columns renamed; a file that is not a CSV
    table, or whose rows lack a column of TABLE_COLUMNS or hold text in a numeric one, is a
    RunError naming the file and the column."""
    path = Path(run) / RUN_FILES[table]
    rename = RENAMED.get(table, {})
    try:
        df = pd.read_csv(path).rename(columns=rename)
    except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError) as err:
        raise RunError(f"run {run}: {path} is not a readable CSV table "
                       f"({str(err).splitlines()[0]}); re-run the job that writes it") from None
    if df.empty:
        return df
    original = {new: old for old, new in rename.items()}
    missing = [original.get(c, c) for c in TABLE_COLUMNS[table] if c not in df]
    if missing:
        raise RunError(f"run {run}: {path} lacks the column(s) {', '.join(missing)} (it has "
                       f"{', '.join(map(str, df.columns))}); re-run the job that writes it")
    for col in (c for c in NUMERIC_COLUMNS if c in TABLE_COLUMNS[table]):
        bad = df[col][pd.to_numeric(df[col], errors="coerce").isna() & df[col].notna()]
        if len(bad):
            raise RunError(f"run {run}: {path} column {original.get(col, col)} holds {bad.iloc[0]!r}, "
                           "not a number; re-run the job that writes it")
    return df


def _attach(summary: pd.DataFrame, table: str, missing_ok: bool) -> pd.DataFrame:
    """Concatenate the run file of ``table`` (RUN_FILES) of every run with ``run`` and the
    factor columns in front."""
    cols = factor_columns(summary)
    frames = []
    for _, row in summary.iterrows():
        path = Path(row["run"]) / RUN_FILES[table]
        if not path.exists():
            if missing_ok:
                continue
            raise FileNotFoundError(f"run {row['run']}: {path} is missing")
        frame = _read_run_table(row["run"], table)
        if frame.empty:
            continue
        clash = sorted(set(frame.columns) & ({"run"} | set(cols)))
        if clash:
            raise ValueError(f"run {row['run']}: columns {clash} of {path} clash with the factor columns")
        for c in reversed(cols):
            frame.insert(0, c, row[c])
        frame.insert(0, "run", row["run"])
        frames.append(frame)
    if not frames:
        return pd.DataFrame(columns=["run", *cols])
    return pd.concat(frames, ignore_index=True)


def curves(run_dirs: Iterable[str | Path], summary: pd.DataFrame | None = None) -> pd.DataFrame:
    """All runs' ``metrics.csv`` (training curves) with factor columns."""
    summary = aggregate(run_dirs) if summary is None else summary
    return _attach(summary, "curves", missing_ok=False)


def traces(run_dirs: Iterable[str | Path], summary: pd.DataFrame | None = None) -> pd.DataFrame:
    """All runs' ``trace.csv`` (inference-dynamics probes) with factor columns.

    Runs without a trace (e.g. ``ae`` runs, which have no inference) are skipped.
    """
    summary = aggregate(run_dirs) if summary is None else summary
    return _attach(summary, "traces", missing_ok=True)


def sensitivity(run_dirs: Iterable[str | Path], summary: pd.DataFrame | None = None) -> pd.DataFrame:
    """All runs' ``sensitivity.csv`` (test-time T x eta grid) with factor columns; the
    probe's ``T``/``eta`` become ``test_T``/``test_eta``."""
    summary = aggregate(run_dirs) if summary is None else summary
    return _attach(summary, "sensitivity", missing_ok=True)


def linear_probes(run_dirs: Iterable[str | Path], summary: pd.DataFrame | None = None) -> pd.DataFrame:
    """All runs' ``linear_probes.csv`` (per-layer probes) with factor columns."""
    summary = aggregate(run_dirs) if summary is None else summary
    return _attach(summary, "linear_probes", missing_ok=True)


def alignment(run_dirs: Iterable[str | Path], summary: pd.DataFrame | None = None) -> pd.DataFrame:
    """All runs' training-time ``alignment.csv`` (PC-vs-BP cosines per epoch) with factor columns."""
    summary = aggregate(run_dirs) if summary is None else summary
    return _attach(summary, "alignment", missing_ok=True)


def clamp(run_dirs: Iterable[str | Path], summary: pd.DataFrame | None = None) -> pd.DataFrame:
    """All runs' ``clamp/clamp.csv`` (clamping modes) with factor columns."""
    summary = aggregate(run_dirs) if summary is None else summary
    return _attach(summary, "clamp", missing_ok=True)


def robustness(run_dirs: Iterable[str | Path], summary: pd.DataFrame | None = None) -> pd.DataFrame:
    """All runs' ``robustness.csv`` (inference from corrupted test images) with factor columns."""
    summary = aggregate(run_dirs) if summary is None else summary
    return _attach(summary, "robustness", missing_ok=True)


#: Image kinds in the images table, in drawing order.
IMAGE_KINDS = ("x", "recon", "gen", "generated", "original", "occluded", "completed")


def _image_rows(run: str, kind: str, pixels: np.ndarray, labels) -> dict:
    n = len(pixels)
    return {"run": np.full(n, run), "kind": np.full(n, kind), "pos": np.arange(n),
            "label": np.asarray(labels, dtype=np.int64), "pixels": np.asarray(pixels, dtype=np.float32)}


def _load_arrays(run: str, path: Path, needed: tuple[str, ...]) -> dict[str, np.ndarray]:
    """The arrays of a run's .npz (a .npy: ``{"generated": array}``); a file that cannot be
    read, lacks an array of ``needed`` or holds images that are not 2-D (n x pixels) is a
    RunError naming it."""
    import zipfile

    try:
        if path.suffix == ".npy":
            arrays = {"generated": np.load(path, allow_pickle=False)}
        else:
            with np.load(path, allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as err:
        raise RunError(f"run {run}: {path} is not a readable NumPy file ({type(err).__name__}: {err}); "
                       "re-run the job that writes it") from None
    missing = [k for k in needed if k not in arrays]
    if missing:
        raise RunError(f"run {run}: {path} lacks the array(s) {', '.join(missing)} (it has "
                       f"{', '.join(arrays) or 'none'}); re-run the job that writes it")
    flat = [k for k, a in arrays.items() if k in (*needed, "generated") and k != "y" and a.ndim != 2]
    if flat:
        raise RunError(f"run {run}: {path} array {flat[0]} has shape {arrays[flat[0]].shape}, "
                       "not (images, pixels); re-run the job that writes it")
    return arrays


def images(run_dirs: Iterable[str | Path], clamp_runs: Iterable[str | Path] | None = None) -> dict[str, np.ndarray]:
    """The images of all runs as one long table of arrays (one row per image):
    ``run``, ``kind`` (see IMAGE_KINDS), ``pos`` (its place in its run's grid), ``label``
    (the true class; for ``generated`` the clamped class) and ``pixels`` (n x d, [-1, 1]
    scale, nan where occluded or non-finite).  Factors come from the summary (by ``run``).
    Clamp images are read for the runs in ``clamp_runs`` (None: wherever they exist)."""
    parts = []
    clamped = None if clamp_runs is None else {str(c) for c in clamp_runs}
    for d in run_dirs:
        run, path = str(d), Path(d)
        if (path / "images.npz").exists():
            z = _load_arrays(run, path / "images.npz", ("x", "recon", "gen", "y"))
            parts += [_image_rows(run, k, z[k], z["y"]) for k in ("x", "recon", "gen")]
        if clamped is not None and run not in clamped:
            continue
        if (path / "clamp" / "generated.npy").exists():
            gen = _load_arrays(run, path / "clamp" / "generated.npy", ())["generated"]
            parts.append(_image_rows(run, "generated", gen, np.arange(len(gen))))
        if (path / "clamp" / "clamp_images.npz").exists():
            z = _load_arrays(run, path / "clamp" / "clamp_images.npz", ("original", "occluded", "completed"))
            labels = z["labels"] if "labels" in z else np.full(len(z["original"]), -1)
            parts += [_image_rows(run, k, z[k], labels) for k in ("original", "occluded", "completed")]
    if not parts:
        return {"run": np.array([], dtype=str), "kind": np.array([], dtype=str), "pos": np.zeros(0, np.int64),
                "label": np.zeros(0, np.int64), "pixels": np.zeros((0, 0), np.float32)}
    dims = {p["pixels"].shape[1] for p in parts}
    if len(dims) > 1:  # datasets of different sizes: pad with nan to the widest
        width = max(dims)
        for p in parts:
            pad = width - p["pixels"].shape[1]
            p["pixels"] = np.pad(p["pixels"], ((0, 0), (0, pad)), constant_values=np.nan)
    return {k: np.concatenate([p[k] for p in parts]) for k in ("run", "kind", "pos", "label", "pixels")}


def read_images(path: str | Path) -> dict[str, np.ndarray]:
    """An images table written by ``pcn aggregate --images-out``; a file that is not an .npz
    archive (a .npy array, a CSV) is a ValueError."""
    if Path(path).is_file() and not zipfile.is_zipfile(path):
        raise ValueError("not an .npz archive (pcn aggregate --images-out writes one)")
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def _write_images(table: dict[str, np.ndarray], out: str) -> None:
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    with open(out, "wb") as fh:
        np.savez_compressed(fh, **table)


def _write(df: pd.DataFrame, out: str) -> None:
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(out, index=False)


def _list_value(v):
    """``784-256-32`` (a list flattened by fmt_value) -> [784, 256, 32]; others unchanged."""
    if not isinstance(v, str):
        return v
    parts = v.split("-")
    try:
        return [int(p) for p in parts]
    except ValueError:
        try:
            return [float(p) for p in parts]
        except ValueError:
            return v


def parquet_frame(df: pd.DataFrame) -> pd.DataFrame:
    """``df`` ready for Parquet: list-valued config keys (``layers``) as lists again, and
    columns mixing value types (e.g. the trace's ``layer``: 0, 1, ..., "all") as text."""
    from pcn.study.config import defaults

    list_keys = {k for k, v in defaults().items() if isinstance(v, list)}
    out = df.copy()
    for col in out.columns:
        if col in list_keys:
            out[col] = out[col].map(_list_value)
            continue
        if out[col].dtype != object:
            continue
        kinds = {type(v) for v in out[col] if v is not None and not (isinstance(v, float) and math.isnan(v))}
        if len(kinds) > 1:
            out[col] = out[col].map(lambda v: v if v is None or (isinstance(v, float) and math.isnan(v)) else str(v))
    return out


def write_parquet(df: pd.DataFrame, out: str | Path) -> Path:
    """Write ``df`` as Parquet (pyarrow) at ``out``; returns the path."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    parquet_frame(df).to_parquet(out, index=False, engine="pyarrow")
    return out


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
    parser.add_argument("--sensitivity-out", metavar="CSV",
                        help="test-time sensitivity of all runs (sensitivity.csv), one row per run x eta x T x metric")
    parser.add_argument("--linear-probes-out", metavar="CSV",
                        help="linear probes of all runs (linear_probes.csv), one row per run x step x layer x metric")
    parser.add_argument("--alignment-out", metavar="CSV",
                        help="PC-vs-BP alignment logged in training (alignment.csv), "
                             "one row per run x epoch x layer x metric")
    parser.add_argument("--clamp-out", metavar="CSV",
                        help="clamping modes of all runs (clamp/clamp.csv), one row per run x mode x label x metric")
    parser.add_argument("--robustness-out", metavar="CSV",
                        help="corrupted-input inference of all runs (robustness.csv), "
                             "one row per run x corruption x level x step x metric")
    parser.add_argument("--images-out", metavar="NPZ",
                        help="images of all runs (images.npz and clamp images), one row per image")
    parser.add_argument("--parquet", action="store_true",
                        help="also write each long table (--curves-out, --traces-out, ...) as Parquet "
                             "beside its CSV (same name, .parquet)")
    parser.add_argument("--clamp-runs", nargs="*", metavar="DIR",
                        help="with --images-out: read clamp images of these runs only (default: wherever present)")


def run(args: argparse.Namespace) -> int:
    run_dirs = list(args.runs or [])
    if getattr(args, "runs_from", None):
        run_dirs += _read_list(args.runs_from)
    run_dirs = list(dict.fromkeys(run_dirs))  # a run given twice is one row
    if not run_dirs:
        raise SystemExit("pcn aggregate: no runs given (--runs DIR ... or --runs-from FILE)")
    tables = {"curves_out": curves, "traces_out": traces, "sensitivity_out": sensitivity,
              "linear_probes_out": linear_probes, "alignment_out": alignment, "clamp_out": clamp,
              "robustness_out": robustness}
    if not (args.out or getattr(args, "images_out", None) or any(getattr(args, k, None) for k in tables)):
        raise SystemExit("pcn aggregate: nothing to write (give --out, --curves-out, --traces-out, "
                         "--sensitivity-out, --linear-probes-out, --alignment-out, --clamp-out, --robustness-out "
                         "and/or --images-out)")
    summary = aggregate(run_dirs)
    if args.out:
        _write(summary, args.out)
        print(f"wrote {args.out}: {len(summary)} runs, {int(summary['diverged'].sum())} diverged")
    for key, fn in tables.items():
        out = getattr(args, key, None)
        if out:
            table = fn(run_dirs, summary)
            _write(table, out)
            print(f"wrote {out}: {len(table)} rows")
            if getattr(args, "parquet", False):
                print(f"wrote {write_parquet(table, Path(out).with_suffix('.parquet'))}")
    if getattr(args, "images_out", None):
        imgs = images(run_dirs, getattr(args, "clamp_runs", None))
        _write_images(imgs, args.images_out)
        print(f"wrote {args.images_out}: {len(imgs['run'])} images")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="pcn aggregate", description=__doc__)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
