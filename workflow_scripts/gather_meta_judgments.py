"""gather_meta_judgments -> metarewarding.meta_judging.gather_meta_judgments."""

from metarewarding.provenance import recorded

with recorded(snakemake):
    from metarewarding.meta_judging import gather_meta_judgments

    gather_meta_judgments(
        shard_paths=list(snakemake.input.meta_judgments),
        stats_paths=list(snakemake.input.stats),
        out_path=snakemake.output.meta_judgments,
        stats_out=snakemake.output.stats,
    )
