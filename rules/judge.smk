"""judge_responses: responses + model of iteration t-1 -> results/iter{t}/judgments.jsonl.

The judge grades each response N times with the judge template (config: judge.*); scores that
do not parse are kept, counted and left out of the reward. Sharded by prompt
(shards.judging); gather_judgments concatenates the shards and recomputes the parse rates.
Jobs checkpoint in judgments.{shard}.jsonl.partial and resume from it (see generate.smk).
"""


rule judge_responses:
    input:
        responses="results/iter{t}/responses.jsonl",
        model=policy_model,
        template=CFG["templates"]["judge"],
        code=package_code(
            "judging",
            "scoring",
            "shards",
            "checkpoint",
            "templates",
            *backend_code(),
        ),
    output:
        judgments="results/iter{t}/shards/judgments.{shard}.jsonl",
        stats="results/iter{t}/shards/stats/judge_responses.{shard}.json",
    log:
        "logs/iter{t}/judge_responses.{shard}.log",
    benchmark:
        "benchmarks/iter{t}/judge_responses.{shard}.tsv"
    conda:
        "../envs/generation.yaml"
    params:
        settings=lambda w: it(w)["judge"],
        backend=CFG["backend"],
        seed=shard_seed("judge_responses"),
        shards=CFG["shards"]["judging"],
    script:
        "../workflow_scripts/judge_responses.py"


rule gather_judgments:
    input:
        judgments=shard_files(
            "results/iter{t}/shards/judgments.{shard}.jsonl", "judging"
        ),
        stats=shard_files(
            "results/iter{t}/shards/stats/judge_responses.{shard}.json", "judging"
        ),
        code=package_code("shards", "judging"),
    output:
        judgments="results/iter{t}/judgments.jsonl",
        stats="results/iter{t}/stats/judge_responses.json",
    log:
        "logs/iter{t}/gather_judgments.log",
    benchmark:
        "benchmarks/iter{t}/gather_judgments.tsv"
    conda:
        "../envs/core.yaml"
    params:
        score_min=lambda w: it(w)["judge"]["score_min"],
        score_max=lambda w: it(w)["judge"]["score_max"],
    script:
        "../workflow_scripts/gather_judgments.py"
