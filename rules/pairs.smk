"""build_pairs: responses, judgments (and meta-judgments) -> results/iter{t}/pairs/*.jsonl.

Actor pairs by length-controlled selection (pairs.rho, pairs.max_chosen_chars); judge pairs
from position-weighted Elo of the meta-judgments when the iteration trains the judge; the
training set is their shuffled union.
"""


rule build_pairs:
    input:
        unpack(build_pairs_inputs),
    output:
        actor="results/iter{t}/pairs/actor.jsonl",
        judge="results/iter{t}/pairs/judge.jsonl",
        train="results/iter{t}/pairs/train.jsonl",
        stats="results/iter{t}/stats/build_pairs.json",
    log:
        "logs/iter{t}/build_pairs.log",
    benchmark:
        "benchmarks/iter{t}/build_pairs.tsv"
    conda:
        "../envs/core.yaml"
    params:
        settings=lambda w: it(w)["pairs"],
        elo_l2=lambda w: it(w)["meta_judge"]["elo_l2"],
        seed=seed_for("build_pairs"),
    script:
        "../workflow_scripts/build_pairs.py"
