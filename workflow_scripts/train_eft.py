"""train_eft -> metarewarding.training.train_eft."""

from metarewarding.logs import log_to

log_to(snakemake.log[0])

from metarewarding.training import train_eft  # noqa: E402

train_eft(
    demos_path=snakemake.input.demonstrations,
    template_path=snakemake.input.template,
    model_dir=snakemake.input.model,
    settings=snakemake.params.settings,
    seed=snakemake.params.seed,
    out_dir=snakemake.output.model,
    metrics_path=snakemake.output.metrics,
    threads=snakemake.threads,
)
