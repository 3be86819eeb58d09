"""build_pairs -> metarewarding.pairs.build_pairs."""

from metarewarding.provenance import recorded

with recorded(snakemake):
    from metarewarding.pairs import build_pairs

    build_pairs(
        responses_path=snakemake.input.responses,
        judgments_path=snakemake.input.judgments,
        meta_judgments_path=snakemake.input.get("meta_judgments"),
        judge_template_path=snakemake.input.template,
        settings=snakemake.params.settings,
        elo_l2=snakemake.params.elo_l2,
        seed=snakemake.params.seed,
        actor_out=snakemake.output.actor,
        judge_out=snakemake.output.judge,
        train_out=snakemake.output.train,
        stats_path=snakemake.output.stats,
    )
