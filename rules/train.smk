"""train_dpo: pairs/train.jsonl + model of iteration t-1 -> results/iter{t}/model.

DPO with TRL's DPOTrainer (config: dpo.*), the starting model as frozen reference, optional
LoRA merged before saving; training curves in results/iter{t}/stats/train_dpo.json.
"""


rule train_dpo:
    input:
        pairs="results/iter{t}/pairs/train.jsonl",
        model=policy_model,
        code=package_code("training"),
    output:
        model=directory("results/iter{t}/model"),
        metrics="results/iter{t}/stats/train_dpo.json",
    log:
        "logs/iter{t}/train_dpo.log",
    benchmark:
        "benchmarks/iter{t}/train_dpo.tsv"
    conda:
        "../envs/training.yaml"
    params:
        settings=lambda w: it(w)["dpo"],
        seed=seed_for("train_dpo"),
    script:
        "../workflow_scripts/train_dpo.py"
