"""train_dpo -> metarewarding.training.train_dpo."""

from metarewarding.provenance import recorded

with recorded(snakemake):
    from metarewarding.training import train_dpo, training_execution

    train_dpo(
        pairs_path=snakemake.input.pairs,
        model_dir=snakemake.input.model,
        settings=snakemake.params.settings,
        seed=snakemake.params.seed,
        out_dir=snakemake.output.model,
        metrics_path=snakemake.output.metrics,
        threads=snakemake.threads,
        **training_execution(snakemake.config, snakemake.output.model, "train_dpo",
                             getattr(snakemake.resources, "gpu", 0)),
    )
