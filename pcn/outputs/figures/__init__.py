"""Figures of the study, drawn from the aggregated tables alone (``pcn figure``).

Each figure is one function taking DataFrames and returning a matplotlib
``Figure``; :func:`save` writes it as PNG and PDF.  Tables (see
``pcn.outputs.aggregate``): ``summary.csv`` (one row per run), ``curves.csv`` (run x
epoch), ``traces.csv`` (run x step x layer x metric), ``sensitivity.csv`` (run x
test-time eta x T x metric), ``linear_probes.csv`` (run x step x layer x metric),
``alignment.csv`` (run x epoch x layer x metric), ``clamp.csv`` (run x mode x
label x metric), ``robustness.csv`` (run x corruption x level x step x metric) and
``images.npz`` (one row per image).

Figures: ``tradeoff``, ``ce_weight``, ``inference_gain`` (summary), ``curves`` (curves),
``inference`` and ``dynamics`` (traces), ``sensitivity``, ``robustness``, ``probes`` (linear probes),
``alignment`` and ``images`` (images, with clamp metrics).  Every table a figure reads is
checked for the columns it needs first: a missing one is named in one line, and a table
with no rows gives a figure that says so.

Conventions shared by all figures
* one line per learning rule / model (``pcn pc``, ``pcn bp``, ``ae``; other
  swept factors such as ``T`` are added to the label), one panel per dataset;
* lines show the mean over seeds of the runs that did not diverge, error bars /
  bands one standard deviation (seaborn's ``lineplot(errorbar="sd")``);
* diverged runs are never averaged in: they are drawn as ``x`` markers (where
  their numbers are finite) and counted in the panel title.
"""
# The package, one figure family per module:
#   common         the shared conventions and helpers (labels, palettes, lines, panels)
#   summary        tradeoff, ce_weight, inference_gain (the summary table vs the CE weight)
#   dynamics       inference, sensitivity (inference over its steps, test-time T and eta)
#   fixed_point    dynamics (accuracy, gen_mse, energy, relative update out to 100 T, per rule)
#   robustness     robustness (inference from corrupted images at steps 0, T, 10 T)
#   training       curves, alignment (over the training epochs)
#   linear_probes  probes (per-layer linear probes)
#   image_grids    images (reconstruction, generation, label -> image, completion)
#   tables         reading a table and checking its columns
#   command        FIGURES (name -> function, tables), draw, save and the `pcn figure` CLI
# A new figure: a function in a module of its family (or a new module), one FIGURES entry in
# command.py, its extra columns in tables.FIGURE_COLUMNS, its name re-exported here.
from __future__ import annotations

from pcn.outputs.figures.common import (  # noqa: F401  (helpers used by the tests)
    _extra_factors, _log_if_wide, _numeric, _palette, _prepare, plt,
)
from pcn.outputs.figures.command import (  # noqa: F401
    FIGURES, OPTIONAL, add_arguments, draw, empty_table, main, run, save,
)
from pcn.outputs.figures.dynamics import inference, sensitivity  # noqa: F401
from pcn.outputs.figures.fixed_point import dynamics  # noqa: F401
from pcn.outputs.figures.image_grids import images  # noqa: F401
from pcn.outputs.figures.linear_probes import probes  # noqa: F401
from pcn.outputs.figures.robustness import robustness  # noqa: F401
from pcn.outputs.figures.summary import ce_weight, inference_gain, tradeoff  # noqa: F401
from pcn.outputs.figures.tables import (  # noqa: F401
    COLUMNS, FIGURE_COLUMNS, TABLES, TableError, check_columns,
)
from pcn.outputs.figures.training import alignment, curves  # noqa: F401

__all__ = [
    "FIGURES", "OPTIONAL", "TABLES", "COLUMNS", "FIGURE_COLUMNS", "TableError", "check_columns",
    "add_arguments", "draw", "empty_table", "main", "run", "save",
    "tradeoff", "ce_weight", "inference_gain", "inference", "sensitivity", "curves", "alignment",
    "probes", "images", "dynamics", "robustness",
]
