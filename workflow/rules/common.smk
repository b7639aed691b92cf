# Shared definitions: the study grid, run folders and helper functions.
#
# Everything here runs when the workflow is parsed, so a bad config fails
# before any job starts, with a message naming the offending key.

import functools
import itertools
import os
import sys

# Make the `pcn` package importable even when it is not pip-installed.
if workflow.basedir not in sys.path:
    sys.path.insert(0, workflow.basedir)

from pcn import config as pcn_config  # noqa: E402
from pcn.naming import run_dir  # noqa: E402

RUNS_ROOT = "results/runs"


class StudyConfigError(WorkflowError):
    """A workflow config problem found at parse time."""


@functools.lru_cache(maxsize=None)
def data_dir_for(dataset):
    """Local raw-data folder of `dataset`, or None (= let torchvision download).

    `data_dir` (else $PCN_DATA_DIR) may contain "{dataset}".  A folder that does
    not exist falls back to downloading, with a warning.
    """
    template = config.get("data_dir") or os.environ.get("PCN_DATA_DIR")
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


def _typed(value):
    """`--config` on the command line gives nested values as text: read them as YAML."""
    if isinstance(value, str):
        return pcn_config.parse_value(value)
    if isinstance(value, list):
        return [_typed(v) for v in value]
    return value


def _build_runs(cfg):
    """Expand the grid into {run folder: factors} and {run folder: run config}."""
    grid = {k: _typed(v) for k, v in cfg["grid"].items()}
    base = {k: _typed(v) for k, v in (cfg.get("train") or {}).items()}
    if "data_dir" in base:
        raise StudyConfigError(
            "config key 'train.data_dir': set the data folder with the top-level "
            "key 'data_dir' (it may contain {dataset}), not under 'train'."
        )
    for key, values in grid.items():
        if not isinstance(values, list) or not values:
            raise StudyConfigError(f"config key 'grid.{key}': must be a non-empty list of values")
        if key == "data_dir":
            raise StudyConfigError("config key 'grid.data_dir': data_dir is not a factor; use the top-level 'data_dir'")
    try:
        pcn_config.resolve(base, {})
    except pcn_config.ConfigError as err:
        raise StudyConfigError(f"invalid 'train' section of the workflow config: {err}")

    factors_of, config_of = {}, {}
    for combo in itertools.product(*grid.values()):
        factors = dict(zip(grid, combo))
        try:
            resolved = pcn_config.resolve(base, factors)
        except pcn_config.ConfigError as err:
            raise StudyConfigError(f"invalid grid point {factors}: {err}")
        # `ae` runs ignore the learning rule; resolve() records it as bp.
        factors["rule"] = resolved["rule"]
        try:
            path = f"{RUNS_ROOT}/{run_dir(factors)}"
        except ValueError as err:
            raise StudyConfigError(f"invalid grid point {factors}: {err}")
        if path in factors_of:
            continue
        run_cfg = {**base, **factors, "data_dir": data_dir_for(resolved["dataset"])}
        factors_of[path] = factors
        config_of[path] = run_cfg
    return factors_of, config_of


FACTORS, RUN_CONFIGS = _build_runs(config)
RUNS = list(FACTORS)
PCN_RUNS = [r for r in RUNS if FACTORS[r]["model"] == "pcn"]
DATASETS = sorted({f["dataset"] for f in FACTORS.values()})
RES = config["resources"]
logger.info(f"pcn study: {len(RUNS)} training runs ({len(PCN_RUNS)} pcn runs to probe) on {', '.join(DATASETS)}")


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
    return pcn_config.resolve(config.get("train") or {}, {"dataset": dataset})["data_root"]


def data_args(wildcards):
    folder = data_dir_for(wildcards.dataset)
    args = [f"--data-root {data_root(wildcards.dataset)}"]
    if folder:
        args.insert(0, f"--data-dir {folder}")
    return " ".join(args)


def probe_args():
    """Options of `pcn probe` set in the workflow config (unset: the CLI's defaults)."""
    opts = {"--steps": config["probe"].get("steps"), "--n-test": config["probe"].get("n_test")}
    return " ".join(f"{k} {v}" for k, v in opts.items() if v is not None)


def figure_targets():
    names = ["tradeoff", "ce_weight", "curves"] + (["inference"] if PCN_RUNS else [])
    return [f"results/figures/{n}.{ext}" for n in names for ext in ("png", "pdf")]


def final_targets():
    tables = ["results/summary.csv", "results/curves.csv"] + (["results/traces.csv"] if PCN_RUNS else [])
    return tables + figure_targets()
