rule security:
    """COPA security metric of one architecture (JSON); non-chains get status not-applicable and the reason."""
    output:
        f"{OUT}/{TAG}/security/{{model}}.json",
    params:
        run=lambda wildcards: {**scenario_params(), "security": config["security"]},
    group:
        "security"
    threads: config["threads"]
    resources:
        runtime=SECURITY_MINUTES,
        mem_mb=SECURITY_MEM_MB,
    log:
        f"{OUT}/logs/{TAG}/security/{{model}}.log",
    conda:
        "../envs/copa.yaml"
    script:
        "../scripts/security.py"
