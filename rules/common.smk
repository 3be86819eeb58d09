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


wildcard_constraints:
    t=r"[1-9][0-9]*",


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
    """Everything a complete run leaves: every iteration's pairs, stats and model."""
    outputs = ["results/iter0/model"]
    for t in range(1, N_ITER + 1):
        outputs += [
            f"results/iter{t}/model",
            f"results/iter{t}/pairs/train.jsonl",
            f"results/iter{t}/stats/train_dpo.json",
        ]
    return outputs
