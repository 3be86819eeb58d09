"""plot_metrics -> metarewarding.reporting.plot_metrics."""

from metarewarding.logs import log_to

log_to(snakemake.log[0])

from metarewarding.reporting import plot_metrics  # noqa: E402

plot_metrics(
    metrics_path=snakemake.input.metrics,
    outputs={name: path for name, path in snakemake.output.items()},
)
