"""meta_judge -> metarewarding.meta_judging.meta_judge."""

from metarewarding.provenance import recorded

with recorded(snakemake):
    from metarewarding.checkpoint import checkpoint_every
    from metarewarding.meta_judging import meta_judge

    meta_judge(
        judgments_path=snakemake.input.judgments,
        responses_path=snakemake.input.responses,
        model_dir=snakemake.input.model,
        template_path=snakemake.input.template,
        backend_settings=snakemake.params.backend,
        settings=snakemake.params.settings,
        seed=snakemake.params.seed,
        out_path=snakemake.output.meta_judgments,
        stats_path=snakemake.output.stats,
        threads=snakemake.threads,
        shard=int(snakemake.wildcards.shard),
        shards=snakemake.params.shards,
        checkpoint_every=checkpoint_every(snakemake.config),
    )
