"""The bench wing: running attacks on scenarios, their records, the workflow's logic, leaderboards and plots.

Modules: :mod:`.run` (build a scenario, run an attack on its observation, score it — the only place
where an observation and its ground truth meet), :mod:`.record` (the record's single owner: version,
keys, matching, reading), :mod:`.outputs` (record.json, images.npz, reconstruction.png, atomically),
:mod:`.pipeline` (the Snakemake workflow's logic: config checks, cells with resumption, security entries),
:mod:`.leaderboard` (tables) and :mod:`.plots`.
"""

from __future__ import annotations

from ..provenance import device_description, git_commit, package_versions
from .run import (
    RunFailure,
    attack_observation,
    attack_observations,
    run_attack,
    run_attacks,
    set_threads,
)
from .record import RECORD_VERSION, config_hash, summary_line
from .outputs import write_outputs

__all__ = ["RECORD_VERSION", "RunFailure", "attack_observation", "attack_observations", "config_hash",
           "device_description", "git_commit", "package_versions", "run_attack", "run_attacks", "set_threads",
           "summary_line", "write_outputs"]
