"""Snakemake script for rule `attack`: a thin wrapper over copa.bench."""

import sys
from pathlib import Path

from copa.bench import run_attack, summary_line, write_outputs
from copa.threat import Scenario

snakemake = globals()["snakemake"]  # injected by Snakemake
p, w = snakemake.params, snakemake.wildcards

with open(snakemake.log[0], "w") as log:
    sys.stderr = log
    scenario = Scenario(model=w.model, dataset=p.dataset, split=p.split, indices=(int(w.index),),
                        model_seed=p.model_seed, label_known=p.label == "known", preprocess=p.preprocess)
    record, reconstruction, truth = run_attack(scenario, w.attack, seed=p.seed, threads=snakemake.threads)
    write_outputs(Path(snakemake.output.record).parent, record, reconstruction, truth)
    print(summary_line(record), file=log)
