"""Run configuration: defaults, ``--set key=value`` overrides and validation.

Every default and allowed value lives in ``train_schema.yaml`` beside this file;
nothing else in the package repeats them.  Errors name the offending key.
"""
from __future__ import annotations

import copy
import difflib
import json
import math
import re
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable

import jsonschema
import yaml

from pcn.errors import UsageError

SCHEMA_PATH = Path(__file__).parents[1] / "train_schema.yaml"


class ConfigError(UsageError, ValueError):
    """A configuration key is unknown, of the wrong type, or out of range."""


@lru_cache(maxsize=1)
def schema() -> dict:
    """The training-config JSON schema (with defaults)."""
    return yaml.safe_load(SCHEMA_PATH.read_text())


def defaults() -> dict:
    """All training keys with their default values."""
    return {k: copy.deepcopy(v["default"]) for k, v in schema()["properties"].items()}


# A number as YAML 1.2 writes it.  PyYAML (YAML 1.1) reads ``1e-3`` (no dot) as text; our
# loader and the key coercion below read it as the float it is.
_NUMBER = re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)(?:[eE][-+]?[0-9]+)?$")


class _Loader(yaml.SafeLoader):
    """yaml.SafeLoader that also reads ``1e-3`` / ``1E5`` as floats."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."))


def yaml_load(text: str) -> Any:
    """``yaml.safe_load`` that reads ``1e-3`` as a float (YAML 1.2's rule)."""
    return yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass


def _yaml_problem(err: yaml.YAMLError) -> str:
    """One line saying where a YAML text is broken and how."""
    mark = getattr(err, "problem_mark", None)
    where = f"line {mark.line + 1} column {mark.column + 1}: " if mark is not None else ""
    problem = getattr(err, "problem", None) or str(err).splitlines()[0]
    return f"{where}{problem}"


def parse_value(text: str) -> Any:
    """Parse a ``--set`` value as YAML (so ``1e-3`` -> 0.001, ``[1, 2]`` -> list, ``null`` -> None)."""
    return yaml_load(text)


def from_text(value: Any) -> Any:
    """``parse_value`` applied to every text leaf of nested lists and mappings (Snakemake's
    ``--config`` gives nested values as text: ``"100"`` -> 100, ``"null"`` -> None)."""
    if isinstance(value, str):
        return parse_value(value)
    if isinstance(value, list):
        return [from_text(v) for v in value]
    if isinstance(value, dict):
        return {k: from_text(v) for k, v in value.items()}
    return value


def parse_overrides(items: Iterable[str]) -> dict:
    """Turn ``["key=value", ...]`` into a dict, rejecting malformed items."""
    out: dict = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"--set expects key=value, got {item!r}")
        key, value = item.split("=", 1)
        key = key.strip()
        if not key:
            raise ConfigError(f"--set expects key=value, got {item!r} (no key)")
        try:
            out[key] = parse_value(value.strip())
        except yaml.YAMLError as e:
            raise ConfigError(f"--set {key}: {value.strip()!r} is not a valid YAML value ({_yaml_problem(e)})") from None
    return out


def _types(key: str) -> set:
    t = schema()["properties"].get(key, {}).get("type", [])
    return set([t] if isinstance(t, str) else t)


def _coerce_number(value: Any, integer: bool) -> Any:
    """``"1e-3"`` -> 0.001 (text that is a number); for integer keys ``3.0`` -> 3.  Anything
    else is returned unchanged for the schema to judge."""
    if isinstance(value, str) and _NUMBER.match(value.strip()):
        value = float(value.strip().replace("_", ""))
    if integer and isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return int(value)
    return value


def coerce(cfg: dict) -> dict:
    """Numbers written as text (``1e-3``) become floats, integral floats of integer keys
    (``epochs: 3.0``, a layer size ``32.0``) become ints.  Returns a new dict."""
    out = dict(cfg)
    for key, value in cfg.items():
        types = _types(key)
        if types & {"number", "integer"}:
            out[key] = _coerce_number(value, "integer" in types and "number" not in types)
        elif "array" in types and isinstance(value, list):
            item_type = schema()["properties"][key].get("items", {}).get("type")
            if item_type in ("number", "integer"):
                out[key] = [_coerce_number(v, item_type == "integer") for v in value]
    return out


