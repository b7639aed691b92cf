"""Stable names for runs: ``key~value`` path segments.

A run of the study is identified by its *factors* (the grid keys of the workflow
config, e.g. dataset, model, rule, ce_weight, seed).  Its results folder is one
``key~value`` segment per factor, e.g.::

    dataset~mnist/model~pcn/rule~pc/w~0.5/seed~0

Values are formatted so that the same number always gives the same text
(``0.1 + 0.2`` -> ``0.3``, ``1.0`` -> ``1``), and the order of the segments does
not depend on the order of the keys in the config.
"""
from __future__ import annotations

import math
import re
from typing import Any, Mapping

#: Segments that always come first (in this order) and last; other factors go
#: in between, sorted by key.
FIRST = ("dataset", "model", "rule", "ce_weight")
LAST = ("seed",)
#: Short folder names for some keys (``ce_weight`` -> ``w``).
ALIASES = {"ce_weight": "w"}
_UNALIAS = {v: k for k, v in ALIASES.items()}

_SAFE = re.compile(r"^[A-Za-z0-9_.+\-]+$")


def fmt_value(v: Any) -> str:
    """Format a factor value for a folder name, stably.

    Floats keep at most 12 significant digits, which removes binary noise
    (``0.30000000000000004`` -> ``0.3``) while keeping any value a person would
    type; integral floats lose the ``.0`` (``1.0`` -> ``1``).  Lists are joined
    with ``-`` (``[784, 256, 32]`` -> ``784-256-32``).  Strings must not contain
    path separators, ``~`` or whitespace.
    """
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if not math.isfinite(v):
            raise ValueError(f"cannot name a run after a non-finite value {v!r}")
        text = f"{v:.12g}"
        return "0" if text == "-0" else text
    if isinstance(v, (list, tuple)):
        if not v:
            raise ValueError("cannot name a run after an empty list")
        return "-".join(fmt_value(x) for x in v)
    if isinstance(v, str):
        if not v or not _SAFE.match(v):
            raise ValueError(
                f"value {v!r} cannot be part of a folder name "
                "(use letters, digits and . _ + - only)"
            )
        return v
    raise ValueError(f"cannot name a run after a value of type {type(v).__name__}: {v!r}")


def _order(keys) -> list[str]:
    keys = list(keys)
    first = [k for k in FIRST if k in keys]
    last = [k for k in LAST if k in keys]
    middle = sorted(k for k in keys if k not in first and k not in last)
    return first + middle + last


def segment(key: str, value: Any) -> str:
    """One ``key~value`` folder name."""
    if not re.match(r"^[A-Za-z][A-Za-z0-9_]*$", key):
        raise ValueError(f"factor key {key!r} cannot be part of a folder name")
    return f"{ALIASES.get(key, key)}~{fmt_value(value)}"


def run_dir(factors: Mapping[str, Any]) -> str:
    """Relative folder of the run with these factors (``/``-separated, no prefix).

    >>> run_dir({"seed": 0, "ce_weight": 0.1 + 0.2, "rule": "pc", "model": "pcn", "dataset": "mnist"})
    'dataset~mnist/model~pcn/rule~pc/w~0.3/seed~0'
    """
    if not factors:
        raise ValueError("a run needs at least one factor")
    return "/".join(segment(k, factors[k]) for k in _order(factors))


def parse_run_dir(path: str) -> dict[str, str]:
    """The ``key~value`` segments found in ``path`` (values stay text; aliases undone).

    Segments without ``~`` (such as ``results/runs``) are ignored.
    """
    out: dict[str, str] = {}
    for part in str(path).replace("\\", "/").split("/"):
        if "~" in part:
            key, value = part.split("~", 1)
            out[_UNALIAS.get(key, key)] = value
    return out
