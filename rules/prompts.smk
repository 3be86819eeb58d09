"""sample_prompts: the prompt pool -> results/iter{t}/prompts.jsonl.

The pool is shuffled once with the master seed; iteration t takes the next P_t prompts, so
draws are disjoint across iterations; prompts of the evaluation sets are never drawn.
"""


rule sample_prompts:
    input:
        pool=CFG["prompt_pool"],
        exclude=CFG["exclude_prompts"],
        code=package_code("prompts", "records"),
    output:
        prompts="results/iter{t}/prompts.jsonl",
        stats="results/iter{t}/stats/sample_prompts.json",
    log:
        "logs/iter{t}/sample_prompts.log",
    benchmark:
        "benchmarks/iter{t}/sample_prompts.tsv"
    conda:
        "../envs/core.yaml"
    params:
        counts=lambda w: [ITERATIONS[i]["prompts"] for i in range(int(w.t))],
        seed=stage_seed(CFG["seed"], 0, "sample_prompts"),
    script:
        "../workflow_scripts/sample_prompts.py"
