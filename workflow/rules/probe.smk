# Inference-dynamics probe of every trained pcn run (ae runs have no inference):
# per step and layer, energy, errors, update norms, accuracy, recon/gen MSE.


rule probe:
    input:
        final=f"{RUNS_ROOT}/{{run}}/final.json",
        model=f"{RUNS_ROOT}/{{run}}/model.pt",
    output:
        f"{RUNS_ROOT}/{{run}}/trace.csv",
    wildcard_constraints:
        run=r"dataset~[^/]+/model~pcn/.+",
    params:
        run=run_path,
        args=probe_args(),
        device=config["device"],
    log:
        "results/logs/probe/{run}.log",
    benchmark:
        "results/benchmarks/probe/{run}.tsv"
    threads: RES["probe"]["threads"]
    resources:
        mem_mb=lambda wildcards, attempt: RES["probe"]["mem_mb"] * attempt,
        runtime=lambda wildcards, attempt: RES["probe"]["runtime"] * attempt,
        gpu=RES["probe"]["gpu"],
    shell:
        "pcn probe --run {params.run:q} --out {output:q} {params.args}"
        " --device {params.device} --threads {threads} > {log:q} 2>&1"
