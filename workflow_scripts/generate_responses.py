"""generate_responses -> metarewarding.generation.generate_responses."""

from metarewarding.logs import log_to

log_to(snakemake.log[0])

from metarewarding.generation import generate_responses  # noqa: E402

generate_responses(
    prompts_path=snakemake.input.prompts,
    model_dir=snakemake.input.model,
    backend_settings=snakemake.params.backend,
    settings=snakemake.params.settings,
    seed=snakemake.params.seed,
    out_path=snakemake.output.responses,
    stats_path=snakemake.output.stats,
    threads=snakemake.threads,
)
