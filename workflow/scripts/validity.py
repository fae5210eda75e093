"""Snakemake script of rule `validity`: copa.bench.validity.write_study (the security metric on trial)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir)))  # noqa: F821 (injected by Snakemake)
from _bootstrap import logged  # noqa: E402

sm = snakemake  # noqa: F821
with logged(sm.log[0]) as log:
    from copa.bench.pipeline import run_config_hash
    from copa.bench.validity import write_study

    config = sm.config
    meta = {"command": config.get("_command") or "–", "config hash": run_config_hash(config),
            "dataset": f"{config['dataset']} ({config['split']})", "images per cell": str(len(config["indices"]))}
    written = write_study(sm.input.security, sm.input.board, Path(sm.output.report).parent, sm.params.settings,
                          meta=meta, attacks=sm.params.attacks, metric=sm.params.metric,
                          psnr_cap=float(sm.params.psnr_cap), title=sm.params.title + " — validity of the security metric",
                          headline=sm.params.headline)
    missing = sorted(set(map(str, sm.output)) - set(map(str, written.values())))
    if missing:  # the rule's outputs and the writer's files must agree
        raise RuntimeError(f"write_study did not write {missing}")
    print("wrote", *written.values(), sep="\n", file=log)
