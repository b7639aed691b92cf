# pcn-pipeline: the study as one Snakemake DAG
#
#   data -> train (dataset x model x rule x CE weight x seed x ...) -> probe / probe_ae / clamp
#        -> aggregate -> figures -> report
#
#   snakemake --cores 8                                   # default study (config/config.yaml)
#   snakemake --cores 2 --configfile config/test.yaml     # tiny smoke study (a few minutes)
#   snakemake --profile slurm --configfile config/thesis.yaml   # full study on a SLURM GPU cluster
#   snakemake --report results/report.html                # HTML report with every figure
#
# See docs/workflow.md and config/README.md.

import sys

from snakemake.utils import min_version, validate

min_version("8.0")


configfile: "config/config.yaml"


# `--config` gives nested values as text. The probe section holds only numbers, lists and
# mappings: read them as YAML before validating, so `--config 'probe={"n_test": 100,
# "clamp": null}'` works as in a config file.
if workflow.basedir not in sys.path:
    sys.path.insert(0, workflow.basedir)
from pcn.study.config import from_text  # noqa: E402

if isinstance(config.get("probe"), dict):
    config["probe"] = from_text(config["probe"])

# Workflow-level defaults live in the schema; training defaults live only in
# pcn/train_schema.yaml (every grid point is checked against it in common.smk).
validate(config, "workflow/schemas/config.schema.yaml")


report: "workflow/report/workflow.rst"


wildcard_constraints:
    dataset=r"[A-Za-z0-9_]+",
    run=r"dataset~[^/]+(/[A-Za-z][A-Za-z0-9_]*~[^/]+)+",


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/probe.smk"
include: "workflow/rules/aggregate.smk"
include: "workflow/rules/figures.smk"


rule all:
    input:
        final_targets(),
    default_target: True
