"""Snakemake script of rule `cell`: copa.bench.pipeline.run_cell (one record per image, resumable)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir)))  # noqa: F821 (injected by Snakemake)
from _bootstrap import logged  # noqa: E402

with logged(snakemake.log[0]) as log:  # noqa: F821
    from copa.attacks import progress
    from copa.bench.pipeline import run_cell
    from copa.bench.setting import Setting

    sm = snakemake  # noqa: F821
    # the attack's progress (stage, step/total, its loss, ETA) in the cell's log: per stage and every 30 s
    with progress.reporting("log", sm.wildcards.attack, stream=log):
        run_cell(sm.params.run, sm.wildcards.model, sm.wildcards.attack, records_dir=sm.params.records,
                 summary=sm.output[0], threads=sm.threads, log=lambda line: print(line, file=log, flush=True),
                 setting=Setting.from_params(sm.params.setting), checkpoint=(sm.input.checkpoint or [None])[0])
