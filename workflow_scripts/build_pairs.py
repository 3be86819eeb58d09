"""build_pairs -> metarewarding.pairs.build_pairs."""

from metarewarding.logs import log_to

log_to(snakemake.log[0])

from metarewarding.pairs import build_pairs  # noqa: E402

build_pairs(
    responses_path=snakemake.input.responses,
    judgments_path=snakemake.input.judgments,
    meta_judgments_path=snakemake.input.get("meta_judgments"),
    judge_template_path=snakemake.input.template,
    settings=snakemake.params.settings,
    elo_l2=snakemake.params.elo_l2,
    seed=snakemake.params.seed,
    actor_out=snakemake.output.actor,
    judge_out=snakemake.output.judge,
    train_out=snakemake.output.train,
    stats_path=snakemake.output.stats,
)
