# Shared definitions: the study grid, run folders, the code version of each job, the report
# and the helper functions of the rules.  The config itself is read and checked first, in
# config.smk (included before this file by the Snakefile).
#
# Everything here runs when the workflow is parsed, so a bad grid fails before any job
# starts, with one line naming the offending key.

import ast
import functools
import hashlib
import itertools
import os
import shlex
import sys
from pathlib import Path

import yaml

RUNS_ROOT = "results/runs"


# --------------------------------------------------------------------------- the grid
def _build_runs(cfg):
    """Expand the grid (and the extra grids) into {run folder: factors} and {run folder: run
    config}."""
    grids = [("grid", dict(cfg["grid"]))] + [
        (f"extra_grids[{i}]", dict(g))
        for i, g in enumerate(cfg.get("extra_grids") or [])
    ]
    base = dict(cfg.get("train") or {})
    if "data_dir" in base:
        raise config_error(
            "config key 'train.data_dir': set the data folder with the top-level "
            "key 'data_dir' (it may contain {dataset}), not under 'train'."
        )
    for name, grid in grids:
        for key, values in grid.items():
            if not isinstance(values, list) or not values:
                raise config_error(
                    f"config key '{name}.{key}': must be a non-empty list of values"
                )
            if key == "data_dir":
                raise config_error(
                    f"config key '{name}.data_dir': data_dir is not a factor; use the top-level 'data_dir'"
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
    points = [
        dict(zip(g, combo))
        for _, g in grids
        for combo in itertools.product(*g.values())
    ]
    for factors in points:
        if factors["model"] != "pcn" and "arch" in factors:
            factors["arch"] = "mlp"  # the feed-forward baselines have one architecture
        run_base = dict(base)
        for section, factor in BY_SECTIONS.items():
            if factor != "model" and factors["model"] != "pcn":
                continue  # ae and cre runs ignore rule, init and arch, so their overrides too
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

# Job resources of the train and probe rules (config.smk), checked after the grid.
RES = {name: _job_resources(name) for name in ("train", "probe")}


# --------------------------------------------------------------------------- packs
def _pack_size():
    """Runs per training job: config `pack` (auto = 64 where train jobs use CUDA, else 1)."""
    value = config["pack"]
    if value == "auto":
        return 64 if _uses_cuda() else 1
    return int(value)


def _build_packs():
    """{pack id: [run folder, ...]}: the grid's runs grouped by shape into packs of at most
    PACK_SIZE (pcn.study.packs.group); {} when PACK_SIZE is 1 (one train job per run).  A
    pack's id is a hash of its run folders, so it is the same on every parse."""
    if PACK_SIZE == 1:
        return {}
    from pcn.study.packs import group

    resolved = [pcn_config.resolve(RUN_CONFIGS[r], for_run=True) for r in RUNS]
    packs = {}
    for idx in group(resolved, PACK_SIZE):
        runs = [RUNS[i] for i in idx]
        packs[hashlib.sha256("\n".join(runs).encode()).hexdigest()[:12]] = runs
    return packs


PACK_SIZE = _pack_size()
PACKS = _build_packs()


def run_name(path):
    """The run's folder below RUNS_ROOT (the {run} wildcard of the per-run rules)."""
    return path[len(RUNS_ROOT) + 1 :]


def pack_arguments(runs):
    """The `pcn pack` options of a pack's runs: --run CONFIG OUT --ckpt-dir DIR per run."""
    return " ".join(
        f"--run {shlex.quote(f'results/configs/{run_name(r)}.yaml')} {shlex.quote(r)}"
        f" --ckpt-dir {shlex.quote(f'results/checkpoints/{run_name(r)}')}"
        for r in runs
    )


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
        "trace_factor": "--trace-factor",
        "gen_samples": "--gen-samples",
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
    `probe.clamp` ({factor: [values]}; {} = every pcn run; null = none). A run of an
    `extra_grids` grid that lacks one of those factors does not match."""
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
        and all(k in f and fmt_value(f[k]) in vals for k, vals in chosen.items())
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

#: Whether every pcn run gets robustness.csv, and the clamp jobs the dataset's judge (probe.robustness, probe.judge).
ROBUSTNESS = bool(config["probe"].get("robustness", True))
JUDGE = bool(config["probe"].get("judge", True))
ROBUSTNESS_RUNS = PCN_RUNS if ROBUSTNESS else []


def judge_file(dataset):
    """The judge classifier of `dataset` (rule judge)."""
    return f"results/judge/{dataset}.pt"


def clamp_judge(wildcards):
    """Input of a clamp job: its dataset's judge when probe.judge is on, else nothing."""
    return [judge_file(run_factors(wildcards)["dataset"])] if JUDGE else []


def clamp_judge_args(wildcards, input):
    """`--judge FILE` of a clamp job (empty without a judge)."""
    return f"--judge {shlex.quote(input.judge[0])}" if JUDGE else ""


def robustness_args(wildcards, output):
    """`--robustness FILE` of a probe job (empty when probe.robustness is false)."""
    return f"--robustness {shlex.quote(output.robustness)}" if ROBUSTNESS else ""


#: Long tables that aggregate writes as CSV and Parquet.
LONG_TABLES = [
    "curves",
    "traces",
    "sensitivity",
    "linear_probes",
    "alignment",
    "clamp",
    "robustness",
]


def figure_targets():
    names = ["tradeoff", "ce_weight", "curves", "probes", "images"]
    if PCN_RUNS:
        names += ["inference", "inference_gain", "sensitivity", "alignment"]
        names += ["dynamics"]
    if ROBUSTNESS_RUNS:
        names += ["robustness"]
    return [f"results/figures/{n}.{ext}" for n in names for ext in ("png", "pdf")]


def final_targets():
    tables = ["summary", "curves", "linear_probes"]
    if PCN_RUNS:
        tables += ["traces", "sensitivity", "alignment"]
    if CLAMP_RUNS:
        tables += ["clamp"]
    if ROBUSTNESS_RUNS:
        tables += ["robustness"]
    files = [f"results/{t}.csv" for t in tables]
    files += [f"results/{t}.parquet" for t in tables if t in LONG_TABLES]
    return files + ["results/images.npz"] + figure_targets()
