rule cell:
    """One (dataset, model, attack) cell: the attack on each configured image, one record per image.

    The records (OUT/TAG/records/MODEL/ATTACK/INDEX/) are not outputs, so Snakemake never deletes them;
    rerun after a kill, the job keeps every complete, matching record and computes only the rest.
    The output is the cell's summary, written last.
    """
    output:
        f"{OUT}/{TAG}/cells/{{model}}/{{attack}}.json",
    params:
        run=lambda wildcards: {**scenario_params(), "attack_settings": {
            wildcards.attack: attack_overrides(config, wildcards.attack)}},
        attack=lambda wildcards: attack_identity(config, wildcards.attack),
        records=lambda wildcards: f"{OUT}/{TAG}/records/{wildcards.model}/{wildcards.attack}",
    threads: config["threads"]
    resources:
        runtime=720,
        mem_mb=4000,
    log:
        f"{OUT}/logs/{TAG}/cells/{{model}}/{{attack}}.log",
    conda:
        "../envs/copa.yaml"
    script:
        "../scripts/cell.py"
