"""meta_judge: judgments + model of iteration t-1 -> results/iter{t}/meta_judgments.jsonl.

Only in iterations with meta_judge.enabled. Per prompt the response with the most varied
judgment scores is selected and every ordered pair of its judgments is compared. Sharded by
prompt (shards.meta_judging); gather_meta_judgments concatenates the shards. Jobs
checkpoint in meta_judgments.{shard}.jsonl.partial and resume from it (see generate.smk).
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
            "shards",
            "checkpoint",
            "templates",
            *backend_code(),
        ),
    output:
        meta_judgments="results/iter{t}/shards/meta_judgments.{shard}.jsonl",
        stats="results/iter{t}/shards/stats/meta_judge.{shard}.json",
    log:
        "logs/iter{t}/meta_judge.{shard}.log",
    benchmark:
        "benchmarks/iter{t}/meta_judge.{shard}.tsv"
    conda:
        "../envs/generation.yaml"
    params:
        settings=lambda w: it(w)["meta_judge"],
        backend=CFG["backend"],
        seed=shard_seed("meta_judge"),
        shards=CFG["shards"]["meta_judging"],
    script:
        "../workflow_scripts/meta_judge.py"


rule gather_meta_judgments:
    input:
        meta_judgments=shard_files(
            "results/iter{t}/shards/meta_judgments.{shard}.jsonl", "meta_judging"
        ),
        stats=shard_files(
            "results/iter{t}/shards/stats/meta_judge.{shard}.json", "meta_judging"
        ),
        code=package_code("shards", "meta_judging"),
    output:
        meta_judgments="results/iter{t}/meta_judgments.jsonl",
        stats="results/iter{t}/stats/meta_judge.json",
    log:
        "logs/iter{t}/gather_meta_judgments.log",
    benchmark:
        "benchmarks/iter{t}/gather_meta_judgments.tsv"
    conda:
        "../envs/core.yaml"
    script:
        "../workflow_scripts/gather_meta_judgments.py"
