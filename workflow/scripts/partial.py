"""Snakemake script of rule `partial`: copa.bench.leaderboard.write_partial (records so far, marked partial)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir)))  # noqa: F821 (injected by Snakemake)
from _bootstrap import logged  # noqa: E402

sm = snakemake  # noqa: F821
with logged(sm.log[0]) as log:
    from copa.bench.leaderboard import write_partial

    counts = write_partial(sm.params.records_root, sm.params.security_root, outputs=dict(sm.output.items()),
                           models=sm.params.models, attacks=sm.params.attacks, defences=dict(sm.params.defences),
                           indices=[int(i) for i in sm.params.indices], title=sm.params.title,
                           metric=sm.params.metric, command=sm.config.get("_command"),
                           instances=dict(sm.params.instances), headline=sm.params.headline)
    print(f"{counts['cells_complete']} of {counts['cells']} cells complete, {counts['records']} of "
          f"{counts['records_expected']} records", file=log)
