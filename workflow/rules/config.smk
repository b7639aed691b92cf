# The workflow config: read, typed and checked at parse time, plus the settings derived from it
# alone (data folders, job resources).  Included first by the Snakefile; common.smk builds the
# study grid, run folders and rule helpers on top of it.
#
# Everything here runs when the workflow is parsed, so a bad config fails before any job
# starts, with one line naming the offending key.

import copy
import functools
import math
import os
import shlex
import shutil
import sys
from pathlib import Path

import yaml
from snakemake.utils import validate

# The checkout this Snakefile belongs to.  Its `pcn` package is the one imported here and
# the one every job runs (`python -m pcn` with this folder first on PYTHONPATH), whatever
# `pcn` is pip-installed.
REPO = str(Path(workflow.basedir).resolve().parent)
if sys.path[:1] != [REPO]:
    sys.path.insert(0, REPO)

from pcn.study import config as pcn_config  # noqa: E402
from pcn.outputs.naming import fmt_value, run_dir  # noqa: E402

PYTHONPATH = os.pathsep.join([REPO, *filter(None, [os.environ.get("PYTHONPATH")])])
shell.prefix(f"set -euo pipefail; export PYTHONPATH={shlex.quote(PYTHONPATH)}; ")

# Sections of training overrides for the runs with one value of a factor, applied in this order.
BY_SECTIONS = {
    "train_by_model": "model",
    "train_by_rule": "rule",
    "train_by_init": "init",
    "train_by_arch": "arch",
}
SCHEMA = str(Path(workflow.basedir, "schemas", "config.schema.yaml"))


class StudyConfigError(WorkflowError):
    """A workflow config problem found at parse time (one line, naming the key)."""


def config_error(message):
    """Stop the workflow at parse time with `message` (and no traceback of this file)."""
    return StudyConfigError(message)


# --------------------------------------------------------------------------- reading values
def _train_prop(key):
    return pcn_config.schema()["properties"].get(key, {})


def _is_text_key(key):
    """True when the training key takes text only (enum of names, a path)."""
    prop = _train_prop(key)
    types = prop.get("type")
    types = [types] if isinstance(types, str) else (types or [])
    if "enum" in prop:
        return all(isinstance(v, str) for v in prop["enum"])
    return bool(types) and set(types) <= {"string", "null"}


def _typed(value, key=None):
    """A value as YAML would give it in a config file.

    `--config` hands nested values over as text, and PyYAML (YAML 1.1) reads `1e-3` as
    text too; both become numbers (lists, booleans, null) here, except for keys that take
    text only.
    """
    if isinstance(value, list):
        return [_typed(v, key) for v in value]
    if isinstance(value, str) and not (key and _is_text_key(key)):
        return pcn_config.parse_value(value)
    return value


def _typed_section(section, key, value=None):
    """Typed copy of config[key] (train: {key: value}; grid: {key: [values]}), or of ``value``."""
    value = config.get(key) if value is None else value
    if not isinstance(value, dict):
        return value
    out = {}
    for k, v in value.items():
        if section == "grid" and isinstance(v, str):
            v = _typed(v)  # a grid value given as text, "[0, 1]", is a list
        out[k] = _typed(v, k)
    return out


def _read_config():
    """Type, then validate the workflow config (config.schema.yaml, whose `train` refers to
    pcn/train_schema.yaml); fills the workflow-level defaults."""
    schema = yaml.safe_load(Path(SCHEMA).read_text())
    allowed = list(schema["properties"])
    unknown = [k for k in config if k not in allowed]
    if unknown:
        raise config_error(
            f"unknown config key(s) {', '.join(map(repr, unknown))}; "
            f"allowed top-level keys: {', '.join(allowed)}"
        )
    for key, prop in schema["properties"].items():  # --config key=true gives text
        if prop.get("type") == "boolean" and isinstance(config.get(key), str):
            config[key] = pcn_config.parse_value(config[key])
    for key in ("train", "grid"):
        if isinstance(config.get(key), dict):
            config[key] = _typed_section(key, key)
    if isinstance(config.get("extra_grids"), list):
        config["extra_grids"] = [
            _typed_section("grid", "extra_grids", g) for g in config["extra_grids"]
        ]
    if isinstance(config.get("pack"), str) and config["pack"].strip().isdecimal():
        config["pack"] = int(config["pack"])  # --config pack=8 gives text
    if isinstance(config.get("probe"), dict):
        config["probe"] = pcn_config.from_text(config["probe"])
    if isinstance(config.get("resources"), dict):
        config["resources"] = {
            k: pcn_config.from_text(v) if isinstance(v, (dict, str)) else v
            for k, v in config["resources"].items()
        }
    # Per-model / per-rule / per-init training keys, typed like `train`.
    for section in BY_SECTIONS:
        if isinstance(config.get(section), dict):
            config[section] = {
                m: (
                    {k: _typed(v, k) for k, v in keys.items()}
                    if isinstance(keys, dict)
                    else keys
                )
                for m, keys in config[section].items()
            }
    train = copy.deepcopy(config.get("train"))
    by = {section: copy.deepcopy(config.get(section)) for section in BY_SECTIONS}
    try:
        validate(config, SCHEMA)
    except WorkflowError as err:
        cause = err.__context__  # the jsonschema ValidationError
        if not hasattr(cause, "absolute_path"):
            cause = None
        raise config_error(
            _describe(cause) if cause is not None else str(err)
        ) from None
    # The training schema's defaults stay in pcn/train_schema.yaml: each run's config
    # file lists only the keys the workflow config sets (pcn train fills in the rest).
    config["train"] = train if train is not None else {}
    for section, value in by.items():
        config[section] = value if value is not None else {}


