"""prepare_seed_model -> metarewarding.seed.prepare_seed_model."""

from metarewarding.provenance import recorded

with recorded(snakemake):
    from metarewarding.seed import prepare_seed_model

    prepare_seed_model(
        source=snakemake.params.source,
        out_dir=snakemake.output.model,
        dtype=snakemake.params.dtype,
    )
