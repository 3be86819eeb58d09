"""collect_metrics -> metarewarding.reporting.collect_metrics."""

from metarewarding.logs import log_to

log_to(snakemake.log[0])

from metarewarding.reporting import collect_metrics  # noqa: E402

collect_metrics(
    models=snakemake.params.models,
    sets=snakemake.params.sets,
    win_rate_paths=list(snakemake.input.win_rates),
    agreement_paths=list(snakemake.input.agreements),
    health_paths=list(snakemake.input.health),
    tsv_out=snakemake.output.tsv,
    json_out=snakemake.output.json,
)
