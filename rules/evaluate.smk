"""Evaluation of every model, iteration 0 (the seed) included, and the report (evaluation.*).

generate_eval_outputs     results/iter{t}/model answers set {set} (greedy, turn by turn)
                          -> results/iter{t}/eval/{set}/outputs.json (AlpacaEval's format)
                             and arena_hard_answers.jsonl (Arena-Hard's answer format)
annotate_pairwise         a fixed evaluator (default: the seed) compares those outputs with the
                          reference's (default: the seed's) in both orders, ties allowed
                          -> results/iter{t}/eval/{set}/annotations.jsonl
evaluate_win_rate         -> results/iter{t}/eval/{set}/win_rate.json: win rate and AlpacaEval 2's
                          length-controlled win rate with bootstrap intervals, mean lengths
annotate_actor_pairs      the evaluator on iteration t's actor pairs (t >= 1)
                          -> results/iter{t}/eval/actor_pair_annotations.jsonl
evaluate_judge_agreement  results/iter{t}/model judges the labelled pairs with the pipeline's
                          judge settings -> results/iter{t}/eval/judge_agreement.json
evaluate_judge_health     iteration t's judgments, meta-judgments, pairs and DPO curves (t >= 1)
                          -> results/iter{t}/eval/judge_health.json
collect_metrics           -> results/metrics.tsv and results/metrics.json, one row per model
plot_metrics              -> results/plots/*.png, marked for `snakemake --report report.html`
run_alpaca_eval           optional (evaluation.alpaca_eval.enabled; calls a paid API): the
                          `alpaca_eval` command on outputs.json
"""


report: "../report/workflow.rst"


REPORT_DIR = "../report"


rule generate_eval_outputs:
    input:
        model="results/iter{t}/model",
        code=package_code("evaluation", "generation", *MODEL_CODE),
    output:
        outputs=report(
            "results/iter{t}/eval/{set}/outputs.json",
            caption=f"{REPORT_DIR}/outputs.rst",
            category="Generation",
            subcategory="per iteration",
            labels={"iteration": "{t}", "set": "{set}", "file": "answers"},
        ),
        arena_hard="results/iter{t}/eval/{set}/arena_hard_answers.jsonl",
        stats="results/iter{t}/eval/{set}/stats/generate_eval_outputs.json",
    log:
        "logs/iter{t}/generate_eval_outputs.{set}.log",
    benchmark:
        "benchmarks/iter{t}/generate_eval_outputs.{set}.tsv"
    wildcard_constraints:
        t=EVAL_T,
        set=EVAL_SET,
    conda:
        "../envs/generation.yaml"
    params:
        set_settings=lambda w: EVAL_SETS[w.set],
        settings=EVAL["generation"],
        backend=CFG["backend"],
        generator="metarewarding-iter{t}",
        seed=seed_for("generate_eval_outputs"),
    script:
        "../workflow_scripts/generate_eval_outputs.py"


rule annotate_pairwise:
    input:
        unpack(evaluator_inputs),
        outputs="results/iter{t}/eval/{set}/outputs.json",
        reference=eval_reference,
        template=EVALUATOR["template"],
        code=package_code("evaluation", "judging", "metrics", *MODEL_CODE),
    output:
        annotations="results/iter{t}/eval/{set}/annotations.jsonl",
        stats="results/iter{t}/eval/{set}/stats/annotate_pairwise.json",
    log:
        "logs/iter{t}/annotate_pairwise.{set}.log",
    benchmark:
        "benchmarks/iter{t}/annotate_pairwise.{set}.tsv"
    wildcard_constraints:
        t=EVAL_T,
        set=EVAL_SET,
    conda:
        "../envs/generation.yaml"
    params:
        evaluator=EVALUATOR_MODEL,
        backend=EVALUATOR["backend"] or CFG["backend"],
        settings={k: v for k, v in EVALUATOR.items() if k not in ("model", "backend")},
        reference_answers=lambda w: EVAL_SETS[w.set]["reference_answers"],
        seed=seed_for("annotate_pairwise"),
    script:
        "../workflow_scripts/annotate_pairwise.py"


rule evaluate_win_rate:
    input:
        annotations="results/iter{t}/eval/{set}/annotations.jsonl",
        code=package_code("evaluation", "metrics"),
    output:
        win_rate=report(
            "results/iter{t}/eval/{set}/win_rate.json",
            caption=f"{REPORT_DIR}/win_rate_json.rst",
            category="Evaluation",
            subcategory="per iteration",
            labels={"iteration": "{t}", "set": "{set}", "file": "win rate"},
        ),
    log:
        "logs/iter{t}/evaluate_win_rate.{set}.log",
    benchmark:
        "benchmarks/iter{t}/evaluate_win_rate.{set}.tsv"
    wildcard_constraints:
        t=EVAL_T,
        set=EVAL_SET,
    conda:
        "../envs/evaluation.yaml"
    params:
        bootstrap=EVAL["bootstrap"],
        seed=stage_seed(CFG["seed"], 0, "evaluate_win_rate"),
    script:
        "../workflow_scripts/evaluate_win_rate.py"


rule annotate_actor_pairs:
    input:
        unpack(evaluator_inputs),
        pairs="results/iter{t}/pairs/actor.jsonl",
        template=EVALUATOR["template"],
        code=package_code("evaluation", "judging", "metrics", *MODEL_CODE),
    output:
        annotations="results/iter{t}/eval/actor_pair_annotations.jsonl",
        stats="results/iter{t}/eval/stats/annotate_actor_pairs.json",
    log:
        "logs/iter{t}/annotate_actor_pairs.log",
    benchmark:
        "benchmarks/iter{t}/annotate_actor_pairs.tsv"
    conda:
        "../envs/generation.yaml"
    params:
        evaluator=EVALUATOR_MODEL,
        backend=EVALUATOR["backend"] or CFG["backend"],
        settings={k: v for k, v in EVALUATOR.items() if k not in ("model", "backend")},
        seed=seed_for("annotate_actor_pairs"),
    script:
        "../workflow_scripts/annotate_actor_pairs.py"


