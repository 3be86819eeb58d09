"""evaluate_judge_health -> metarewarding.judge_health.evaluate_judge_health."""

from metarewarding.logs import log_to

log_to(snakemake.log[0])

from metarewarding.judge_health import evaluate_judge_health  # noqa: E402

evaluate_judge_health(
    judgments_path=snakemake.input.judgments,
    meta_judgments_path=snakemake.input.get("meta_judgments"),
    judge_pairs_path=snakemake.input.judge_pairs,
    build_stats_path=snakemake.input.build_stats,
    train_stats_path=snakemake.input.train_stats,
    score_range=snakemake.params.score_range,
    iteration=int(snakemake.wildcards.t),
    out_path=snakemake.output.health,
)
