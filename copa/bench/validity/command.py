"""``python -m copa.bench.validity ARCHITECTURES_CSV --config RUN_CONFIG --out DIR``: the study again from a
published architectures.csv (:func:`main`)."""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

from ...errors import CopaError
from ...io import read_yaml_mapping
from ...metrics import DEFAULT_HEADLINE_METRIC, metric_info
from .predictors import study_metrics
from .study import rebuild_study


def published_run_facts(validity_md: str | Path) -> dict[str, str]:
    """The header facts (``- **key**: value``) of a published validity.md, without ``design``; those of a rebuilt
    one (keys ``run's KEY``) are read back as ``KEY``, so a rebuild of a rebuild names the same run."""
    facts: dict[str, str] = {}
    for line in Path(validity_md).read_text(encoding="utf-8").splitlines():
        if line.startswith("## "):
            break
        if line.startswith("- **") and "**: " in line:
            key, value = line[4:].split("**: ", 1)
            facts[key] = value.strip().strip("`")
    rebuilt = {k[len("run's "):]: v for k, v in facts.items() if k.startswith("run's ")}
    if rebuilt:  # the run's own facts, and those a rebuild copies unchanged
        rebuilt.update({k: facts[k] for k in RUN_FACTS_KEPT if k in facts})
    return {k: v for k, v in (rebuilt or facts).items() if k not in ("design", "input")}


RUN_FACTS_KEPT = ("config hash", "images per cell", "dataset")
"""Header facts of the run that a rebuilt validity.md states as they were (the others, e.g. commit, device and
date, are the rebuild's, and the run's appear as ``run's KEY``)."""


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m copa.bench.validity ARCHITECTURES_CSV --config RUN_CONFIG --out DIR``: :func:`rebuild_study` with
    the run's validated config (its ``validity``, ``attacks``, ``plots``, ``headline_metric`` and ``title``) and the facts of the
    validity.md beside the input (:func:`published_run_facts`) carried into the header as ``run's KEY``."""
    parser = argparse.ArgumentParser(prog="python -m copa.bench.validity",
                                     description="rebuild the security metric's validity study from a published "
                                                 "architectures.csv (no attack, no security report)")
    parser.add_argument("architectures", type=Path, help="a published validity/architectures.csv")
    parser.add_argument("--config", type=Path, required=True, help="the run's validated config (RESULTS/config.yaml)")
    parser.add_argument("--out", type=Path, required=True, help="where to write the study's files")
    args = parser.parse_args(argv)
    try:
        config = read_yaml_mapping(args.config, what="--config", expected="the config.yaml of the study's run")
    except CopaError as exc:
        parser.error(str(exc))
    missing = [key for key in ("validity", "attacks", "title") if key not in config]
    if missing or not isinstance(config.get("validity"), dict) or "outcomes" not in config["validity"]:
        parser.error(f"--config {str(args.config)!r} lacks {', '.join(missing) or 'validity.outcomes'}: accepted is the "
                     f"validated config.yaml of a metric-validity run (results/metric-validity/config.yaml)")
    if not args.architectures.is_file():
        parser.error(f"{str(args.architectures)!r} does not exist: expected a published validity/architectures.csv")
    beside = args.architectures.parent / "validity.md"
    run = published_run_facts(beside) if beside.is_file() else {}
    command = shlex.join(["python", "-m", "copa.bench.validity", *(sys.argv[1:] if argv is None else argv)])
    headline = config.get("headline_metric") or DEFAULT_HEADLINE_METRIC
    labels = " / ".join(metric_info(m).label for m in study_metrics(config["validity"]["outcomes"], headline))
    meta = {"command": command, **{key: run[key] for key in RUN_FACTS_KEPT if key in run},
            "input": f"{args.architectures} (the run's predictors and mean {labels} per attack; statistics "
                     "recomputed, no attack or security report rerun)",
            **{f"run's {key}": value for key, value in run.items() if key not in RUN_FACTS_KEPT}}
    plots_section = config.get("plots") or {}
    written = rebuild_study(args.architectures, args.out, config["validity"], meta=meta, attacks=config["attacks"],
                            metric=plots_section.get("security_metric", "normalised_score"),
                            psnr_cap=float(plots_section.get("psnr_cap", 100.0)),
                            title=config["title"] + " — validity of the security metric", headline=headline)
    print("wrote", *written.values(), sep="\n")
    return 0
