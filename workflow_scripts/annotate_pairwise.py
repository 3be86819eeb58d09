"""annotate_pairwise -> metarewarding.evaluation.annotate_pairwise."""

from metarewarding.logs import log_to

log_to(snakemake.log[0])

from metarewarding.evaluation import annotate_pairwise  # noqa: E402

annotate_pairwise(
    outputs_path=snakemake.input.outputs,
    reference_path=snakemake.input.reference,
    reference_answers_source=snakemake.params.reference_answers,
    evaluator_model=snakemake.params.evaluator,
    backend_settings=snakemake.params.backend,
    template_path=snakemake.input.template,
    settings=snakemake.params.settings,
    seed=snakemake.params.seed,
    out_path=snakemake.output.annotations,
    stats_path=snakemake.output.stats,
    threads=snakemake.threads,
)
