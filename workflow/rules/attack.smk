rule cell:
    """One (dataset, setting, model, attack) cell: the attack on each instance (an image, or a client batch of
    client_batch images), one record per instance; a trained model (ARCH@epochE) needs its checkpoint.

    The records (OUT/TAG/records/DEFENCE/MODEL/ATTACK/INDEX/) are not outputs, so Snakemake never deletes them;
    rerun after a kill, the job keeps every complete, matching record and computes only the rest.
    The output is the cell's summary, written last.
    """
    input:
        checkpoint=model_checkpoint,
    output:
        cell_path("{defence}", "{model}", "{attack}"),
    params:
        run=lambda wildcards: {**scenario_params(), "attack_settings": {
            wildcards.attack: attack_overrides(config, wildcards.attack)}},
        attack=lambda wildcards: attack_identity(config, wildcards.attack),
        records=lambda wildcards: f"{OUT}/{TAG}/records/{wildcards.defence}/{wildcards.model}/{wildcards.attack}",
        setting=lambda wildcards: SETTING_AXIS[wildcards.defence].as_params(),
    # SLURM: --group-components cells=N (profiles/slurm) runs N cells in one job instead of one job each
    group:
        "cells"
    threads: config["threads"]
    resources:
        runtime=cell_runtime,
        mem_mb=CELL_MEM_MB,
        gpu=cell_gpus(),
    log:
        f"{OUT}/logs/{TAG}/cells/{{defence}}/{{model}}/{{attack}}.log",
    conda:
        "../envs/copa.yaml"
    script:
        "../scripts/cell.py"


rule train:
    """A trained model of the models axis (ARCH@epochE): ARCH trained from its seeded initialisation for E
    epochs of SGD on the dataset's train split (config training; copa.training.train), with its test accuracy."""
    output:
        checkpoint=f"{OUT}/{TRAIN_TAG}/checkpoints/{{architecture}}/epoch{{epoch}}.pt",
        meta=f"{OUT}/{TRAIN_TAG}/checkpoints/{{architecture}}/epoch{{epoch}}.json",
    params:
        run=lambda wildcards: {**scenario_params(), "training": config.get("training") or {}},
    threads: config["threads"]
    resources:
        runtime=120,
    log:
        f"{OUT}/logs/{TRAIN_TAG}/checkpoints/{{architecture}}/epoch{{epoch}}.log",
    conda:
        "../envs/copa.yaml"
    script:
        "../scripts/train.py"
