"""Stage 0: the seed model.

prepare_seed_model: config seed_model.source (the bundled SmolLM2 GGUF, a model folder, a
.gguf file or a hub id) -> a plain Hugging Face folder. When eft.enabled, train_eft fine-tunes
it on judge demonstrations (TRL SFTTrainer) and its output is the iteration-0 model.
"""


rule prepare_seed_model:
    input:
        code=package_code("seed"),
    output:
        model=directory(
            "results/seed/model" if CFG["eft"]["enabled"] else "results/iter0/model"
        ),
    log:
        "logs/iter0/prepare_seed_model.log",
    benchmark:
        "benchmarks/iter0/prepare_seed_model.tsv"
    conda:
        "../envs/generation.yaml"
    params:
        source=CFG["seed_model"]["source"],
        dtype=CFG["seed_model"]["dtype"],
    script:
        "../workflow_scripts/prepare_seed_model.py"


if CFG["eft"]["enabled"]:

    rule train_eft:
        input:
            model="results/seed/model",
            demonstrations=CFG["eft"]["demonstrations"],
            template=CFG["templates"]["judge"],
            code=package_code("training", "templates"),
        output:
            model=directory("results/iter0/model"),
            metrics="results/iter0/stats/train_eft.json",
        log:
            "logs/iter0/train_eft.log",
        benchmark:
            "benchmarks/iter0/train_eft.tsv"
        conda:
            "../envs/training.yaml"
        params:
            settings={
                k: v
                for k, v in CFG["eft"].items()
                if k not in ("enabled", "demonstrations")
            },
            seed=stage_seed(CFG["seed"], 0, "train_eft"),
        script:
            "../workflow_scripts/train_eft.py"
