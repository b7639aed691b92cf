# One training run per grid point.  The run's settings (workflow `train` base
# overrides + its grid factors + data folder) go to a small YAML file; the
# `pcn` CLI fills every other key from pcn/train_schema.yaml and writes the
# fully resolved config to the run folder (config.json).  alignment.csv is the
# PC-vs-BP gradient cosine per layer, logged every epoch (empty for ae runs).


rule run_config:
    output:
        "results/configs/{run}.yaml",
    log:
        "results/logs/run_config/{run}.log",
    localrule: True
    params:
        cfg=run_config,
    run:
        write_run_config(params.cfg, output[0], log[0])


# With `pack` > 1 (or auto on a GPU) the runs of one shape train in one job instead:
# rules train_pack_<id> below, one per pack, each writing every output of its runs.
if not PACKS:

    rule train:
        input:
            cfg="results/configs/{run}.yaml",
            data=data_marker,
        output:
            final=f"{RUNS_ROOT}/{{run}}/final.json",
            metrics=f"{RUNS_ROOT}/{{run}}/metrics.csv",
            config=f"{RUNS_ROOT}/{{run}}/config.json",
            model=f"{RUNS_ROOT}/{{run}}/model.pt",
            alignment=f"{RUNS_ROOT}/{{run}}/alignment.csv",
        log:
            "results/logs/train/{run}.log",
        benchmark:
            "results/benchmarks/train/{run}.tsv"
        conda:
            "../envs/pcn.yaml"
        threads: RES["train"]["threads"]
        resources:
            mem_mb=lambda wildcards, attempt: RES["train"]["mem_mb"] * attempt,
            runtime=lambda wildcards, attempt: RES["train"]["runtime"] * attempt,
            gpu=RES["train"]["gpu"],
        params:
            code=code_param("pcn.study.train"),
            out=run_path,
            ckpt=lambda wildcards: f"results/checkpoints/{wildcards.run}",
            device=config["device"],
        shell:
            "python -m pcn train --config {input.cfg:q} --out {params.out:q} --ckpt-dir {params.ckpt:q}"
            " --device {params.device} --threads {threads} --restart-if-changed > {log:q} 2>&1"


for _pack, _runs in PACKS.items():

    rule:
        name:
            f"train_pack_{_pack}"
        input:
            cfgs=[f"results/configs/{run_name(r)}.yaml" for r in _runs],
            data=sorted({f"results/data/{FACTORS[r]['dataset']}.done" for r in _runs}),
        output:
            [
                f"{r}/{name}"
                for r in _runs
                for name in (
                    "final.json",
                    "metrics.csv",
                    "config.json",
                    "model.pt",
                    "alignment.csv",
                )
            ],
        log:
            f"results/logs/train_pack/{_pack}.log",
        benchmark:
            f"results/benchmarks/train_pack/{_pack}.tsv"
        conda:
            "../envs/pcn.yaml"
        threads: RES["train"]["threads"]
        resources:
            mem_mb=lambda wildcards, attempt: RES["train"]["mem_mb"] * attempt,
            runtime=lambda wildcards, attempt: RES["train"]["runtime"] * attempt,
            gpu=RES["train"]["gpu"],
        params:
            code=code_param("pcn.study.packs"),
            runs=pack_arguments(_runs),
            device=config["device"],
        shell:
            "python -m pcn pack {params.runs} --device {params.device} --threads {threads}"
            " --restart-if-changed > {log:q} 2>&1"
