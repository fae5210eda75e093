localrules:
    plots,


# The privacy curves only where the config's defences axis has a defence: a run without defences has no curve
# to draw (the rule then does not declare the file, and the script does not write it).
PRIVACY_CURVES = [f"{RESULTS}/plots/privacy_curves.png"] if any(s.defences for s in SETTING_AXIS.values()) else []


rule plots:
    """Reconstruction grid per model, PSNR vs security metric (Spearman ρ), PSNR distribution, time vs PSNR (the
    undefended runs, or the first defence's), and, when the config has defences, the privacy curves: PSNR and SSIM
    against defence strength."""
    input:
        records=rules.leaderboard.output.records_csv,
        board=rules.leaderboard.output.leaderboard_csv,
    output:
        grids=report(expand(f"{RESULTS}/plots/reconstructions_{{model}}.png", model=MODELS),
                     caption="../report/reconstructions.rst", category="Plots", subcategory="Reconstructions"),
        security=report(f"{RESULTS}/plots/psnr_vs_security.png", caption="../report/psnr_vs_security.rst",
                        category="Plots"),
        distribution=report(f"{RESULTS}/plots/psnr_distribution.png", caption="../report/psnr_distribution.rst",
                            category="Plots"),
        time=report(f"{RESULTS}/plots/time_vs_psnr.png", caption="../report/time_vs_psnr.rst", category="Plots"),
        privacy=report(PRIVACY_CURVES, caption="../report/privacy_curves.rst", category="Plots"),
    params:
        models=MODELS,
        attacks=ATTACKS,
        metric=config["plots"]["security_metric"],
        psnr_cap=config["plots"]["psnr_cap"],
        headline=HEADLINE,
    log:
        f"{OUT}/logs/plots.log",
    conda:
        "../envs/copa.yaml"
    script:
        "../scripts/plots.py"
