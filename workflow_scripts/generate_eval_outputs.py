"""generate_eval_outputs -> metarewarding.evaluation.generate_eval_outputs."""

from metarewarding.logs import log_to

log_to(snakemake.log[0])

from metarewarding.evaluation import generate_eval_outputs  # noqa: E402

generate_eval_outputs(
    set_settings=snakemake.params.set_settings,
    set_name=snakemake.wildcards.set,
    model_dir=snakemake.input.model,
    backend_settings=snakemake.params.backend,
    settings=snakemake.params.settings,
    generator=snakemake.params.generator,
    seed=snakemake.params.seed,
    out_path=snakemake.output.outputs,
    arena_hard_path=snakemake.output.arena_hard,
    stats_path=snakemake.output.stats,
    threads=snakemake.threads,
)
