"""write_run_manifest -> metarewarding.provenance.write_run_manifest."""

from metarewarding.provenance import recorded

with recorded(snakemake):
    from metarewarding.provenance import write_run_manifest

    write_run_manifest(
        results_dir="results",
        config=snakemake.params.config,
        out_path=snakemake.output.manifest,
    )
