"""Snakemake script of rule `leaderboard`: copa.bench.leaderboard.write_tables."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir)))  # noqa: F821 (injected by Snakemake)
from _bootstrap import logged  # noqa: E402

sm = snakemake  # noqa: F821
with logged(sm.log[0]) as log:
    import yaml

    from copa.io import atomic_write_text
    from copa.bench.leaderboard import write_tables
    from copa.bench.pipeline import batch_description, run_config_hash

    tables = {key: path for key, path in sm.output.items() if key != "run_config"}
    settings = sm.config.get("attack_settings") or {}
    overrides = "; ".join(f"{attack}: " + ", ".join(f"{k}={v}" for k, v in values.items())
                          for attack, values in settings.items() if values and attack in sm.params.attacks)
    extra = {"attack settings": (overrides + "; every other hyperparameter" if overrides else "every hyperparameter")
             + " at its published default (each record lists the full set)",
             "batch size": batch_description(sm.config, list(sm.params.attacks))}
    board = write_tables(sm.input.cells, sm.input.security, outputs=tables,
                         models=sm.params.models, attacks=sm.params.attacks, command=sm.config.get("_command"),
                         images_per_cell=sm.params.images_per_cell, title=sm.params.title, metric=sm.params.metric,
                         config_hash=run_config_hash(sm.config), extra=extra, defences=sm.params.defences,
                         headline=sm.params.headline)
    effective = {key: value for key, value in sm.config.items() if not key.startswith("_")}
    atomic_write_text(sm.output.run_config, "# the validated config of this run (defaults filled in)\n"
                      + yaml.safe_dump(effective, sort_keys=False, allow_unicode=True))
    print(board.to_string(), file=log)
