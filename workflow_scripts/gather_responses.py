"""gather_responses -> metarewarding.generation.gather_responses."""

from metarewarding.provenance import recorded

with recorded(snakemake):
    from metarewarding.generation import gather_responses

    gather_responses(
        shard_paths=list(snakemake.input.responses),
        stats_paths=list(snakemake.input.stats),
        out_path=snakemake.output.responses,
        stats_out=snakemake.output.stats,
    )
