"""The metric-validity study's layer-wise attacks against the mean-image floor and Inverting Gradients, before and
after the floor check (issue 34; results/metric-validity/README.md).

Reads two ``records.csv`` of the study (e.g. the published one at an earlier commit and the rerun) and the
study's ``validity/architectures.csv`` (which chains are rank-deficient), computes the floor — the mean image's
PSNR, constant grey 0.5, on each of the study's images, from the dataset — and prints, per attack and run: on how
many of the 81 architectures the mean PSNR over the images is below the floor's mean (and below 10 dB), the
lowest, and on how many of the deficient chains COPA-GM's (and COPA's) mean PSNR is ≥ Inverting Gradients'; then
the chains that changed for copa / copa-gm and the paper chains side by side.

    git show 8bf53b3:results/metric-validity/records.csv > /tmp/before.csv   # or any earlier commit's
    python benchmarks/floor_check_study.py --before /tmp/before.csv --after results/metric-validity/records.csv
"""

from __future__ import annotations

import argparse

import numpy as np
import pandas as pd

PAPER_CHAINS = ("cnn2_c1", "cnn2_c2", "cnn3_c2", "cnn4_c1", "cnn4_c2")


def floor_psnr(dataset: str, split: str, indices) -> dict[int, float]:
    """The mean image's PSNR (every pixel 0.5, peak 1) on each image of an ``npz:`` dataset."""
    path = dataset.removeprefix("npz:")
    images = np.load(path)[f"{split}_images"]
    out = {}
    for index in indices:
        image = images[index].astype(np.float64)
        image = image / 255.0 if image.max() > 1.5 else image
        out[int(index)] = float(10 * np.log10(1.0 / np.mean((image - 0.5) ** 2)))
    return out


def mean_psnr(records: pd.DataFrame) -> pd.DataFrame:
    """Mean PSNR over the images, one row per model, one column per attack (ok records only)."""
    ok = records[records["status"] == "ok"]
    return ok.pivot_table(index="model", columns="attack", values="psnr", aggfunc="mean")


def summary(table: pd.DataFrame, floor: float, deficient: list[str]) -> list[str]:
    lines = []
    for attack in [a for a in ("rgap", "copa", "copa-gm", "ig") if a in table.columns]:
        column = table[attack]
        lines.append(f"{attack}: below the floor ({floor:.2f} dB) on {(column < floor).sum()} of "
                     f"{column.notna().sum()}, below 10 dB on {(column < 10).sum()}, lowest {column.min():.2f} dB ({column.idxmin()})")
    if "ig" in table.columns:
        part = table.loc[[m for m in deficient if m in table.index]]
        for attack in ("copa", "copa-gm"):
            if attack in part.columns:
                lines.append(f"{attack} ≥ ig on {(part[attack] >= part['ig']).sum()} of {len(part)} deficient chains")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", required=True, help="records.csv of the earlier run")
    parser.add_argument("--after", required=True, help="records.csv of the rerun")
    parser.add_argument("--architectures", default="results/metric-validity/validity/architectures.csv")
    args = parser.parse_args()
    before, after = pd.read_csv(args.before), pd.read_csv(args.after)
    first = after.iloc[0]
    floors = floor_psnr(first["dataset"], first["split"], sorted(after["index"].astype(int).unique()))
    floor = float(np.mean(list(floors.values())))
    arch = pd.read_csv(args.architectures)
    deficient = arch.loc[arch["any_deficient"].astype(str).str.lower() == "true", "model"].tolist()
    print("floor per image:", ", ".join(f"{i}: {v:.2f}" for i, v in floors.items()), f"(mean {floor:.2f} dB)")
    tables = {"before": mean_psnr(before), "after": mean_psnr(after)}
    for name, table in tables.items():
        print(f"\n{name}:")
        print("\n".join("  " + line for line in summary(table, floor, deficient)))
    joined = tables["before"].add_suffix(" before").join(tables["after"].add_suffix(" after"))
    changed = joined[[any(abs(joined.at[m, f"{a} after"] - joined.at[m, f"{a} before"]) > 1e-6
                          for a in ("copa", "copa-gm")) for m in joined.index]]
    columns = [f"{a} {w}" for a in ("copa", "copa-gm") for w in ("before", "after")] + ["ig after"]
    print(f"\nchains where copa or copa-gm changed ({len(changed)}):")
    print(changed[columns].round(2).to_markdown())
    print("\npaper chains:")
    print(joined.loc[[m for m in PAPER_CHAINS if m in joined.index], columns].round(2).to_markdown())


if __name__ == "__main__":
    main()
