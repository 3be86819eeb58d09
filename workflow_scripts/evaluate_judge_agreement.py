"""evaluate_judge_agreement -> metarewarding.evaluation.evaluate_judge_agreement."""

from metarewarding.logs import log_to

log_to(snakemake.log[0])

from metarewarding.evaluation import evaluate_judge_agreement  # noqa: E402

evaluate_judge_agreement(
    preferences_path=snakemake.input.preferences,
    limit=snakemake.params.limit,
    model_dir=snakemake.input.model,
    backend_settings=snakemake.params.backend,
    judge_template_path=snakemake.input.template,
    judge_settings=snakemake.params.judge_settings,
    seed=snakemake.params.seed,
    actor_annotations_path=snakemake.input.get("actor_annotations"),
    judgments_out=snakemake.output.judgments,
    out_path=snakemake.output.agreement,
    threads=snakemake.threads,
)
