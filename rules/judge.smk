"""judge_responses: responses + model of iteration t-1 -> results/iter{t}/judgments.jsonl.

The judge grades each response N times with the judge template (config: judge.*); scores that
do not parse are kept, counted and left out of the reward.
"""


rule judge_responses:
    input:
        responses="results/iter{t}/responses.jsonl",
        model=policy_model,
        template=CFG["templates"]["judge"],
        code=package_code(
            "judging", "scoring", "templates", "backends/base", "backends/hf"
        ),
    output:
        judgments="results/iter{t}/judgments.jsonl",
        stats="results/iter{t}/stats/judge_responses.json",
    log:
        "logs/iter{t}/judge_responses.log",
    benchmark:
        "benchmarks/iter{t}/judge_responses.tsv"
    conda:
        "../envs/generation.yaml"
    params:
        settings=lambda w: it(w)["judge"],
        backend=CFG["backend"],
        seed=seed_for("judge_responses"),
    script:
        "../workflow_scripts/judge_responses.py"
