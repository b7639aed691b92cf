# Tidy result tables, from which every figure is redrawn without retraining.  The summary
# is CSV; the long tables (one row per run x epoch / step / layer / metric) are written as
# CSV and as Parquet (typed columns, lists kept as lists; docs/results-tables.md).


rule aggregate:
    input:
        finals=[f"{r}/final.json" for r in RUNS],
        metrics=[f"{r}/metrics.csv" for r in RUNS],
        # the summary's step-0 / T / 10 T / 100 T columns come from the probe traces, its
        # robust_gain_* columns from robustness.csv, its gen_* / completion_* from the clamp
        traces=[f"{r}/trace.csv" for r in PCN_RUNS],
        robustness=[f"{r}/robustness.csv" for r in ROBUSTNESS_RUNS],
        clamp=[f"{r}/clamp/clamp.csv" for r in CLAMP_RUNS],
    output:
        summary=report(
            "results/summary.csv",
            caption="../report/summary.rst",
            category="Tables",
        ),
        curves="results/curves.csv",
        curves_parquet="results/curves.parquet",
    log:
        "results/logs/aggregate.log",
    localrule: True
    conda:
        "../envs/pcn.yaml"
    params:
        code=code_param("pcn.outputs.aggregate"),
        runs=RUNS,
    shell:
        "python -m pcn aggregate --runs {params.runs:q} --out {output.summary:q}"
        " --curves-out {output.curves:q} --parquet > {log:q} 2>&1"


rule aggregate_traces:
    input:
        finals=[f"{r}/final.json" for r in PCN_RUNS],
        traces=[f"{r}/trace.csv" for r in PCN_RUNS],
    output:
        csv="results/traces.csv",
        parquet="results/traces.parquet",
    log:
        "results/logs/aggregate_traces.log",
    localrule: True
    conda:
        "../envs/pcn.yaml"
    params:
        code=code_param("pcn.outputs.aggregate"),
        runs=PCN_RUNS,
    shell:
        "python -m pcn aggregate --runs {params.runs:q} --traces-out {output.csv:q} --parquet"
        " > {log:q} 2>&1"


rule aggregate_sensitivity:
    input:
        finals=[f"{r}/final.json" for r in PCN_RUNS],
        tables=[f"{r}/sensitivity.csv" for r in PCN_RUNS],
    output:
        csv="results/sensitivity.csv",
        parquet="results/sensitivity.parquet",
    log:
        "results/logs/aggregate_sensitivity.log",
    localrule: True
    conda:
        "../envs/pcn.yaml"
    params:
        code=code_param("pcn.outputs.aggregate"),
        runs=PCN_RUNS,
    shell:
        "python -m pcn aggregate --runs {params.runs:q} --sensitivity-out {output.csv:q} --parquet"
        " > {log:q} 2>&1"


rule aggregate_linear_probes:
    input:
        finals=[f"{r}/final.json" for r in RUNS],
        tables=[f"{r}/linear_probes.csv" for r in RUNS],
    output:
        csv="results/linear_probes.csv",
        parquet="results/linear_probes.parquet",
    log:
        "results/logs/aggregate_linear_probes.log",
    localrule: True
    conda:
        "../envs/pcn.yaml"
    params:
        code=code_param("pcn.outputs.aggregate"),
        runs=RUNS,
    shell:
        "python -m pcn aggregate --runs {params.runs:q} --linear-probes-out {output.csv:q} --parquet"
        " > {log:q} 2>&1"


rule aggregate_alignment:
    input:
        finals=[f"{r}/final.json" for r in PCN_RUNS],
        tables=[f"{r}/alignment.csv" for r in PCN_RUNS],
    output:
        csv="results/alignment.csv",
        parquet="results/alignment.parquet",
    log:
        "results/logs/aggregate_alignment.log",
    localrule: True
    conda:
        "../envs/pcn.yaml"
    params:
        code=code_param("pcn.outputs.aggregate"),
        runs=PCN_RUNS,
    shell:
        "python -m pcn aggregate --runs {params.runs:q} --alignment-out {output.csv:q} --parquet"
        " > {log:q} 2>&1"


rule aggregate_clamp:
    input:
        finals=[f"{r}/final.json" for r in CLAMP_RUNS],
        tables=[f"{r}/clamp/clamp.csv" for r in CLAMP_RUNS],
    output:
        csv="results/clamp.csv",
        parquet="results/clamp.parquet",
    log:
        "results/logs/aggregate_clamp.log",
    localrule: True
    conda:
        "../envs/pcn.yaml"
    params:
        code=code_param("pcn.outputs.aggregate"),
        runs=CLAMP_RUNS,
    shell:
        "python -m pcn aggregate --runs {params.runs:q} --clamp-out {output.csv:q} --parquet"
        " > {log:q} 2>&1"


rule aggregate_robustness:
    input:
        finals=[f"{r}/final.json" for r in ROBUSTNESS_RUNS],
        tables=[f"{r}/robustness.csv" for r in ROBUSTNESS_RUNS],
    output:
        csv="results/robustness.csv",
        parquet="results/robustness.parquet",
    log:
        "results/logs/aggregate_robustness.log",
    localrule: True
    conda:
        "../envs/pcn.yaml"
    params:
        code=code_param("pcn.outputs.aggregate"),
        runs=ROBUSTNESS_RUNS,
    shell:
        "python -m pcn aggregate --runs {params.runs:q} --robustness-out {output.csv:q} --parquet"
        " > {log:q} 2>&1"


rule aggregate_images:
    input:
        finals=[f"{r}/final.json" for r in RUNS],
        images=[f"{r}/images.npz" for r in RUNS],
        clamp=[
            f"{r}/clamp/{f}"
            for r in CLAMP_RUNS
            for f in ("generated.npy", "clamp_images.npz")
        ],
    output:
        "results/images.npz",
    log:
        "results/logs/aggregate_images.log",
    localrule: True
    conda:
        "../envs/pcn.yaml"
    params:
        code=code_param("pcn.outputs.aggregate"),
        runs=RUNS,
        clamp_runs=CLAMP_RUNS,
    shell:
        "python -m pcn aggregate --runs {params.runs:q} --clamp-runs {params.clamp_runs:q}"
        " --images-out {output:q} > {log:q} 2>&1"
