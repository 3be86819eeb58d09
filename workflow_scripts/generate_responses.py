"""generate_responses -> metarewarding.generation.generate_responses."""

from metarewarding.provenance import recorded

with recorded(snakemake):
    from metarewarding.checkpoint import checkpoint_every
    from metarewarding.generation import generate_responses

    generate_responses(
        prompts_path=snakemake.input.prompts,
        model_dir=snakemake.input.model,
        backend_settings=snakemake.params.backend,
        settings=snakemake.params.settings,
        seed=snakemake.params.seed,
        out_path=snakemake.output.responses,
        stats_path=snakemake.output.stats,
        threads=snakemake.threads,
        shard=int(snakemake.wildcards.shard),
        shards=snakemake.params.shards,
        checkpoint_every=checkpoint_every(snakemake.config),
    )
