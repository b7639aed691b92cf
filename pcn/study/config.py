"""Run configuration: defaults, ``--set key=value`` overrides and validation.

Every default and allowed value lives in ``train_schema.yaml`` beside this file;
nothing else in the package repeats them.  Errors name the offending key.
"""
from __future__ import annotations

import copy
import json
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable

import jsonschema
import yaml

SCHEMA_PATH = Path(__file__).parents[1] / "train_schema.yaml"


class ConfigError(ValueError):
    """A configuration key is unknown, of the wrong type, or out of range."""


@lru_cache(maxsize=1)
def schema() -> dict:
    """The training-config JSON schema (with defaults)."""
    return yaml.safe_load(SCHEMA_PATH.read_text())


def defaults() -> dict:
    """All training keys with their default values."""
    return {k: copy.deepcopy(v["default"]) for k, v in schema()["properties"].items()}


def parse_value(text: str) -> Any:
    """Parse a ``--set`` value as YAML (so ``1e-3`` -> 0.001, ``[1, 2]`` -> list, ``null`` -> None)."""
    # YAML 1.1 reads '1e-3' as a string; accept plain floats first.
    try:
        return float(text) if any(c in text for c in ".eE") and not text.startswith("[") else int(text)
    except ValueError:
        pass
    return yaml.safe_load(text)


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
        out[key.strip()] = parse_value(value.strip())
    return out


def _describe(err: jsonschema.ValidationError) -> str:
    if err.validator == "additionalProperties":
        allowed = ", ".join(sorted(schema()["properties"]))
        extra = sorted(set(err.instance) - set(schema()["properties"]))
        return f"unknown config key(s) {extra}; allowed keys: {allowed}"
    key = ".".join(str(p) for p in err.absolute_path) or "<root>"
    return f"config key '{key}': {err.message}"


def validate(cfg: dict) -> dict:
    """Check a full config against the schema plus cross-key rules; return it."""
    errors = sorted(jsonschema.Draft7Validator(schema()).iter_errors(cfg), key=lambda e: list(e.absolute_path))
    if errors:
        raise ConfigError("; ".join(_describe(e) for e in errors))
    if cfg["model"] == "pcn" and len(cfg["layers"]) < 2:
        raise ConfigError("config key 'layers': a pcn needs at least 2 layer sizes")
    reason = undefined_point(cfg)
    if reason:
        raise ConfigError(reason)
    return cfg


def undefined_point(cfg: dict) -> str | None:
    """Why a combination of keys defines no run (None if it does).  The study grid leaves such
    points out; a single run with one is refused.

    ``pc`` at w = 1: its nudged inference weighs CE by beta = w / (1 - w), infinite at w = 1,
    and the local update has no energy term left to follow (docs/methods.md)."""
    if cfg.get("model", "pcn") == "pcn" and cfg.get("rule") == "pc" and cfg.get("ce_weight", 0) >= 1:
        return ("config key 'ce_weight': rule 'pc' needs ce_weight < 1 (its label nudge beta = w / (1 - w) "
                "is infinite at w = 1 and leaves no local update); use bp for w = 1")
    return None


def resolve(base: dict | None = None, overrides: dict | None = None) -> dict:
    """Defaults <- ``base`` <- ``overrides``, validated.  ``ae`` runs record rule ``bp``."""
    cfg = defaults()
    for source in (base or {}), (overrides or {}):
        if not isinstance(source, dict):
            raise ConfigError(f"a config must be a mapping of keys to values, got {type(source).__name__}")
        cfg.update(copy.deepcopy(source))
    validate(cfg)
    if cfg["model"] == "ae":
        cfg["rule"] = "bp"
    return cfg


def load(path: str | Path | None = None, overrides: Iterable[str] = ()) -> dict:
    """Read a YAML/JSON config file (optional), apply ``key=value`` overrides, validate."""
    base: dict = {}
    if path is not None:
        p = Path(path)
        if not p.exists():
            raise ConfigError(f"config file {p} does not exist")
        base = yaml.safe_load(p.read_text()) or {}
    return resolve(base, parse_overrides(overrides))


def dumps(cfg: dict) -> str:
    return json.dumps(cfg, indent=2, sort_keys=True)
