"""Snakemake script of rule `train`: copa.bench.pipeline.train_checkpoint (a trained model of the models axis)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir)))  # noqa: F821 (injected by Snakemake)
from _bootstrap import logged  # noqa: E402

sm = snakemake  # noqa: F821
with logged(sm.log[0]) as log:
    from copa.bench import set_threads
    from copa.bench.pipeline import train_checkpoint
    from copa.bench.terminal import JobTerminal

    set_threads(sm.threads)
    with JobTerminal(f"train {sm.wildcards.architecture}@epoch{sm.wildcards.epoch}").watching():  # heartbeat
        train_checkpoint(sm.params.run, sm.wildcards.architecture, int(sm.wildcards.epoch),
                         out_dir=Path(sm.output.checkpoint).parent, log=lambda line: print(line, file=log, flush=True))
