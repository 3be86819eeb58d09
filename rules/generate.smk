"""generate_responses: prompts + model of iteration t-1 -> results/iter{t}/responses.jsonl.

The actor samples K responses per prompt (config: generation.*), recording token counts and
whether each response hit the token budget.
"""


rule generate_responses:
    input:
        prompts="results/iter{t}/prompts.jsonl",
        model=policy_model,
        code=package_code("generation", "backends/base", "backends/hf"),
    output:
        responses="results/iter{t}/responses.jsonl",
        stats="results/iter{t}/stats/generate_responses.json",
    log:
        "logs/iter{t}/generate_responses.log",
    benchmark:
        "benchmarks/iter{t}/generate_responses.tsv"
    conda:
        "../envs/generation.yaml"
    params:
        settings=lambda w: it(w)["generation"],
        backend=CFG["backend"],
        seed=seed_for("generate_responses"),
    script:
        "../workflow_scripts/generate_responses.py"
