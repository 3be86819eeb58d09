"""train_dpo -> metarewarding.training.train_dpo."""

from metarewarding.logs import log_to

log_to(snakemake.log[0])

from metarewarding.training import train_dpo  # noqa: E402

train_dpo(
    pairs_path=snakemake.input.pairs,
    model_dir=snakemake.input.model,
    settings=snakemake.params.settings,
    seed=snakemake.params.seed,
    out_dir=snakemake.output.model,
    metrics_path=snakemake.output.metrics,
    threads=snakemake.threads,
)