rule evaluate_judge_agreement:
    input:
        unpack(judge_agreement_inputs),
    output:
        agreement=report(
            "results/iter{t}/eval/judge_agreement.json",
            caption=f"{REPORT_DIR}/judge_agreement_json.rst",
            category="Judging",
            subcategory="per iteration",
            labels={"iteration": "{t}", "file": "judge agreement"},
        ),
        judgments="results/iter{t}/eval/human_preference_judgments.jsonl",
    log:
        "logs/iter{t}/evaluate_judge_agreement.log",
    benchmark:
        "benchmarks/iter{t}/evaluate_judge_agreement.tsv"
    wildcard_constraints:
        t=EVAL_T,
    conda:
        "../envs/generation.yaml"
    params:
        limit=EVAL["human_preferences"]["limit"],
        judge_settings=model_judge_settings,
        backend=CFG["backend"],
        seed=seed_for("evaluate_judge_agreement"),
    script:
        "../workflow_scripts/evaluate_judge_agreement.py"


rule evaluate_judge_health:
    input:
        unpack(judge_health_inputs),
    output:
        health=report(
            "results/iter{t}/eval/judge_health.json",
            caption=f"{REPORT_DIR}/judge_health_json.rst",
            category="Judging",
            subcategory="per iteration",
            labels={"iteration": "{t}", "file": "judge health"},
        ),
    log:
        "logs/iter{t}/evaluate_judge_health.log",
    benchmark:
        "benchmarks/iter{t}/evaluate_judge_health.tsv"
    conda:
        "../envs/evaluation.yaml"
    params:
        score_range=lambda w: [it(w)["judge"]["score_min"], it(w)["judge"]["score_max"]],
    script:
        "../workflow_scripts/evaluate_judge_health.py"


rule collect_metrics:
    input:
        win_rates=[
            f"results/iter{t}/eval/{name}/win_rate.json"
            for t in MODELS
            for name in EVAL_SETS
        ],
        agreements=[f"results/iter{t}/eval/judge_agreement.json" for t in MODELS],
        health=[f"results/iter{t}/eval/judge_health.json" for t in MODELS[1:]],
        code=package_code("reporting", "records"),
    output:
        tsv=report(
            "results/metrics.tsv",
            caption=f"{REPORT_DIR}/metrics.rst",
            category="Summary",
            labels={"table": "metrics per model"},
        ),
        json="results/metrics.json",
    log:
        "logs/collect_metrics.log",
    benchmark:
        "benchmarks/collect_metrics.tsv"
    conda:
        "../envs/evaluation.yaml"
    params:
        models=MODELS,
        sets=list(EVAL_SETS),
    script:
        "../workflow_scripts/collect_metrics.py"


rule plot_metrics:
    input:
        metrics="results/metrics.json",
        code=package_code("reporting", "records"),
    output:
        win_rate=report(
            "results/plots/win_rate.png",
            caption=f"{REPORT_DIR}/win_rate.rst",
            category="Evaluation",
            subcategory="across iterations",
            labels={"figure": "win rate and LC win rate"},
        ),
        length=report(
            "results/plots/length.png",
            caption=f"{REPORT_DIR}/length.rst",
            category="Generation",
            subcategory="across iterations",
            labels={"figure": "mean output length"},
        ),
        score_distribution=report(
            "results/plots/score_distribution.png",
            caption=f"{REPORT_DIR}/score_distribution.rst",
            category="Judging",
            subcategory="across iterations",
            labels={"figure": "judge score distribution"},
        ),
        judge_bias=report(
            "results/plots/judge_bias.png",
            caption=f"{REPORT_DIR}/judge_bias.rst",
            category="Judging",
            subcategory="across iterations",
            labels={"figure": "judge and meta-judge biases"},
        ),
        judge_agreement=report(
            "results/plots/judge_agreement.png",
            caption=f"{REPORT_DIR}/judge_agreement.rst",
            category="Judging",
            subcategory="across iterations",
            labels={"figure": "judge agreement"},
        ),
        dpo_curves=report(
            "results/plots/dpo_curves.png",
            caption=f"{REPORT_DIR}/dpo_curves.rst",
            category="Training",
            subcategory="across iterations",
            labels={"figure": "DPO training curves"},
        ),
    log:
        "logs/plot_metrics.log",
    benchmark:
        "benchmarks/plot_metrics.tsv"
    conda:
        "../envs/evaluation.yaml"
    script:
        "../workflow_scripts/plot_metrics.py"


rule run_alpaca_eval:
    input:
        outputs="results/iter{t}/eval/{set}/outputs.json",
        reference=eval_reference,
    output:
        results=directory("results/iter{t}/eval/{set}/alpaca_eval"),
    log:
        "logs/iter{t}/run_alpaca_eval.{set}.log",
    benchmark:
        "benchmarks/iter{t}/run_alpaca_eval.{set}.tsv"
    wildcard_constraints:
        t=EVAL_T,
        set=EVAL_SET,
    conda:
        "../envs/alpaca_eval.yaml"
    params:
        annotators_config=EVAL["alpaca_eval"]["annotators_config"],
    shell:
        "mkdir -p {output.results:q} &&"
        " alpaca_eval evaluate --model_outputs {input.outputs:q}"
        " --reference_outputs {input.reference:q}"
        " --annotators_config {params.annotators_config:q}"
        " --output_path {output.results:q} > {log:q} 2>&1"
