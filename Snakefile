# pcn-pipeline: the study as one Snakemake DAG
#
#   data -> train (dataset x model x rule x CE weight x seed x ...) -> probe
#        -> aggregate -> figures -> report
#
#   snakemake --cores 8                                   # default study (config/config.yaml)
#   snakemake --cores 2 --configfile config/test.yaml     # tiny smoke study (~1 minute)
#   snakemake --profile slurm --configfile config/thesis.yaml   # full study on a SLURM GPU cluster
#   snakemake --report results/report.html                # HTML report with every figure
#
# See docs/workflow.md and config/README.md.

from snakemake.utils import min_version, validate

min_version("8.0")


configfile: "config/config.yaml"


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
