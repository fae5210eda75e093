"""Snakemake script of rule `cell`: copa.bench.pipeline.run_cell (one record per image, resumable)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir)))  # noqa: F821 (injected by Snakemake)
from _bootstrap import logged  # noqa: E402

sm = snakemake  # noqa: F821
with logged(sm.log[0]) as log:
    from copa.attacks import progress
    from copa.bench.pipeline import run_cell
    from copa.bench.setting import Setting
    from copa.bench.terminal import JobTerminal

    terminal = JobTerminal(f"cell {sm.wildcards.defence}/{sm.wildcards.model}/{sm.wildcards.attack}")

    def say(line):
        """A finished (or kept) record: in the cell's log and on the terminal."""
        print(line, file=log, flush=True)
        terminal.say(line)

    # the attack's progress (stage, step/total, its loss, ETA) per stage and every 30 s: in the cell's log and,
    # tagged with the cell, on the terminal; a heartbeat there after 30 silent seconds
    with terminal.watching(), progress.reporting("log", sm.wildcards.attack, stream=terminal.tee(log)):
        run_cell(sm.params.run, sm.wildcards.model, sm.wildcards.attack, records_dir=sm.params.records,
                 summary=sm.output[0], threads=sm.threads, log=say,
                 setting=Setting.from_params(sm.params.setting), checkpoint=(sm.input.checkpoint or [None])[0])
