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
    shell:
        "pcn figure tradeoff --summary {input.summary:q} --out {output.png:q} > {log:q} 2>&1"


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
    shell:
        "pcn figure ce_weight --summary {input.summary:q} --out {output.png:q} > {log:q} 2>&1"


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
    shell:
        "pcn figure inference --summary {input.summary:q} --traces {input.traces:q}"
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
    shell:
        "pcn figure curves --summary {input.summary:q} --curves {input.curves:q}"
        " --out {output.png:q} > {log:q} 2>&1"
