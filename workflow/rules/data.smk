# Prepare each dataset once: verify the local raw files (data_dir) or download
# them with torchvision into train.data_root.  Runs on the submitting machine
# (localrule), which on a cluster is the node with internet access.


rule data:
    output:
        "results/data/{dataset}.done",
    log:
        "results/logs/data/{dataset}.log",
    localrule: True
    conda:
        "../envs/pcn.yaml"
    params:
        code=code_param("pcn.study.data"),
        args=data_args,
    shell:
        "python -m pcn data --dataset {wildcards.dataset} {params.args} --out {output} > {log} 2>&1"
