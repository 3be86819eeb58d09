"""generate_responses: prompts + model of iteration t-1 -> results/iter{t}/responses.jsonl.

The actor samples K responses per prompt (config: generation.*), recording token counts and
whether each response hit the token budget. The prompts are split into shards.generation
blocks, each its own job; gather_responses concatenates them in order. A job checkpoints
finished chunks in responses.{shard}.jsonl.partial (inference.checkpoint_every; not a declared
output) and, killed, resumes after the last one.
"""


rule generate_responses:
    input:
        prompts="results/iter{t}/prompts.jsonl",
        model=policy_model,
        code=package_code(
            "generation",
            "shards",
            "checkpoint",
            *backend_code(),
        ),
    output:
        responses="results/iter{t}/shards/responses.{shard}.jsonl",
        stats="results/iter{t}/shards/stats/generate_responses.{shard}.json",
    log:
        "logs/iter{t}/generate_responses.{shard}.log",
    benchmark:
        "benchmarks/iter{t}/generate_responses.{shard}.tsv"
    conda:
        "../envs/generation.yaml"
    params:
        settings=lambda w: it(w)["generation"],
        backend=CFG["backend"],
        seed=shard_seed("generate_responses"),
        shards=CFG["shards"]["generation"],
    script:
        "../workflow_scripts/generate_responses.py"


rule gather_responses:
    input:
        responses=shard_files(
            "results/iter{t}/shards/responses.{shard}.jsonl", "generation"
        ),
        stats=shard_files(
            "results/iter{t}/shards/stats/generate_responses.{shard}.json",
            "generation",
        ),
        code=package_code("shards"),
    output:
        responses="results/iter{t}/responses.jsonl",
        stats="results/iter{t}/stats/generate_responses.json",
    log:
        "logs/iter{t}/gather_responses.log",
    benchmark:
        "benchmarks/iter{t}/gather_responses.tsv"
    conda:
        "../envs/core.yaml"
    script:
        "../workflow_scripts/gather_responses.py"
