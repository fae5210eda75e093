localrules:
    leaderboard,


rule leaderboard:
    """Aggregate the records and security reports: leaderboard, per-run and security tables (CSV, Markdown)."""
    input:
        cells=expand(cell_path("{defence}", "{model}", "{attack}"), defence=SETTING_AXIS, model=MODELS, attack=ATTACKS),
        security=expand(security_path("{model}"), model=MODELS),
    output:
        records_csv=f"{RESULTS}/records.csv",
        leaderboard_csv=f"{RESULTS}/leaderboard.csv",
        leaderboard_md=report(f"{RESULTS}/leaderboard.md", caption="../report/leaderboard.rst",
                              category="Leaderboard"),
        security_csv=f"{RESULTS}/security.csv",
        security_md=report(f"{RESULTS}/security.md", caption="../report/security.rst", category="Leaderboard"),
        run_config=f"{RESULTS}/config.yaml",
    params:
        models=MODELS,
        attacks=ATTACKS,
        defences=[setting.label for setting in SETTING_AXIS.values()],
        images_per_cell=instances_per_cell(),
        title=config["title"],
        metric=config["plots"]["security_metric"],
        headline=HEADLINE,
    log:
        f"{OUT}/logs/leaderboard.log",
    conda:
        "../envs/copa.yaml"
    script:
        "../scripts/leaderboard.py"
