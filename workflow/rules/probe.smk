# Probing of every trained run (docs/probing.md); sizes from the config's `probe` section.
#
#   probe     every pcn run: inference trace (per step and layer), test-time T x eta
#             sensitivity, per-layer linear probes, and a few test digits with their
#             reconstruction and top-down generation (images.npz)
#             and (probe.robustness) inference from noisy / occluded images (robustness.csv)
#   probe_ae  every ae and cre run: linear probes of its encoder layers and its reconstructions
#             (an ae has no inference, hence no trace or sensitivity)
#   judge     once per dataset (probe.judge): an MLP classifier trained on real images that
#             scores the clamp jobs' label -> image generations
#   clamp     the pcn runs chosen by `probe.clamp`: classify, label -> image generation and
#             occluded-image completion (clamp/)


rule probe:
    input:
        final=f"{RUNS_ROOT}/{{run}}/final.json",
        model=f"{RUNS_ROOT}/{{run}}/model.pt",
    output:
        **({"robustness": f"{RUNS_ROOT}/{{run}}/robustness.csv"} if ROBUSTNESS else {}),
        trace=f"{RUNS_ROOT}/{{run}}/trace.csv",
        sensitivity=f"{RUNS_ROOT}/{{run}}/sensitivity.csv",
        linear_probes=f"{RUNS_ROOT}/{{run}}/linear_probes.csv",
        images=f"{RUNS_ROOT}/{{run}}/images.npz",
    log:
        "results/logs/probe/{run}.log",
    benchmark:
        "results/benchmarks/probe/{run}.tsv"
    wildcard_constraints:
        run=r"dataset~[^/]+/model~pcn/.+",
    conda:
        "../envs/pcn.yaml"
    threads: RES["probe"]["threads"]
    resources:
        mem_mb=lambda wildcards, attempt: RES["probe"]["mem_mb"] * attempt,
        runtime=lambda wildcards, attempt: RES["probe"]["runtime"] * attempt,
        gpu=RES["probe"]["gpu"],
    params:
        code=code_param("pcn.study.probe"),
        run=run_path,
        args=probe_args(
            "steps", "n_test", "n_train", "eta_factors", "n_images", "trace_factor"
        ),
        robustness=robustness_args,
        device=config["device"],
    shell:
        "python -m pcn probe --run {params.run:q} --out {output.trace:q} --sensitivity {output.sensitivity:q}"
        " --linear-probes {output.linear_probes:q} --images {output.images:q} {params.robustness}"
        " {params.args}"
        " --device {params.device} --threads {threads} > {log:q} 2>&1"


rule probe_ae:
    input:
        final=f"{RUNS_ROOT}/{{run}}/final.json",
        model=f"{RUNS_ROOT}/{{run}}/model.pt",
    output:
        linear_probes=f"{RUNS_ROOT}/{{run}}/linear_probes.csv",
        images=f"{RUNS_ROOT}/{{run}}/images.npz",
    log:
        "results/logs/probe_ae/{run}.log",
    benchmark:
        "results/benchmarks/probe_ae/{run}.tsv"
    wildcard_constraints:
        run=r"dataset~[^/]+/model~(ae|cre)/.+",
    conda:
        "../envs/pcn.yaml"
    threads: RES["probe"]["threads"]
    resources:
        mem_mb=lambda wildcards, attempt: RES["probe"]["mem_mb"] * attempt,
        runtime=lambda wildcards, attempt: RES["probe"]["runtime"] * attempt,
        gpu=RES["probe"]["gpu"],
    params:
        code=code_param("pcn.study.probe"),
        run=run_path,
        args=probe_args("n_test", "n_train", "n_images"),
        device=config["device"],
    shell:
        "python -m pcn probe --run {params.run:q} --linear-probes {output.linear_probes:q} --images {output.images:q}"
        " {params.args} --device {params.device} --threads {threads} > {log:q} 2>&1"


rule judge:
    input:
        data="results/data/{dataset}.done",
    output:
        weights="results/judge/{dataset}.pt",
        info="results/judge/{dataset}.json",
    log:
        "results/logs/judge/{dataset}.log",
    benchmark:
        "results/benchmarks/judge/{dataset}.tsv"
    conda:
        "../envs/pcn.yaml"
    threads: RES["probe"]["threads"]
    resources:
        mem_mb=lambda wildcards, attempt: RES["probe"]["mem_mb"] * attempt,
        runtime=lambda wildcards, attempt: RES["probe"]["runtime"] * attempt,
    params:
        code=code_param("pcn.study.judge"),
        args=data_args,
    shell:
        "python -m pcn judge --dataset {wildcards.dataset} {params.args} --out {output.weights:q}"
        " --threads {threads} > {log:q} 2>&1"


rule clamp:
    input:
        final=f"{RUNS_ROOT}/{{run}}/final.json",
        model=f"{RUNS_ROOT}/{{run}}/model.pt",
        judge=clamp_judge,
    output:
        [f"{RUNS_ROOT}/{{run}}/clamp/{name}" for name in CLAMP_FILES],
    log:
        "results/logs/clamp/{run}.log",
    benchmark:
        "results/benchmarks/clamp/{run}.tsv"
    wildcard_constraints:
        run=r"dataset~[^/]+/model~pcn/.+",
    conda:
        "../envs/pcn.yaml"
    threads: RES["probe"]["threads"]
    resources:
        mem_mb=lambda wildcards, attempt: RES["probe"]["mem_mb"] * attempt,
        runtime=lambda wildcards, attempt: RES["probe"]["runtime"] * attempt,
        gpu=RES["probe"]["gpu"],
    params:
        code=code_param("pcn.study.probe"),
        run=run_path,
        out=lambda wildcards: f"{RUNS_ROOT}/{wildcards.run}/clamp",
        args=probe_args("steps", "n_test", "n_train", "gen_samples"),
        judge=clamp_judge_args,
        device=config["device"],
    shell:
        "python -m pcn probe --run {params.run:q} --clamp {params.out:q} {params.judge} {params.args}"
        " --device {params.device} --threads {threads} > {log:q} 2>&1"
