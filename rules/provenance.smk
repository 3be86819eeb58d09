"""write_run_manifest, archive_run: provenance and archives of a whole run.

write_run_manifest: every final output -> results/MANIFEST.json, which ties the stage
manifests (results/iter{t}/manifests/*.json) to the config, git commit and versions.
archive_run (on demand: `snakemake results/archive.tar.gz`): the run's config, manifests,
records, stats, metrics and report in one tarball; models only with archive.models.
"""


rule write_run_manifest:
    input:
        outputs=final_outputs(),
        code=package_code("provenance"),
    output:
        manifest="results/MANIFEST.json",
    log:
        "logs/write_run_manifest.log",
    benchmark:
        "benchmarks/write_run_manifest.tsv"
    conda:
        "../envs/core.yaml"
    params:
        config=run_config(),
    script:
        "../workflow_scripts/write_run_manifest.py"


rule archive_run:
    input:
        manifest="results/MANIFEST.json",
        code=package_code("archive"),
    output:
        archive="results/archive.tar.gz",
    log:
        "logs/archive_run.log",
    benchmark:
        "benchmarks/archive_run.tsv"
    conda:
        "../envs/core.yaml"
    params:
        config=run_config(),
        models=CFG["archive"]["models"],
        extra=["report.html"],
    script:
        "../workflow_scripts/archive_run.py"
