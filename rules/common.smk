"""Config validation, global wildcard constraints and the input functions of every rule.

Only path plumbing lives here; the algorithm is in the metarewarding package.
"""

import os
import sys
from pathlib import Path

# The workflow runs the package from this checkout (src/), in the main process and in every
# job, whatever environment the job uses: the code that runs is the code the rules depend on.
SRC = str(Path(workflow.basedir) / "src")
sys.path.insert(0, SRC)
os.environ.update(
    PYTHONPATH=os.pathsep.join(filter(None, [SRC, os.environ.get("PYTHONPATH")]))
)

from metarewarding.config import stage_seed, validate_config
from metarewarding.prompts import check_pool_size

CFG = validate_config(config)
ITERATIONS = CFG["resolved_iterations"]
N_ITER = len(ITERATIONS)


onstart:
    # Not run by a dry run, so the paper config can be listed without its 20,000-prompt pool.
    check_pool_size(
        CFG["prompt_pool"],
        CFG["exclude_prompts"],
        [it["prompts"] for it in ITERATIONS],
    )


# Concatenating shards takes a second: not worth a cluster job.
localrules:
    gather_responses,
    gather_judgments,
    gather_meta_judgments,


wildcard_constraints:
    t=r"[1-9][0-9]*",
    shard=r"[0-9]+",


def it(wildcards):
    """The settings of the iteration named by the wildcard {t}."""
    return ITERATIONS[int(wildcards.t) - 1]


def judge_training(t):
    """Does iteration t train the judge (run the meta-judge, build judge pairs)?"""
    return ITERATIONS[int(t) - 1]["meta_judge"]["enabled"]


def policy_model(wildcards):
    """Iteration t is run by the model of iteration t-1."""
    return f"results/iter{int(wildcards.t) - 1}/model"


def seed_for(stage):
    """A params function giving the stage's seed for iteration {t}."""
    return lambda wildcards: stage_seed(CFG["seed"], int(wildcards.t), stage)


def package_code(*modules):
    """Package modules a rule runs, as inputs, so that editing one reruns the rule (mtime)."""
    base = Path(workflow.basedir) / "src" / "metarewarding"
    paths = [base / f"{m}.py" for m in modules]
    return [str(p) for p in paths if p.exists()]


def build_pairs_inputs(wildcards):
    """Meta-judgments are an input only in iterations that train the judge."""
    inputs = {
        "responses": f"results/iter{wildcards.t}/responses.jsonl",
        "judgments": f"results/iter{wildcards.t}/judgments.jsonl",
        "template": CFG["templates"]["judge"],
        "code": package_code("pairs", "selection", "elo", "templates"),
    }
    if judge_training(wildcards.t):
        inputs["meta_judgments"] = f"results/iter{wildcards.t}/meta_judgments.jsonl"
    return inputs


def final_outputs():
    """Everything a complete run leaves: every iteration's pairs, stats and model, and the
    evaluation of every model."""
    outputs = ["results/iter0/model"]
    for t in range(1, N_ITER + 1):
        outputs += [
            f"results/iter{t}/model",
            f"results/iter{t}/pairs/train.jsonl",
            f"results/iter{t}/stats/train_dpo.json",
        ]
    return outputs + evaluation_outputs()


def evaluation_outputs():
    """The metrics table of every model (iteration 0 = the seed) and the report's plots, which
    pull in every evaluate_* job of rules/evaluate.smk; the optional alpaca_eval runs.
    """
    if not CFG["evaluation"]["enabled"]:
        return []
    plots = [str(path) for path in rules.plot_metrics.output]
    return ["results/metrics.tsv", *plots, *alpaca_eval_targets()]


def shard_files(pattern, stage):
    """The per-shard files of a stage for iteration {t}: ``pattern`` has {t} and {shard}."""
    count = CFG["shards"][stage]
    return lambda w: [pattern.format(t=w.t, shard=s) for s in range(count)]


