rule cell:
    """One (dataset, defence, model, attack) cell: the attack on each configured image, one record per image.

    The records (OUT/TAG/records/DEFENCE/MODEL/ATTACK/INDEX/) are not outputs, so Snakemake never deletes them;
    rerun after a kill, the job keeps every complete, matching record and computes only the rest.
    The output is the cell's summary, written last.
    """
    output:
        cell_path("{defence}", "{model}", "{attack}"),
    params:
        run=lambda wildcards: {**scenario_params(), "attack_settings": {
            wildcards.attack: attack_overrides(config, wildcards.attack)}},
        attack=lambda wildcards: attack_identity(config, wildcards.attack),
        records=lambda wildcards: f"{OUT}/{TAG}/records/{wildcards.defence}/{wildcards.model}/{wildcards.attack}",
        defence=lambda wildcards: DEFENCE_AXIS[wildcards.defence],
    threads: config["threads"]
    resources:
        runtime=720,
        mem_mb=4000,
    log:
        f"{OUT}/logs/{TAG}/cells/{{defence}}/{{model}}/{{attack}}.log",
    conda:
        "../envs/copa.yaml"
    script:
        "../scripts/cell.py"
