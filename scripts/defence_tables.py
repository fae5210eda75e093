"""Print docs/defences.md's per-model tables (mean PSNR dB / mean SSIM of each attack under each defence) from a
results folder's ``records.csv``, so the numbers in the docs are the records' and the command is written beside them.

Rows are the defences in the order of the records, columns the attacks of the model (the mean-image floor, which
ignores the update, is named in each table's heading instead); a cell is the mean over the cell's ``ok`` records.

    python scripts/defence_tables.py results/defences/records.csv
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import pandas as pd

#: columns in the order the docs read them (the layer-wise attacks, then the gradient-matching ones)
ATTACK_ORDER = ("rgap", "copa", "copa-gm", "dlg", "idlg", "ig", "hybrid")


def short_defence_name(spec: str) -> str:
    """The docs' short name of a defence spec (the tables' rows; copa.bench.record.defence_label is the canonical chain).

    >>> short_defence_name("dp-gaussian:clip=1.0,delta=1e-05,sample_rate=0.01,sigma=0.001,steps=1")
    'dp σ=0.001'
    >>> short_defence_name("quantize:bits=4,rounding='deterministic'")
    'quantize:bits=4'
    >>> short_defence_name("prune:p=0.9")
    'prune:p=0.9'
    """
    if spec.startswith("dp-gaussian:"):
        return f"dp σ={re.search(r'sigma=([^,]+)', spec).group(1)}"
    if spec.startswith("quantize:"):
        return f"quantize:bits={re.search(r'bits=([0-9]+)', spec).group(1)}"
    return spec


def tables(records: pd.DataFrame) -> str:
    ok = records[records["status"] == "ok"]
    floor = ok[ok["attack"] == "mean-image"]
    floor_text = f"floor {floor['psnr'].mean():.2f} dB / {floor['ssim'].mean():.3f}" if len(floor) else "no floor"
    blocks = []
    for model in dict.fromkeys(records["model"]):
        cells = ok[(ok["model"] == model) & (ok["attack"] != "mean-image")]
        attacks = [a for a in ATTACK_ORDER if a in set(cells["attack"])]
        attacks += sorted(set(cells["attack"]) - set(attacks))
        images = cells.groupby(["defence", "attack"]).size().max()
        means = cells.groupby(["defence", "attack"])[["psnr", "ssim"]].mean()
        lines = [f"**{model}** (mean PSNR dB / mean SSIM over {images} images; {floor_text})", "",
                 "| defence | " + " | ".join(attacks) + " |", "|---" * (len(attacks) + 1) + "|"]
        for defence in dict.fromkeys(records.loc[records["model"] == model, "defence"]):
            row = [f"{means.loc[(defence, a), 'psnr']:.2f} / {means.loc[(defence, a), 'ssim']:.2f}"
                   if (defence, a) in means.index else "–" for a in attacks]
            lines.append(f"| {short_defence_name(defence)} | " + " | ".join(row) + " |")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("records", type=Path, help="a results folder's records.csv")
    args = parser.parse_args(argv)
    if not args.records.is_file():
        print(f"records={str(args.records)!r} is not a file: expected a results folder's records.csv",
              file=sys.stderr)
        return 2
    sys.stdout.write(tables(pd.read_csv(args.records)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
