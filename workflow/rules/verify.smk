rule verify:
    """Rerun a random sample of the leaderboard's records from what results_dir publishes and compare them
    (copa.bench.verify; `snakemake verify`, not part of all): verification.md with a verdict per record."""
    input:
        records=rules.leaderboard.output.records_csv,
        run_config=rules.leaderboard.output.run_config,
    output:
        report(f"{RESULTS}/verification.md", caption="../report/leaderboard.rst", category="Leaderboard"),
    params:
        sample=config["verify"]["sample"],
        seed=config["verify"]["seed"],
    threads: 1
    log:
        f"{OUT}/logs/verify.log",
    conda:
        "../envs/copa.yaml"
    script:
        "../scripts/verify.py"
