"""train_eft -> metarewarding.training.train_eft."""

from metarewarding.provenance import recorded

with recorded(snakemake):
    from metarewarding.training import train_eft, training_execution

    train_eft(
        demos_path=snakemake.input.demonstrations,
        template_path=snakemake.input.template,
        model_dir=snakemake.input.model,
        settings=snakemake.params.settings,
        seed=snakemake.params.seed,
        out_dir=snakemake.output.model,
        metrics_path=snakemake.output.metrics,
        threads=snakemake.threads,
        **training_execution(snakemake.config, snakemake.output.model, "train_eft",
                             getattr(snakemake.resources, "gpu", 0)),
    )