def _describe(err: jsonschema.ValidationError) -> str:
    if err.validator == "additionalProperties":
        allowed = sorted(schema()["properties"])
        parts = []
        for key in sorted(set(err.instance) - set(allowed), key=str):
            close = difflib.get_close_matches(str(key), allowed, n=1)
            parts.append(f"unknown config key '{key}'" + (f" (did you mean '{close[0]}'?)" if close else ""))
        return "; ".join(parts) + f"; allowed keys: {', '.join(allowed)}"
    key = ".".join(str(p) for p in err.absolute_path) or "<root>"
    return f"config key '{key}': {err.message}"


def _non_finite(value: Any, key: str) -> list[str]:
    if isinstance(value, float) and not math.isfinite(value):
        return [key]
    if isinstance(value, list):
        return [k for i, v in enumerate(value) for k in _non_finite(v, f"{key}[{i}]")]
    return []


def input_size(dataset: str) -> int:
    """Pixels per image of ``dataset`` (the schema's dataset.input_size)."""
    return schema()["properties"]["dataset"]["input_size"][dataset]


def _shape_words(size: int) -> str:
    """``28 x 28 pixels`` or ``32 x 32 pixels x 3 colour channels`` for an input size."""
    from pcn.images import image_shape

    c, h, w = image_shape(size)
    return f"{h} x {w} pixels" + (f" x {c} colour channels" if c > 1 else "")


def validate(cfg: dict, for_run: bool = False) -> dict:
    """Check a full config against the schema plus cross-key rules; return it.  With
    ``for_run`` (a config that will read its dataset), ``layers[0]`` must also be the dataset's
    input size; without it the layer sizes are free (synthetic models: tests, benchmarks)."""
    errors = sorted(jsonschema.Draft7Validator(schema()).iter_errors(cfg), key=lambda e: [str(p) for p in e.absolute_path])
    if errors:
        raise ConfigError("; ".join(_describe(e) for e in errors))
    bad = [k for key, v in cfg.items() for k in _non_finite(v, key)]
    if bad:
        raise ConfigError("; ".join(f"config key '{k}': must be a finite number (nan and inf are not allowed)"
                                    for k in bad))
    if cfg["model"] == "pcn" and cfg.get("arch", "mlp") == "mlp" and len(cfg["layers"]) < 2:
        raise ConfigError("config key 'layers': a pcn needs at least 2 layer sizes")
    if cfg["model"] != "pcn" and len(cfg["layers"]) < 2:
        raise ConfigError(f"config key 'layers': model {cfg['model']!r} needs at least 2 layer sizes")
    conv_problem = _conv_problem(cfg)
    if conv_problem:
        raise ConfigError(conv_problem)
    size = input_size(cfg["dataset"])
    if for_run and cfg["layers"][0] != size:
        raise ConfigError(f"config key 'layers': the first size {cfg['layers'][0]} must equal the input size of "
                          f"dataset {cfg['dataset']} ({size} values: {_shape_words(size)}), "
                          f"e.g. layers: [{size}, 256, 32]")
    reason = undefined_point(cfg)
    if reason:
        raise ConfigError(reason)
    return cfg


CONV_KEYS = ("conv_channels", "kernels", "strides", "padding")
"""The geometry keys of ``arch: conv``."""


def conv_spec(cfg: dict):
    """The ``pcn.core.model.ConvSpec`` of an ``arch: conv`` config (None for ``mlp``); the input's
    (c, h, w) from the dataset's layout of ``layers[0]`` values (``pcn.images``)."""
    if cfg.get("arch", "mlp") != "conv":
        return None
    from pcn.core.model import ConvSpec
    from pcn.images import image_shape

    return ConvSpec(image_shape(cfg["layers"][0]), *(list(cfg[k]) for k in CONV_KEYS))


