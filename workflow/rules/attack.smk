rule attack:
    """One attack on one image of the configured dataset: record.json, images.npz, reconstruction.png."""
    output:
        record="{out}/{model}/{attack}/{index}/record.json",
        images="{out}/{model}/{attack}/{index}/images.npz",
        png="{out}/{model}/{attack}/{index}/reconstruction.png",
    wildcard_constraints:
        index=r"\d+",
    params:
        dataset=config["dataset"],
        split=config["split"],
        preprocess=config.get("preprocess", "center"),
        seed=config.get("seed", 0),
        model_seed=config.get("model_seed", 0),
        label=config.get("label", "known"),
    threads: 1
    log:
        "{out}/logs/{model}/{attack}/{index}.log",
    script:
        "../scripts/attack.py"