def shard_seed(stage):
    """A params function giving each shard of a stage in iteration {t} its own seed."""
    return lambda w: stage_seed(CFG["seed"], int(w.t), f"{stage}/shard{w.shard}")


# Evaluation of every model, iteration 0 (the seed) included: rules/evaluate.smk.

import re

from metarewarding.evaluation import evaluation_settings

EVAL = evaluation_settings(CFG["evaluation"])
EVAL_SETS = EVAL["sets"]
MODELS = list(range(N_ITER + 1))  # model t is results/iter{t}/model; 0 is the seed
EVALUATOR = EVAL["evaluator"]
EVALUATOR_MODEL = EVALUATOR["model"] or "results/iter0/model"  # fixed across iterations
EVAL_T = r"[0-9]+"  # unlike the training rules, evaluation includes iteration 0
EVAL_SET = "|".join(re.escape(name) for name in EVAL_SETS) or "(?!)"
MODEL_CODE = ("backends/base", "backends/hf", "records", "templates")


def eval_reference(wildcards):
    """The outputs model t is compared with: the set's reference file, or the seed's outputs."""
    spec = EVAL_SETS[wildcards.set]
    return (
        spec["reference_outputs"] or f"results/iter0/eval/{wildcards.set}/outputs.json"
    )


def evaluator_inputs(wildcards):
    """The seed's folder is an input when it is the evaluator (so it is built first)."""
    return {} if EVALUATOR["model"] else {"evaluator": "results/iter0/model"}


def model_judge_settings(wildcards):
    """Model t judges in iteration t+1; the final model with the last iteration's settings."""
    settings = ITERATIONS[min(int(wildcards.t), N_ITER - 1)]["judge"]
    return {**settings, **EVAL["human_preferences"]["judge_overrides"]}


def judge_agreement_inputs(wildcards):
    """From iteration 1 on, the evaluator's verdicts on the iteration's actor pairs too."""
    inputs = {
        "model": f"results/iter{wildcards.t}/model",
        "preferences": EVAL["human_preferences"]["path"],
        "template": CFG["templates"]["judge"],
        "code": package_code(
            "evaluation", "judging", "scoring", "metrics", *MODEL_CODE
        ),
    }
    if int(wildcards.t) >= 1:
        inputs["actor_annotations"] = (
            f"results/iter{wildcards.t}/eval/actor_pair_annotations.jsonl"
        )
    return inputs


def judge_health_inputs(wildcards):
    """Iteration t's own files; meta-judgments only where it trained the judge."""
    t = wildcards.t
    inputs = {
        "judgments": f"results/iter{t}/judgments.jsonl",
        "judge_pairs": f"results/iter{t}/pairs/judge.jsonl",
        "build_stats": f"results/iter{t}/stats/build_pairs.json",
        "train_stats": f"results/iter{t}/stats/train_dpo.json",
        "code": package_code("judge_health", "metrics", "records"),
    }
    if judge_training(t):
        inputs["meta_judgments"] = f"results/iter{t}/meta_judgments.jsonl"
    return inputs


def alpaca_eval_targets():
    """The optional alpaca_eval runs; a model is not sent against its own outputs."""
    if not EVAL["alpaca_eval"]["enabled"]:
        return []
    return [
        f"results/iter{t}/eval/{name}/alpaca_eval"
        for name in EVAL["alpaca_eval"]["sets"]
        for t in MODELS
        if t >= 1 or EVAL_SETS[name]["reference_outputs"]
    ]


def run_config():
    """The validated config with defaults, as the run's manifest and archive record it."""
    return {k: v for k, v in CFG.items() if k != "resolved_iterations"}


def backend_code():
    """The backend modules a model rule runs (the interface and the configured backend)."""
    files = {"transformers": "hf", "vllm": "vllm", "openai": "openai_compat"}
    return ["backends/base", f"backends/{files[CFG['backend']['name']]}"]