def _conv_problem(cfg: dict) -> str | None:
    """Why the conv keys of a config define no model (None if they do, or for ``arch: mlp``)."""
    if cfg.get("arch", "mlp") != "conv":
        return None
    if cfg["model"] != "pcn":
        return f"config key 'arch': conv is a pcn architecture; model {cfg['model']!r} takes arch: mlp"
    from pcn.core.model import conv_geometry
    from pcn.images import DATASET_SHAPES

    if cfg["layers"][0] not in DATASET_SHAPES and int(cfg["layers"][0] ** 0.5) ** 2 != cfg["layers"][0]:
        return (f"config key 'layers': arch conv needs an image input, and {cfg['layers'][0]} values are neither "
                f"a dataset's image ({', '.join(map(str, DATASET_SHAPES))}) nor a square")
    for k in ("kernels", "strides", "padding"):
        if len(cfg[k]) != len(cfg["conv_channels"]):
            return (f"config key '{k}': {len(cfg[k])} entries {cfg[k]} but conv_channels has "
                    f"{len(cfg['conv_channels'])} {cfg['conv_channels']}: give one per conv layer")
    try:
        conv_geometry(conv_spec(cfg))
    except ValueError as e:
        return f"config keys {', '.join(CONV_KEYS)}: {e}"
    if cfg["eta_mode"] != "fixed":
        return "config key 'eta_mode': arch conv takes eta_mode fixed (the safe step's curvature bound is written for dense weights)"
    if cfg["weight_cap"] is not None:
        return "config key 'weight_cap': arch conv takes weight_cap null (the cap's spectral norm is written for dense weights)"
    return None


def undefined_point(cfg: dict) -> str | None:
    """Why a combination of keys defines no run (None if it does).  The study grid leaves such
    points out; a single run with one is refused.

    ``pc``, ``bpc``, ``ipc`` at w = 1: their nudged inference weighs CE by beta = w / (1 - w),
    infinite at w = 1, and the local update has no energy term left to follow
    (docs/methods.md); ``pc-ep`` and ``bp`` are defined there."""
    rule = cfg.get("rule")
    if cfg.get("model", "pcn") == "pcn" and rule in NUDGED_RULES and cfg.get("ce_weight", 0) == 1:
        return (f"config key 'ce_weight': rule {rule!r} needs ce_weight < 1 (its label nudge beta = w / (1 - w) "
                "is infinite at w = 1 and leaves no local update); use pc-ep or bp for w = 1")
    return None


NUDGED_RULES = ("pc", "bpc", "ipc")
"""Rules whose nudge is beta = w / (1 - w) (undefined at w = 1)."""


def resolve(base: dict | None = None, overrides: dict | None = None, for_run: bool = False) -> dict:
    """Defaults <- ``base`` <- ``overrides``, validated (``for_run``: also against the
    dataset's input size, see ``validate``).  ``ae`` and ``cre`` runs record rule ``bp``."""
    cfg = defaults()
    for source in (base or {}), (overrides or {}):
        if not isinstance(source, dict):
            raise ConfigError(f"a config must be a mapping of keys to values, got {type(source).__name__}")
        cfg.update(copy.deepcopy(source))
    cfg = coerce(cfg)
    validate(cfg, for_run)
    if cfg["model"] in ("ae", "cre"):   # ae and cre runs ignore rule and init: one canonical value each
        cfg["rule"] = "bp"
        cfg["init"] = defaults()["init"]
    return cfg


def read_file(path: str | Path) -> dict:
    """The mapping in a YAML/JSON config file; every problem is a ConfigError naming the file."""
    p = Path(path)
    if str(path) == "":
        raise ConfigError("--config: empty file name")
    if not p.exists():
        raise ConfigError(f"config file {p} does not exist")
    if p.is_dir():
        raise ConfigError(f"config file {p} is a folder, not a file")
    try:
        text = p.read_text()
    except UnicodeDecodeError:
        raise ConfigError(f"config file {p} is not a text file (YAML or JSON expected)") from None
    except OSError as e:
        raise ConfigError(f"config file {p} cannot be read: {e.strerror or e}") from None
    try:
        base = yaml_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {p} is not valid YAML: {_yaml_problem(e)}") from None
    if base is None:
        return {}
    if not isinstance(base, dict):
        raise ConfigError(f"config file {p} must hold a mapping of keys to values, "
                          f"not a {type(base).__name__}")
    return base


def load(path: str | Path | None = None, overrides: Iterable[str] = ()) -> dict:
    """Read a YAML/JSON config file (optional), apply ``key=value`` overrides, validate."""
    base = read_file(path) if path is not None else {}
    return resolve(base, parse_overrides(overrides), for_run=True)


def dumps(cfg: dict) -> str:
    return json.dumps(cfg, indent=2, sort_keys=True)
