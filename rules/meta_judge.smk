"""meta_judge: judgments + model of iteration t-1 -> results/iter{t}/meta_judgments.jsonl.

Only in iterations with meta_judge.enabled. Per prompt the response with the most varied
judgment scores is selected and every ordered pair of its judgments is compared.
"""


rule meta_judge:
    input:
        judgments="results/iter{t}/judgments.jsonl",
        responses="results/iter{t}/responses.jsonl",
        model=policy_model,
        template=CFG["templates"]["meta_judge"],
        code=package_code(
            "meta_judging",
            "selection",
            "scoring",
            "templates",
            "backends/base",
            "backends/hf",
        ),
    output:
        meta_judgments="results/iter{t}/meta_judgments.jsonl",
        stats="results/iter{t}/stats/meta_judge.json",
    log:
        "logs/iter{t}/meta_judge.log",
    benchmark:
        "benchmarks/iter{t}/meta_judge.tsv"
    conda:
        "../envs/generation.yaml"
    params:
        settings=lambda w: it(w)["meta_judge"],
        backend=CFG["backend"],
        seed=seed_for("meta_judge"),
    script:
        "../workflow_scripts/meta_judge.py"
