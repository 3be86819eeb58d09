"""annotate_actor_pairs -> metarewarding.evaluation.annotate_actor_pairs."""

from metarewarding.logs import log_to

log_to(snakemake.log[0])

from metarewarding.evaluation import annotate_actor_pairs  # noqa: E402

annotate_actor_pairs(
    pairs_path=snakemake.input.pairs,
    evaluator_model=snakemake.params.evaluator,
    backend_settings=snakemake.params.backend,
    template_path=snakemake.input.template,
    settings=snakemake.params.settings,
    seed=snakemake.params.seed,
    out_path=snakemake.output.annotations,
    stats_path=snakemake.output.stats,
    threads=snakemake.threads,
)
