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

from pcn.study import config as pcn_config  # noqa: E402
from pcn.outputs.naming import fmt_value, run_dir  # noqa: E402

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
        if pcn_config.undefined_point({**pcn_config.defaults(), **base, **factors}):
            continue  # e.g. rule pc at w = 1 (pcn.study.config.undefined_point says why)
        try:
            resolved = pcn_config.resolve(base, factors, for_run=True)
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


def probe_args(*keys):
    """Options of `pcn probe` for the workflow config's `probe` keys `keys` (unset: the CLI's defaults)."""
    flags = {"steps": "--steps", "n_test": "--n-test", "n_train": "--n-train",
             "eta_factors": "--eta-factors", "n_images": "--n-images"}
    args = []
    for key in keys:
        value = _typed(config["probe"].get(key))
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
            raise StudyConfigError(
                f"config key 'probe.clamp.{key}': not a factor of the grid ({', '.join(grid)})"
            )
        values = _typed(values)
        values = values if isinstance(values, list) else [values]
        try:
            chosen[key] = {fmt_value(v) for v in values}
        except ValueError as err:
            raise StudyConfigError(f"config key 'probe.clamp.{key}': {err}")
    runs = [
        r
        for r, f in factors_of.items()
        if f["model"] == "pcn" and all(fmt_value(f[k]) in vals for k, vals in chosen.items())
    ]
    if not runs:
        logger.warning(f"probe.clamp {wanted} matches no pcn run: no clamping outputs.")
    return runs


CLAMP_RUNS = _clamp_runs(config, FACTORS)
AE_RUNS = [r for r in RUNS if FACTORS[r]["model"] == "ae"]
CLAMP_FILES = ["clamp.csv", "clamp_images.npz", "generated.npy", "generated.png", "completion.png"]
logger.info(
    f"pcn study: {len(RUNS)} training runs ({len(PCN_RUNS)} pcn runs to probe, "
    f"{len(CLAMP_RUNS)} of them clamped) on {', '.join(DATASETS)}"
)


def figure_targets():
    names = ["tradeoff", "ce_weight", "curves", "probes", "images"]
    if PCN_RUNS:
        names += ["inference", "sensitivity", "alignment"]
    return [f"results/figures/{n}.{ext}" for n in names for ext in ("png", "pdf")]


def final_targets():
    tables = ["results/summary.csv", "results/curves.csv", "results/linear_probes.csv", "results/images.npz"]
    if PCN_RUNS:
        tables += ["results/traces.csv", "results/sensitivity.csv", "results/alignment.csv"]
    if CLAMP_RUNS:
        tables += ["results/clamp.csv"]
    return tables + figure_targets()
