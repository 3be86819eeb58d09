"""sample_prompts -> metarewarding.prompts.sample_prompts."""

from metarewarding.provenance import recorded

with recorded(snakemake):
    from metarewarding.prompts import sample_prompts

    sample_prompts(
        pool_path=snakemake.input.pool,
        exclude_paths=list(snakemake.input.exclude),
        counts=snakemake.params.counts,
        iteration=int(snakemake.wildcards.t),
        seed=snakemake.params.seed,
        out_path=snakemake.output.prompts,
        stats_path=snakemake.output.stats,
    )
