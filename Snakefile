# copa-bench workflow: `snakemake --cores 8` (see README.md).
configfile: "config/config.yaml"


include: "workflow/rules/attack.smk"


rule all:
    input:
        expand(
            "{out}/{model}/{attack}/{index}/record.json",
            out=config["out"],
            model=config["models"],
            attack=config["attacks"],
            index=config["indices"],
        ),
    default_target: True
