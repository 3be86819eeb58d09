"""evaluate_win_rate -> metarewarding.evaluation.evaluate_win_rate."""

from metarewarding.logs import log_to

log_to(snakemake.log[0])

from metarewarding.evaluation import evaluate_win_rate  # noqa: E402

evaluate_win_rate(
    annotations_path=snakemake.input.annotations,
    set_name=snakemake.wildcards.set,
    bootstrap=snakemake.params.bootstrap,
    seed=snakemake.params.seed,
    out_path=snakemake.output.win_rate,
)
