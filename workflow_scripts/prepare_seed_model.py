"""prepare_seed_model -> metarewarding.seed.prepare_seed_model."""

from metarewarding.logs import log_to

log_to(snakemake.log[0])

from metarewarding.seed import prepare_seed_model  # noqa: E402

prepare_seed_model(
    source=snakemake.params.source,
    out_dir=snakemake.output.model,
    dtype=snakemake.params.dtype,
)
