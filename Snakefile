"""Meta-Rewarding self-alignment (Wu et al., 2024) as a file-based Snakemake DAG.

Iteration t (t = 1..len(config["iterations"])) starts from results/iter{t-1}/model and makes
results/iter{t}/model. Output-path grammar (the only paths the workflow writes):

    results/iter0/model/                    the seed (after stage 0 when eft.enabled)
    results/seed/model/                     the raw seed, only when stage 0 runs
    results/iter{t}/prompts.jsonl           prompts drawn for iteration t
    results/iter{t}/responses.jsonl         K responses per prompt (actor)
    results/iter{t}/judgments.jsonl         N judgments per response (judge)
    results/iter{t}/meta_judgments.jsonl    ordered judgment comparisons (meta-judge)
    results/iter{t}/pairs/{actor,judge,train}.jsonl
    results/iter{t}/model/                  the model trained in iteration t
    results/iter{t}/shards/                 per-shard outputs of the model stages; *.partial
                                            beside one: its finished chunks while it runs
    results/iter{t}/stats/{rule}.json       what each stage did: counts, drop reasons, seconds
    results/iter{t}/manifests/{job}.json    hashes of a job's inputs/outputs, params, versions
    results/iter{t}/eval/                   evaluation of model t (iteration 0 = the seed)
    results/metrics.tsv, results/plots/     one row per model; the report's plots
    results/MANIFEST.json                   the run's stage manifests, config, git commit
    logs/iter{t}/{rule}.log                 and benchmarks/iter{t}/{rule}.tsv beside them
"""

from snakemake.utils import min_version

min_version("9.0")


configfile: "config.yaml"


include: "rules/common.smk"
include: "rules/seed.smk"
include: "rules/prompts.smk"
include: "rules/generate.smk"
include: "rules/judge.smk"
include: "rules/meta_judge.smk"
include: "rules/pairs.smk"
include: "rules/train.smk"
include: "rules/evaluate.smk"
include: "rules/provenance.smk"


rule all:
    default_target: True
    input:
        final_outputs(),
        "results/MANIFEST.json",
