# Tidy result tables, from which every figure is redrawn without retraining.


rule aggregate:
    input:
        finals=[f"{r}/final.json" for r in RUNS],
        metrics=[f"{r}/metrics.csv" for r in RUNS],
    output:
        summary=report(
            "results/summary.csv",
            caption="../report/summary.rst",
            category="Tables",
        ),
        curves="results/curves.csv",
    params:
        runs=RUNS,
    log:
        "results/logs/aggregate.log",
    localrule: True
    shell:
        "pcn aggregate --runs {params.runs:q} --out {output.summary:q}"
        " --curves-out {output.curves:q} > {log:q} 2>&1"


rule aggregate_traces:
    input:
        finals=[f"{r}/final.json" for r in PCN_RUNS],
        traces=[f"{r}/trace.csv" for r in PCN_RUNS],
    output:
        "results/traces.csv",
    params:
        runs=PCN_RUNS,
    log:
        "results/logs/aggregate_traces.log",
    localrule: True
    shell:
        "pcn aggregate --runs {params.runs:q} --traces-out {output:q} > {log:q} 2>&1"
