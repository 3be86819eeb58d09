"""archive_run -> metarewarding.archive.pack_run."""

from metarewarding.provenance import recorded

with recorded(snakemake):
    from metarewarding.archive import pack_run

    pack_run(
        config=snakemake.params.config,
        results_dir="results",
        extra=snakemake.params.extra,
        include_models=snakemake.params.models,
        out_path=snakemake.output.archive,
    )