def _describe(err):
    """One line for a jsonschema error: the key, what is wrong, what is allowed."""
    key = ".".join(str(p) for p in err.absolute_path) or "<top level>"
    if err.validator == "additionalProperties":
        allowed = sorted(err.schema.get("properties", {}))
        extra = sorted(set(err.instance) - set(allowed))
        where = f" in '{key}'" if err.absolute_path else ""
        hint = f"; allowed: {', '.join(allowed)}" if allowed else ""
        return f"unknown config key(s){where}: {', '.join(map(repr, extra))}{hint}"
    message = err.message
    if len(message) > 200:
        message = message[:200] + " ..."
    return f"config key '{key}': {message}"


_read_config()


def _check_deployment():
    """`--sdm apptainer` alone would run jobs in the bare Miniforge image (no torch)."""
    from snakemake.settings.types import DeploymentMethod

    methods = getattr(workflow.deployment_settings, "deployment_method", None) or ()
    if DeploymentMethod.APPTAINER in methods and DeploymentMethod.CONDA not in methods:
        raise WorkflowError(
            "--sdm apptainer needs conda too: use --sdm conda apptainer (the workflow's "
            "container is a bare Miniforge image that the conda env fills)"
        )


_check_deployment()


# --------------------------------------------------------------------------- data folders
def _data_template():
    return config.get("data_dir") or os.environ.get("PCN_DATA_DIR")


@functools.lru_cache(maxsize=None)
def data_dir_for(dataset):
    """Local raw-data folder of `dataset`, or None (= let torchvision download).

    `data_dir` (else $PCN_DATA_DIR) may contain "{dataset}".  A folder that does
    not exist falls back to downloading, with a warning.
    """
    template = _data_template()
    if not template:
        return None
    folder = template.replace("{dataset}", dataset)
    if not os.path.isdir(folder):
        logger.warning(
            f"data_dir {folder!r} for dataset {dataset!r} does not exist; "
            "the data rule will download the dataset instead."
        )
        return None
    return folder


# --------------------------------------------------------------------------- job resources
@functools.lru_cache(maxsize=None)
def _cuda_here():
    """Whether torch sees a CUDA device on this machine (no torch import without the
    NVIDIA driver's nvidia-smi)."""
    if shutil.which("nvidia-smi") is None:
        return False
    import torch

    return torch.cuda.is_available()


def _uses_cuda():
    """Whether train and probe jobs will run on the one GPU (`device` cuda or mps, or auto
    with CUDA), so that they hold the `gpu` resource."""
    return config["device"] in ("cuda", "mps") or (
        config["device"] == "auto" and _cuda_here()
    )


def _minutes_or_mb(key, value):
    """A runtime (minutes, or "90m", "2h", "1d") in minutes; a memory size (MB, or "16GB")
    in MB; read as Snakemake reads the resources `runtime` and `mem`."""
    from humanfriendly import parse_size, parse_timespan

    if isinstance(value, bool):
        raise ValueError(value)
    if isinstance(value, int):
        return value
    text = str(value).strip()
    if text.isdecimal():
        return int(text)
    if key == "runtime":
        return max(round(parse_timespan(text) / 60), 1)
    return max(math.ceil(parse_size(text) / 1e6), 1)


def _job_resources(name):
    """resources.<name> with runtime and memory in minutes and MB, gpu resolved."""
    res = dict(config["resources"][name])
    for key in ("runtime", "mem_mb"):
        try:
            res[key] = _minutes_or_mb(key, res[key])
        except Exception:
            raise config_error(
                f"config key 'resources.{name}.{key}': {res[key]!r} is not "
                f"{'a time (minutes, or e.g. 90m, 2h, 1d)' if key == 'runtime' else 'a size (MB, or e.g. 16GB)'}"
            ) from None
        if res[key] < 1:
            raise config_error(f"config key 'resources.{name}.{key}': must be positive")
    if res["gpu"] is None:
        res["gpu"] = 1 if _uses_cuda() else 0
    return res
