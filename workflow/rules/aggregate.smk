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


rule aggregate_sensitivity:
    input:
        finals=[f"{r}/final.json" for r in PCN_RUNS],
        tables=[f"{r}/sensitivity.csv" for r in PCN_RUNS],
    output:
        "results/sensitivity.csv",
    params:
        runs=PCN_RUNS,
    log:
        "results/logs/aggregate_sensitivity.log",
    localrule: True
    shell:
        "pcn aggregate --runs {params.runs:q} --sensitivity-out {output:q} > {log:q} 2>&1"


rule aggregate_linear_probes:
    input:
        finals=[f"{r}/final.json" for r in RUNS],
        tables=[f"{r}/linear_probes.csv" for r in RUNS],
    output:
        "results/linear_probes.csv",
    params:
        runs=RUNS,
    log:
        "results/logs/aggregate_linear_probes.log",
    localrule: True
    shell:
        "pcn aggregate --runs {params.runs:q} --linear-probes-out {output:q} > {log:q} 2>&1"


rule aggregate_alignment:
    input:
        finals=[f"{r}/final.json" for r in PCN_RUNS],
        tables=[f"{r}/alignment.csv" for r in PCN_RUNS],
    output:
        "results/alignment.csv",
    params:
        runs=PCN_RUNS,
    log:
        "results/logs/aggregate_alignment.log",
    localrule: True
    shell:
        "pcn aggregate --runs {params.runs:q} --alignment-out {output:q} > {log:q} 2>&1"


rule aggregate_clamp:
    input:
        finals=[f"{r}/final.json" for r in CLAMP_RUNS],
        tables=[f"{r}/clamp/clamp.csv" for r in CLAMP_RUNS],
    output:
        "results/clamp.csv",
    params:
        runs=CLAMP_RUNS,
    log:
        "results/logs/aggregate_clamp.log",
    localrule: True
    shell:
        "pcn aggregate --runs {params.runs:q} --clamp-out {output:q} > {log:q} 2>&1"


rule aggregate_images:
    input:
        finals=[f"{r}/final.json" for r in RUNS],
        images=[f"{r}/images.npz" for r in RUNS],
        clamp=[f"{r}/clamp/{f}" for r in CLAMP_RUNS for f in ("generated.npy", "clamp_images.npz")],
    output:
        "results/images.npz",
    params:
        runs=RUNS,
        clamp_runs=CLAMP_RUNS,
    log:
        "results/logs/aggregate_images.log",
    localrule: True
    shell:
        "pcn aggregate --runs {params.runs:q} --clamp-runs {params.clamp_runs:q}"
        " --images-out {output:q} > {log:q} 2>&1"
