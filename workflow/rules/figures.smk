# One rule per figure; each writes PNG (shown in the report) and PDF.


rule figure_tradeoff:
    input:
        summary="results/summary.csv",
    output:
        png=report(
            "results/figures/tradeoff.png",
            caption="../report/tradeoff.rst",
            category="Figures",
            subcategory="Trade-off",
        ),
        pdf="results/figures/tradeoff.pdf",
    log:
        "results/logs/figures/tradeoff.log",
    localrule: True
    conda:
        "../envs/pcn.yaml"
    params:
        code=code_param("pcn.outputs.figures"),
    shell:
        "python -m pcn figure tradeoff --summary {input.summary:q} --out {output.png:q} > {log:q} 2>&1"


rule figure_ce_weight:
    input:
        summary="results/summary.csv",
    output:
        png=report(
            "results/figures/ce_weight.png",
            caption="../report/ce_weight.rst",
            category="Figures",
            subcategory="Trade-off",
        ),
        pdf="results/figures/ce_weight.pdf",
    log:
        "results/logs/figures/ce_weight.log",
    localrule: True
    conda:
        "../envs/pcn.yaml"
    params:
        code=code_param("pcn.outputs.figures"),
    shell:
        "python -m pcn figure ce_weight --summary {input.summary:q} --out {output.png:q} > {log:q} 2>&1"


rule figure_inference_gain:
    input:
        summary="results/summary.csv",
    output:
        png=report(
            "results/figures/inference_gain.png",
            caption="../report/inference_gain.rst",
            category="Figures",
            subcategory="Inference dynamics",
        ),
        pdf="results/figures/inference_gain.pdf",
    log:
        "results/logs/figures/inference_gain.log",
    localrule: True
    conda:
        "../envs/pcn.yaml"
    params:
        code=code_param("pcn.outputs.figures"),
    shell:
        "python -m pcn figure inference_gain --summary {input.summary:q} --out {output.png:q} > {log:q} 2>&1"


rule figure_inference:
    input:
        summary="results/summary.csv",
        traces="results/traces.csv",
    output:
        png=report(
            "results/figures/inference.png",
            caption="../report/inference.rst",
            category="Figures",
            subcategory="Inference dynamics",
        ),
        pdf="results/figures/inference.pdf",
    log:
        "results/logs/figures/inference.log",
    localrule: True
    conda:
        "../envs/pcn.yaml"
    params:
        code=code_param("pcn.outputs.figures"),
    shell:
        "python -m pcn figure inference --summary {input.summary:q} --traces {input.traces:q}"
        " --out {output.png:q} > {log:q} 2>&1"


rule figure_curves:
    input:
        summary="results/summary.csv",
        curves="results/curves.csv",
    output:
        png=report(
            "results/figures/curves.png",
            caption="../report/curves.rst",
            category="Figures",
            subcategory="Training",
        ),
        pdf="results/figures/curves.pdf",
    log:
        "results/logs/figures/curves.log",
    localrule: True
    conda:
        "../envs/pcn.yaml"
    params:
        code=code_param("pcn.outputs.figures"),
    shell:
        "python -m pcn figure curves --summary {input.summary:q} --curves {input.curves:q}"
        " --out {output.png:q} > {log:q} 2>&1"


rule figure_sensitivity:
    input:
        summary="results/summary.csv",
        sensitivity="results/sensitivity.csv",
    output:
        png=report(
            "results/figures/sensitivity.png",
            caption="../report/sensitivity.rst",
            category="Figures",
            subcategory="Inference dynamics",
        ),
        pdf="results/figures/sensitivity.pdf",
    log:
        "results/logs/figures/sensitivity.log",
    localrule: True
    conda:
        "../envs/pcn.yaml"
    params:
        code=code_param("pcn.outputs.figures"),
    shell:
        "python -m pcn figure sensitivity --summary {input.summary:q} --sensitivity {input.sensitivity:q}"
        " --out {output.png:q} > {log:q} 2>&1"


rule figure_probes:
    input:
        summary="results/summary.csv",
        linear_probes="results/linear_probes.csv",
    output:
        png=report(
            "results/figures/probes.png",
            caption="../report/probes.rst",
            category="Figures",
            subcategory="Representations",
        ),
        pdf="results/figures/probes.pdf",
    log:
        "results/logs/figures/probes.log",
    localrule: True
    conda:
        "../envs/pcn.yaml"
    params:
        code=code_param("pcn.outputs.figures"),
    shell:
        "python -m pcn figure probes --summary {input.summary:q} --linear-probes {input.linear_probes:q}"
        " --out {output.png:q} > {log:q} 2>&1"


rule figure_images:
    input:
        summary="results/summary.csv",
        images="results/images.npz",
        clamp=["results/clamp.csv"] if CLAMP_RUNS else [],
    output:
        png=report(
            "results/figures/images.png",
            caption="../report/images.rst",
            category="Figures",
            subcategory="Representations",
        ),
        pdf="results/figures/images.pdf",
    log:
        "results/logs/figures/images.log",
    localrule: True
    conda:
        "../envs/pcn.yaml"
    params:
        code=code_param("pcn.outputs.figures"),
        clamp="--clamp results/clamp.csv" if CLAMP_RUNS else "",
    shell:
        "python -m pcn figure images --summary {input.summary:q} --images {input.images:q} {params.clamp}"
        " --out {output.png:q} > {log:q} 2>&1"


rule figure_alignment:
    input:
        summary="results/summary.csv",
        alignment="results/alignment.csv",
    output:
        png=report(
            "results/figures/alignment.png",
            caption="../report/alignment.rst",
            category="Figures",
            subcategory="Training",
        ),
        pdf="results/figures/alignment.pdf",
    log:
        "results/logs/figures/alignment.log",
    localrule: True
    conda:
        "../envs/pcn.yaml"
    params:
        code=code_param("pcn.outputs.figures"),
    shell:
        "python -m pcn figure alignment --summary {input.summary:q} --alignment {input.alignment:q}"
        " --out {output.png:q} > {log:q} 2>&1"


rule figure_dynamics:
    input:
        summary="results/summary.csv",
        traces="results/traces.csv",
    output:
        png=report(
            "results/figures/dynamics.png",
            caption="../report/dynamics.rst",
            category="Figures",
            subcategory="Inference dynamics",
        ),
        pdf="results/figures/dynamics.pdf",
    log:
        "results/logs/figures/dynamics.log",
    localrule: True
    conda:
        "../envs/pcn.yaml"
    params:
        code=code_param("pcn.outputs.figures"),
    shell:
        "python -m pcn figure dynamics --summary {input.summary:q} --traces {input.traces:q}"
        " --out {output.png:q} > {log:q} 2>&1"


rule figure_robustness:
    input:
        summary="results/summary.csv",
        robustness="results/robustness.csv",
    output:
        png=report(
            "results/figures/robustness.png",
            caption="../report/robustness.rst",
            category="Figures",
            subcategory="Inference dynamics",
        ),
        pdf="results/figures/robustness.pdf",
    log:
        "results/logs/figures/robustness.log",
    localrule: True
    conda:
        "../envs/pcn.yaml"
    params:
        code=code_param("pcn.outputs.figures"),
    shell:
        "python -m pcn figure robustness --summary {input.summary:q} --robustness {input.robustness:q}"
        " --out {output.png:q} > {log:q} 2>&1"
