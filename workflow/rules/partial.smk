rule partial:
    """The leaderboard of the records that exist so far, marked partial (cells complete / total): for a stopped
    or still-running workflow (`snakemake partial --forcerun partial --nolock`; not part of all)."""
    output:
        records_csv=f"{RESULTS}/partial/records.csv",
        leaderboard_md=f"{RESULTS}/partial/leaderboard.md",
    params:
        records_root=f"{OUT}/{TAG}/records",
        security_root=f"{OUT}/{TAG}/security",
        models=MODELS,
        attacks=ATTACKS,
        defences={tag: setting.label for tag, setting in SETTING_AXIS.items()},
        instances=INSTANCES,
        indices=config["indices"],
        title=config["title"],
        metric=config["plots"]["security_metric"],
        headline=HEADLINE,
    log:
        f"{OUT}/logs/partial.log",
    conda:
        "../envs/copa.yaml"
    script:
        "../scripts/partial.py"
