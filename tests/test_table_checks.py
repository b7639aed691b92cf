"""Issue 24, parts 1 and 2: the table readers never end in a traceback.  ``pcn figure`` checks
the columns each figure needs (a missing one is named in one line, exit 1; a table with no rows
draws a figure that says so) and ``pcn aggregate`` checks the fields of final.json and the
columns of the run files it reads.  Tiny synthetic tables only (a few seconds)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pcn.cli import main
from pcn.outputs import figures
from pcn.study.config import resolve

# One row of each table with its own columns (what pcn aggregate writes, cut down).
ROWS = {
    "summary": {"run": "r", "dataset": "mnist", "model": "pcn", "rule": "bp", "ce_weight": 0.5, "seed": 0,
                "test_acc": 0.9, "recon_mse": 0.1, "gen_mse": 0.2, "diverged": False},
    "curves": {"run": "r", "epoch": 1, "test_acc": 0.9, "recon_mse": 0.1, "train_loss": 1.0},
    "traces": {"run": "r", "step": 0, "layer": "all", "metric": "energy", "value": 1.0},
    "sensitivity": {"run": "r", "eta_factor": 1.0, "test_T": 5, "metric": "acc", "value": 0.5},
    "linear_probes": {"run": "r", "step": 5, "layer": 1, "metric": "probe_acc", "value": 0.8},
    "alignment": {"run": "r", "epoch": 0, "layer": "all", "metric": "cos", "value": 0.7},
    "robustness": {"run": "r", "corruption": "noise", "level": 0.5, "step": 5, "metric": "acc", "value": 0.6,
                   "T": 5, "ce_weight": 0.5},
}


def cli(argv: list[str], capsys) -> tuple[int, str, str]:
    """``pcn argv`` in-process: (exit status, stdout, stderr); an exception escaping main() (a
    traceback in real life) fails the test by itself."""
    try:
        code = main([str(a) for a in argv])
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    out = capsys.readouterr()
    return code, out.out, out.err


def _csv(path: Path, columns: list[str], rows: list[dict] = ()) -> Path:
    pd.DataFrame(list(rows), columns=columns).to_csv(path, index=False)
    return path


def _needed(name: str) -> str:
    return figures.FIGURES[name][1][0]


# --------------------------------------------------------------------------- pcn figure
@pytest.mark.parametrize("name", [n for n in sorted(figures.FIGURES) if n != "images"])
def test_header_only_table_draws_an_empty_figure(name, tmp_path, capsys):
    table = _needed(name)
    path = _csv(tmp_path / f"{table}.csv", list(ROWS[table]))
    out = tmp_path / "f.png"
    code, stdout, err = cli(["figure", name, figures.tables.option(table), path, "--out", out], capsys)
    assert code == 0 and err == "", err
    assert f"an empty figure: {figures.tables.option(table)} {path} has no rows" in stdout
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.with_suffix(".pdf").exists()


def test_empty_images_table_draws_an_empty_figure(tmp_path, capsys):
    path = tmp_path / "images.npz"
    np.savez(path, run=np.array([], dtype=str), kind=np.array([], dtype=str), pos=np.zeros(0, np.int64),
             label=np.zeros(0, np.int64), pixels=np.zeros((0, 0), np.float32))
    code, stdout, err = cli(["figure", "images", "--images", path, "--out", tmp_path / "i.png"], capsys)
    assert code == 0 and "has no rows" in stdout, err
    assert (tmp_path / "i.png").exists()


@pytest.mark.parametrize("name", [n for n in sorted(figures.FIGURES) if n != "images"])
def test_table_of_another_kind_is_one_line_naming_the_missing_columns(name, tmp_path, capsys):
    table = _needed(name)
    other = "curves" if table != "curves" else "traces"   # a table with rows but the wrong columns
    path = _csv(tmp_path / "other.csv", list(ROWS[other]), [ROWS[other]])
    code, stdout, err = cli(["figure", name, figures.tables.option(table), path, "--out", tmp_path / "f.png"],
                            capsys)
    lines = err.strip().splitlines()
    assert code == 1 and len(lines) == 1, err
    missing = [c for g in figures.COLUMNS[table] + figures.FIGURE_COLUMNS.get(name, {}).get(table, ())
               for c in g if not set(g) & set(ROWS[other])]
    assert missing and all(c in lines[0] for c in missing), lines[0]
    assert f"{figures.tables.option(table)} {path}: missing column(s)" in lines[0]
    assert f"figure {name} needs" in lines[0] and "the table has run, " in lines[0]
    assert not (tmp_path / "f.png").exists()


def test_tradeoff_names_its_own_columns(tmp_path, capsys):
    path = _csv(tmp_path / "s.csv", ["run", "ce_weight", "recon_mse"], [{"run": "r", "ce_weight": 0.5, "recon_mse": 0.1}])
    code, _, err = cli(["figure", "tradeoff", "--summary", path, "--out", tmp_path / "t.png"], capsys)
    assert code == 1 and "missing column(s) test_acc;" in err, err
    assert "needs run, ce_weight, test_acc, (gen_mse or recon_mse)" in err


def test_optional_summary_is_checked_and_an_empty_one_left_out(tmp_path, capsys):
    curves = _csv(tmp_path / "c.csv", list(ROWS["curves"]), [ROWS["curves"], {**ROWS["curves"], "epoch": 2}])
    no_run = _csv(tmp_path / "s.csv", ["ce_weight", "test_acc"], [{"ce_weight": 0.5, "test_acc": 0.9}])
    code, _, err = cli(["figure", "curves", "--curves", curves, "--summary", no_run, "--out", tmp_path / "a.png"],
                       capsys)
    assert code == 1 and f"--summary {no_run}: missing column(s) run;" in err, err
    empty = _csv(tmp_path / "e.csv", list(ROWS["summary"]))
    code, stdout, err = cli(["figure", "curves", "--curves", curves, "--summary", empty, "--out", tmp_path / "b.png"],
                            capsys)
    assert code == 0 and "empty figure" not in stdout, err
    assert (tmp_path / "b.png").stat().st_size > 10_000   # the curves are drawn


def test_images_table_without_pixels_is_one_line(tmp_path, capsys):
    path = tmp_path / "images.npz"
    np.savez(path, run=np.array(["r"]), kind=np.array(["x"]), pos=np.zeros(1, np.int64), label=np.zeros(1, np.int64))
    code, _, err = cli(["figure", "images", "--images", path, "--out", tmp_path / "i.png"], capsys)
    assert code == 1 and len(err.strip().splitlines()) == 1 and "missing column(s) pixels" in err, err


def test_images_table_of_uneven_arrays_is_one_line(tmp_path, capsys):
    path = tmp_path / "images.npz"
    np.savez(path, run=np.array(["r", "r"]), kind=np.array(["x", "x"]), pos=np.arange(2), label=np.arange(2),
             pixels=np.zeros(5))
    code, _, err = cli(["figure", "images", "--images", path, "--out", tmp_path / "i.png"], capsys)
    assert code == 1 and "pixels has shape (5,) and 2 images" in err, err


def test_odd_values_in_present_columns_draw_without_a_traceback(tmp_path, capsys):
    """Empty text cells, text where numbers belong: the figure draws (empty panels) instead of failing."""
    summary = _csv(tmp_path / "s.csv", list(ROWS["summary"]),
                   [{**ROWS["summary"], "rule": None, "ce_weight": "abc", "test_acc": "high"}])
    traces = _csv(tmp_path / "t.csv", list(ROWS["traces"]), [{**ROWS["traces"], "layer": None, "value": "v"}])
    for name, extra in (("tradeoff", []), ("ce_weight", []), ("inference", ["--traces", traces])):
        code, stdout, err = cli(["figure", name, "--summary", summary, *extra, "--out", tmp_path / f"{name}.png"],
                                capsys)
        assert code == 0 and err == "" and "wrote" in stdout, (name, err)


def test_curves_given_as_the_summary_is_one_line(tmp_path, capsys):
    """curves.csv has every column of the summary a figure reads, one row per epoch: refused."""
    rows = [{**ROWS["summary"], "epoch": e} for e in (1, 2)]
    path = _csv(tmp_path / "curves.csv", list(rows[0]), rows)
    code, _, err = cli(["figure", "tradeoff", "--summary", path, "--out", tmp_path / "t.png"], capsys)
    assert code == 1 and len(err.strip().splitlines()) == 1, err
    assert f"--summary {path}: run r is in 2 rows; the summary has one row per run" in err
    assert not (tmp_path / "t.png").exists()


@pytest.mark.parametrize("kind", ["npy", "csv"])
def test_images_file_that_is_not_an_npz_is_one_line(tmp_path, capsys, kind):
    path = tmp_path / f"images.{kind}"
    if kind == "npy":
        np.save(path, np.zeros(3))
    else:
        _csv(path, list(ROWS["summary"]), [ROWS["summary"]])
    code, _, err = cli(["figure", "images", "--images", path, "--out", tmp_path / "i.png"], capsys)
    assert code == 1 and len(err.strip().splitlines()) == 1 and "not an .npz archive" in err, err


def test_draw_names_the_table_without_a_file():
    with pytest.raises(figures.TableError, match="the summary table: missing column.s. ce_weight"):
        figures.draw("inference_gain", {"summary": pd.DataFrame({"run": ["r"]})}, "/nonexistent/x.png")


# --------------------------------------------------------------------------- pcn aggregate
def _run(root: Path, final: dict, name: str = "r") -> Path:
    d = root / name
    d.mkdir(parents=True)
    (d / "final.json").write_text(json.dumps(final))
    return d


def _good_final() -> dict:
    return dict(resolve({"epochs": 1}, {}), test_acc=0.9, recon_mse=float("nan"), gen_mse=0.2, energy=None,
                wall_s=1.0, epochs_done=1, diverged=False, diverged_epoch=None, diverged_batch=None,
                code_commit=None, code_dirty=None, code_sha256="ab", data_files={"a": "b"})


def test_aggregate_refuses_fields_of_the_wrong_type_in_one_line(tmp_path, capsys):
    run = _run(tmp_path, {"test_acc": "high", "config": 5})
    code, _, err = cli(["aggregate", "--runs", run, "--out", tmp_path / "s.csv"], capsys)
    lines = err.strip().splitlines()
    assert code == 1 and len(lines) == 1, err
    assert "field 'test_acc' is \"high\" (str); must be a number or null" in lines[0]
    assert "field 'config' is not one pcn train writes" in lines[0] and "final.json" in lines[0]
    assert not (tmp_path / "s.csv").exists()


def test_aggregate_counts_a_run_given_twice_once(tmp_path, capsys):
    run = _run(tmp_path, _good_final())
    code, stdout, err = cli(["aggregate", "--runs", run, run, "--out", tmp_path / "s.csv"], capsys)
    assert code == 0 and "1 runs" in stdout, err
    assert len(pd.read_csv(tmp_path / "s.csv")) == 1


@pytest.mark.parametrize("key, value, needle", [
    ("layers", [784, "a"], "field 'layers' is [784, \"a\"] (list); must be as pcn/train_schema.yaml says"),
    ("epochs", "3", "field 'epochs' is \"3\" (str)"),
    ("diverged", 1, "field 'diverged' is 1 (int); must be true or false"),
    ("epochs_done", 1.5, "field 'epochs_done' is 1.5 (float); must be a whole number"),
    ("test_acc", True, "field 'test_acc' is true (bool); must be a number or null"),
    ("data_files", "x", "field 'data_files' is \"x\" (str); must be an object"),
])
def test_aggregate_checks_each_kind_of_field(tmp_path, capsys, key, value, needle):
    run = _run(tmp_path, {**_good_final(), key: value})
    code, _, err = cli(["aggregate", "--runs", run, "--out", tmp_path / "s.csv"], capsys)
    assert code == 1 and needle in err, err


def test_aggregate_accepts_a_well_typed_final_json_and_needs_test_acc(tmp_path, capsys):
    good = _run(tmp_path, _good_final(), "good")
    code, stdout, err = cli(["aggregate", "--runs", good, "--out", tmp_path / "s.csv"], capsys)
    assert code == 0, err
    s = pd.read_csv(tmp_path / "s.csv")
    assert s.loc[0, "test_acc"] == 0.9 and s.loc[0, "epochs"] == 1
    no_acc = {k: v for k, v in _good_final().items() if k != "test_acc"}
    code, _, err = cli(["aggregate", "--runs", _run(tmp_path, no_acc, "no_acc"), "--out", tmp_path / "t.csv"], capsys)
    assert code == 1 and "field 'test_acc' is missing" in err, err


@pytest.mark.parametrize("file, columns, row, option, needle", [
    ("trace.csv", ["step", "metric", "value"], [0, "acc", 0.5], "--traces-out", "lacks the column(s) layer"),
    ("trace.csv", ["step", "layer", "metric", "value"], [0, "all", "acc", "high"], "--traces-out",
     "column value holds 'high', not a number"),
    ("sensitivity.csv", ["eta_factor", "eta", "metric", "value"], [1.0, 0.1, "acc", 0.5], "--sensitivity-out",
     "lacks the column(s) T"),
    ("metrics.csv", ["test_acc"], [0.5], "--curves-out", "lacks the column(s) epoch"),
])
def test_aggregate_checks_the_columns_of_run_files(tmp_path, capsys, file, columns, row, option, needle):
    run = _run(tmp_path, _good_final())
    pd.DataFrame([row], columns=columns).to_csv(run / file, index=False)
    if file != "metrics.csv":
        pd.DataFrame({"epoch": [1]}).to_csv(run / "metrics.csv", index=False)
    code, _, err = cli(["aggregate", "--runs", run, option, tmp_path / "t.csv"], capsys)
    assert code == 1 and len(err.strip().splitlines()) == 1 and needle in err and file in err, err


def test_aggregate_images_without_an_array_is_one_line(tmp_path, capsys):
    run = _run(tmp_path, _good_final())
    np.savez(run / "images.npz", x=np.zeros((2, 4)), recon=np.zeros((2, 4)), y=np.arange(2))
    code, _, err = cli(["aggregate", "--runs", run, "--images-out", tmp_path / "i.npz"], capsys)
    assert code == 1 and "images.npz lacks the array(s) gen" in err, err
