# Shared definitions: config checks, the study grid, run folders and helper functions.
#
# Everything here runs when the workflow is parsed, so a bad config fails before any job
# starts, with one line naming the offending key.

import ast
import copy
import functools
import hashlib
import itertools
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

RUNS_ROOT = "results/runs"
# Sections of training overrides for the runs with one value of a factor, applied in this order.
BY_SECTIONS = {
    "train_by_model": "model",
    "train_by_rule": "rule",
    "train_by_init": "init",
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


def _typed_section(section, key):
    """Typed copy of config[key] (train: {key: value}; grid: {key: [values]})."""
    value = config.get(key)
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


# --------------------------------------------------------------------------- the grid
def _build_runs(cfg):
    """Expand the grid into {run folder: factors} and {run folder: run config}."""
    grid = dict(cfg["grid"])
    base = dict(cfg.get("train") or {})
    if "data_dir" in base:
        raise config_error(
            "config key 'train.data_dir': set the data folder with the top-level "
            "key 'data_dir' (it may contain {dataset}), not under 'train'."
        )
    for key, values in grid.items():
        if not isinstance(values, list) or not values:
            raise config_error(
                f"config key 'grid.{key}': must be a non-empty list of values"
            )
        if key == "data_dir":
            raise config_error(
                "config key 'grid.data_dir': data_dir is not a factor; use the top-level 'data_dir'"
            )
    try:
        pcn_config.resolve(base, {})
    except pcn_config.ConfigError as err:
        raise config_error(f"invalid 'train' section of the workflow config: {err}")
    # Per-model, per-rule and per-init training overrides (e.g. the cre reference setting),
    # applied in that order between `train` and the grid point.
    by = {section: cfg.get(section) or {} for section in BY_SECTIONS}
    for section, overrides in by.items():
        factor = BY_SECTIONS[section]
        allowed = pcn_config.schema()["properties"][factor]["enum"]
        for value, keys in overrides.items():
            if value not in allowed or not isinstance(keys, dict):
                raise config_error(
                    f"config key '{section}.{value}': must be a {factor} ({', '.join(allowed)}) "
                    "mapped to training keys"
                )

    factors_of, config_of = {}, {}
    for combo in itertools.product(*grid.values()):
        factors = dict(zip(grid, combo))
        run_base = dict(base)
        for section, factor in BY_SECTIONS.items():
            if factor != "model" and factors["model"] != "pcn":
                continue  # ae and cre runs ignore rule and init, so their overrides too
            value = factors.get(factor, base.get(factor, pcn_config.defaults()[factor]))
            run_base.update(by[section].get(value, {}))
        if pcn_config.undefined_point({**pcn_config.defaults(), **run_base, **factors}):
            continue  # e.g. rule pc at w = 1 (pcn.study.config.undefined_point says why)
        try:
            resolved = pcn_config.resolve(run_base, factors, for_run=True)
        except pcn_config.ConfigError as err:
            raise config_error(f"invalid grid point {factors}: {err}")
        # `ae` runs ignore the learning rule and init; resolve() records one value of each.
        factors["rule"] = resolved["rule"]
        if "init" in factors:
            factors["init"] = resolved["init"]
        try:
            path = f"{RUNS_ROOT}/{run_dir(factors)}"
        except ValueError as err:
            raise config_error(f"invalid grid point {factors}: {err}")
        if path in factors_of:
            continue
        factors_of[path] = factors
        config_of[path] = {**run_base, **factors}
    datasets = sorted({f["dataset"] for f in factors_of.values()})
    template = _data_template()
    if template and "{dataset}" not in template and len(datasets) > 1:
        source = "data_dir" if config.get("data_dir") else "PCN_DATA_DIR"
        raise config_error(
            f"config key '{source}': {template!r} has no {{dataset}} but the grid has "
            f"{len(datasets)} datasets ({', '.join(datasets)}); write e.g. '.../{{dataset}}'"
        )
    for path, run_cfg in config_of.items():
        run_cfg["data_dir"] = data_dir_for(factors_of[path]["dataset"])
    return factors_of, config_of


FACTORS, RUN_CONFIGS = _build_runs(config)
RUNS = list(FACTORS)
PCN_RUNS = [r for r in RUNS if FACTORS[r]["model"] == "pcn"]
DATASETS = sorted({f["dataset"] for f in FACTORS.values()})


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


RES = {name: _job_resources(name) for name in ("train", "probe")}


# --------------------------------------------------------------------------- code version
def _module_file(name):
    """Source file of pcn module `name` in this checkout, or None."""
    base = Path(REPO, *name.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def _pcn_imports(path):
    """pcn modules that the file at `path` imports (anywhere in it, also inside functions)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "pcn"}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module.split(".")[0] != "pcn":
                continue
            found.add(node.module)
            found |= {
                f"{node.module}.{a.name}"
                for a in node.names
                if _module_file(f"{node.module}.{a.name}")
            }
    # a module's parent packages run too
    for name in list(found):
        parts = name.split(".")
        found |= {".".join(parts[:i]) for i in range(1, len(parts))}
    return found


@functools.lru_cache(maxsize=None)
def code_version(module):
    """Hash of the pcn code a job runs: `module`, every pcn module it imports (transitively),
    pcn/cli.py, pcn/__main__.py and pcn/train_schema.yaml."""
    todo, seen = [module, "pcn.cli", "pcn.__main__"], set()
    files = {Path(REPO, "pcn", "train_schema.yaml")}
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        path = _module_file(name)
        if path is None:
            continue
        files.add(path)
        if name not in ("pcn.cli", "pcn.__main__"):  # the CLI imports every subcommand
            todo.extend(sorted(_pcn_imports(path)))
    digest = hashlib.sha256()
    for path in sorted(files):
        digest.update(str(path.relative_to(REPO)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def code_param(module):
    """The `code` param of the rules running `module`, i.e. its code hash when
    `rerun_on_code_change` is on (so editing that code re-runs the job), else "off"."""
    return code_version(module) if config["rerun_on_code_change"] else "off"


# --------------------------------------------------------------------------- report
REPORT = "results/report.html"


def build_report(log):
    """After a successful run (onsuccess; not in a dry run) that leaves every output of the
    study in place: results/report.html, with every figure and table and their captions, from
    a second `snakemake --report` on the same config.  A failure is a warning: the results
    themselves are done."""
    import subprocess
    import tempfile

    missing = [f for f in final_targets() if not os.path.exists(f)]
    if missing:  # a run of some targets only: the study is not complete
        logger.info(
            f"{REPORT} not built: {len(missing)} outputs of the study are missing"
        )
        return
    with tempfile.NamedTemporaryFile(
        "w", prefix="pcn-config-", suffix=".yaml", delete=False
    ) as fh:
        yaml.safe_dump(dict(config), fh, sort_keys=False)
    cmd = [
        sys.executable,
        "-m",
        "snakemake",
        "--report",
        REPORT,
        "--snakefile",
        str(workflow.main_snakefile),
        "--configfile",
        fh.name,
        "--replace-workflow-config",
        "--workflow-profile",
        "none",
    ]
    logger.info(f"Building {REPORT} ...")
    try:
        proc = subprocess.run(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
    finally:
        os.unlink(fh.name)
    if proc.returncode == 0 and os.path.exists(REPORT):
        logger.info(f"Report: {REPORT}")
    else:
        tail = proc.stdout[-2000:]
        logger.warning(
            f"could not build {REPORT} (run `snakemake --report {REPORT}` to retry):\n{tail}"
        )


# --------------------------------------------------------------------------- rule helpers
def run_path(wildcards):
    return f"{RUNS_ROOT}/{wildcards.run}"


def run_factors(wildcards):
    return FACTORS[run_path(wildcards)]


def run_config(wildcards):
    return RUN_CONFIGS[run_path(wildcards)]


def write_run_config(cfg, path, log_path):
    """Write one run's settings (the `pcn train --config` file)."""
    import yaml

    with open(path, "w") as fh:
        yaml.safe_dump(dict(cfg), fh, sort_keys=True)
    with open(log_path, "w") as fh:
        print(f"wrote {path}", file=fh)


def data_marker(wildcards):
    return f"results/data/{run_factors(wildcards)['dataset']}.done"


def data_root(dataset):
    """Download folder of `dataset` (train.data_root, default from the training schema)."""
    return pcn_config.resolve(config.get("train") or {}, {"dataset": dataset})[
        "data_root"
    ]


def data_args(wildcards):
    folder = data_dir_for(wildcards.dataset)
    args = [f"--data-root {shlex.quote(data_root(wildcards.dataset))}"]
    if folder:
        args.insert(0, f"--data-dir {shlex.quote(folder)}")
    return " ".join(args)


def probe_args(*keys):
    """Options of `pcn probe` for the workflow config's `probe` keys `keys` (unset: the CLI's defaults)."""
    flags = {
        "steps": "--steps",
        "n_test": "--n-test",
        "n_train": "--n-train",
        "eta_factors": "--eta-factors",
        "n_images": "--n-images",
    }
    args = []
    for key in keys:
        value = config["probe"].get(key)
        if value is None:
            continue
        if isinstance(value, list):
            value = ",".join(str(v) for v in value)
        args.append(f"{flags[key]} {value}")
    return " ".join(args)


def _clamp_runs(cfg, factors_of):
    """pcn runs that get the clamping modes: those whose factors match every list of
    `probe.clamp` ({factor: [values]}; {} = every pcn run; null = none)."""
    wanted = (cfg.get("probe") or {}).get("clamp")
    if wanted is None:
        return []
    grid = cfg["grid"]
    chosen = {}
    for key, values in wanted.items():
        if key not in grid:
            raise config_error(
                f"config key 'probe.clamp.{key}': not a factor of the grid ({', '.join(grid)})"
            )
        values = _typed(values, key)
        values = values if isinstance(values, list) else [values]
        try:
            chosen[key] = {fmt_value(v) for v in values}
        except ValueError as err:
            raise config_error(f"config key 'probe.clamp.{key}': {err}")
    runs = [
        r
        for r, f in factors_of.items()
        if f["model"] == "pcn"
        and all(fmt_value(f[k]) in vals for k, vals in chosen.items())
    ]
    if not runs:
        logger.warning(f"probe.clamp {wanted} matches no pcn run: no clamping outputs.")
    return runs


CLAMP_RUNS = _clamp_runs(config, FACTORS)
AE_RUNS = [r for r in RUNS if FACTORS[r]["model"] == "ae"]
CLAMP_FILES = [
    "clamp.csv",
    "clamp_images.npz",
    "generated.npy",
    "generated.png",
    "completion.png",
]
logger.info(
    f"pcn study: {len(RUNS)} training runs ({len(PCN_RUNS)} pcn runs to probe, "
    f"{len(CLAMP_RUNS)} of them clamped) on {', '.join(DATASETS)}"
)

#: Long tables that aggregate writes as CSV and Parquet.
LONG_TABLES = ["curves", "traces", "sensitivity", "linear_probes", "alignment", "clamp"]


def figure_targets():
    names = ["tradeoff", "ce_weight", "curves", "probes", "images"]
    if PCN_RUNS:
        names += ["inference", "inference_gain", "sensitivity", "alignment"]
    return [f"results/figures/{n}.{ext}" for n in names for ext in ("png", "pdf")]


def final_targets():
    tables = ["summary", "curves", "linear_probes"]
    if PCN_RUNS:
        tables += ["traces", "sensitivity", "alignment"]
    if CLAMP_RUNS:
        tables += ["clamp"]
    files = [f"results/{t}.csv" for t in tables]
    files += [f"results/{t}.parquet" for t in tables if t in LONG_TABLES]
    return files + ["results/images.npz"] + figure_targets()
