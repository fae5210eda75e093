"""Snakemake script of rule `plots`: copa.bench.plots on the leaderboard's tables."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir)))  # noqa: F821 (injected by Snakemake)
from _bootstrap import logged  # noqa: E402

sm = snakemake  # noqa: F821
with logged(sm.log[0]) as log:
    import pandas as pd

    from copa.bench import plots

    records = pd.read_csv(sm.input.records)
    board = pd.read_csv(sm.input.board)
    cap, headline = float(sm.params.psnr_cap), sm.params.headline
    for model, path in zip(sm.params.models, sm.output.grids):
        plots.reconstruction_grid(records, model, path, attacks=sm.params.attacks, headline=headline)
    plots.psnr_vs_security(board, sm.output.security, metric=sm.params.metric, psnr_cap=cap)
    plots.psnr_distribution(records, sm.output.distribution, attacks=sm.params.attacks, psnr_cap=cap, headline=headline)
    plots.time_vs_psnr(records, sm.output.time, attacks=sm.params.attacks, psnr_cap=cap, headline=headline)
    for path in sm.output.privacy:  # declared only when the config has defences
        plots.privacy_curves(records, path, models=sm.params.models, attacks=sm.params.attacks, psnr_cap=cap,
                             headline=headline)
    print("wrote", *sm.output, sep="\n", file=log)
