from copa.bench.validity import candidate_scatters, studied_attacks

# the attacks the study orders: all but its floors (validity.floors: attacks that ignore the gradients)
STUDIED_ATTACKS = studied_attacks(ATTACKS, config.get("validity"))


localrules:
    validity,


rule validity:
    """The security metric on trial (config validity:): predictors from the security entries against the
    undefended leaderboard's mean PSNR / SSIM, rank correlations with bootstrap CIs, the held-out rule, the
    verdict and the scatter plots (copa.bench.validity.write_study)."""
    input:
        security=expand(security_path("{model}"), model=MODELS),
        board=rules.leaderboard.output.leaderboard_csv,
    output:
        architectures=f"{RESULTS}/validity/architectures.csv",
        predictors=f"{RESULTS}/validity/predictors.csv",
        held_out=f"{RESULTS}/validity/held_out.csv",
        report=report(f"{RESULTS}/validity/validity.md", caption="../report/validity.rst", category="Validity"),
        scatter=report(expand(f"{RESULTS}/validity/scatter_{{attack}}.png", attack=STUDIED_ATTACKS),
                       caption="../report/validity.rst", category="Validity"),
        scatter_best=report(f"{RESULTS}/validity/scatter_best.png", caption="../report/validity.rst",
                            category="Validity"),
        scatter_candidates=report(expand(f"{RESULTS}/validity/scatter_best_by_{{predictor}}.png",
                                         predictor=candidate_scatters((config.get("validity") or {}).get("predictors", []),
                                                                      config["plots"]["security_metric"])),
                                  caption="../report/validity.rst", category="Validity"),
    params:
        settings=config.get("validity"),
        attacks=ATTACKS,
        metric=config["plots"]["security_metric"],
        psnr_cap=config["plots"]["psnr_cap"],
        headline=HEADLINE,
        title=config["title"],
    log:
        f"{OUT}/logs/validity.log",
    conda:
        "../envs/copa.yaml"
    script:
        "../scripts/validity.py"
