"""sample_prompts -> metarewarding.prompts.sample_prompts."""

from metarewarding.logs import log_to

log_to(snakemake.log[0])

from metarewarding.prompts import sample_prompts  # noqa: E402

sample_prompts(
    pool_path=snakemake.input.pool,
    exclude_paths=list(snakemake.input.exclude),
    counts=snakemake.params.counts,
    iteration=int(snakemake.wildcards.t),
    seed=snakemake.params.seed,
    out_path=snakemake.output.prompts,
    stats_path=snakemake.output.stats,
)
