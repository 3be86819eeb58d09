"""judge_responses -> metarewarding.judging.judge_responses."""

from metarewarding.logs import log_to

log_to(snakemake.log[0])

from metarewarding.judging import judge_responses  # noqa: E402

judge_responses(
    responses_path=snakemake.input.responses,
    model_dir=snakemake.input.model,
    template_path=snakemake.input.template,
    backend_settings=snakemake.params.backend,
    settings=snakemake.params.settings,
    seed=snakemake.params.seed,
    out_path=snakemake.output.judgments,
    stats_path=snakemake.output.stats,
    threads=snakemake.threads,
)
