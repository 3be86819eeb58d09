"""gather_judgments -> metarewarding.judging.gather_judgments."""

from metarewarding.provenance import recorded

with recorded(snakemake):
    from metarewarding.judging import gather_judgments

    gather_judgments(
        shard_paths=list(snakemake.input.judgments),
        stats_paths=list(snakemake.input.stats),
        low=snakemake.params.score_min,
        high=snakemake.params.score_max,
        out_path=snakemake.output.judgments,
        stats_out=snakemake.output.stats,
    )
