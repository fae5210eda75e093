"""Is the COPA security metric valid? Rank correlations of architecture predictors with leakage.

The library of the population study (issue "The security metric on trial"): pure functions over pandas
frames and numpy arrays, no I/O — except :func:`write_study`, the workflow's rule ``validity``, which reads
the security entries and the leaderboard and writes the study's files. The study attacks many architectures — the seeded random chains
``random-chain:SEED`` of :func:`copa.models.random_chain_spec` and the paper's chains — and asks whether
the security report predicts how much the best attack recovers.

* :func:`predictors_from_security` — the predictors of one architecture from its security report
  (``SecurityReport.to_dict()``); :data:`PREDICTORS` lists them.
* :func:`architecture_table` — one row per architecture: its predictors, the mean PSNR and SSIM of every
  attack (``psnr:ATTACK``, ``ssim:ATTACK``) and the best attack (``best_psnr`` = the largest mean PSNR
  over the attacks, ``best_ssim`` = that attack's mean SSIM, ``best_attack``). PSNR stands for the headline
  metric (:data:`copa.metrics.DEFAULT_HEADLINE_METRIC`, or the config's ``headline_metric``; the best is the
  smallest for a metric where lower is better), SSIM for the other metrics the study's outcomes name
  (:func:`study_metrics`); the metric registry gives their labels, units and directions.
* :func:`correlation` / :func:`correlation_table` / :func:`validity_tables` — Spearman ρ and Kendall τ-b
  with bootstrap confidence intervals over architectures and Holm-adjusted p-values, for all
  architectures and for the rank-deficient ones alone.
* :func:`held_out_split` / :func:`held_out_evaluation` — fit a rule (choose a predictor, a threshold for
  "leaks") on half A of the random chains only, report it on half B and on the paper chains.
* :func:`verdict` — the verdict paragraph, generated from the numbers by :data:`VERDICT_RULES`;
  :func:`write_study` — architectures.csv, predictors.csv, held_out.csv, validity.md and the scatter plots
  (:func:`copa.bench.plots.validity_scatter`); :func:`rebuild_study` — the same files from a published
  architectures.csv alone (``python -m copa.bench.validity``, :func:`main`: no attack, no security report).

The rooms, one concept each (every public name is ``copa.bench.validity.NAME``): ``predictors`` (the predictors
and the architecture table), ``statistics`` (rank correlations, bootstrap intervals, Holm, the partial
correlation; its docstring states the statistics), ``held_out`` (the split and the fitted rules), ``verdict``
(the verdict's rules and paragraph), ``report`` (validity.md), ``study`` (the files: :func:`write_study`,
:func:`rebuild_study`) and ``command`` (``python -m copa.bench.validity``).
"""

from __future__ import annotations

# every public name of the rooms, as copa.bench.validity.NAME
from .predictors import (
    PREDICTORS,
    TRIVIAL_PREDICTORS,
    architecture_table,
    best_outcome,
    outcome_metric,
    predictors_from_security,
    studied_attacks,
    study_floors,
    study_metrics,
)
from .statistics import (
    PARTIAL,
    STATISTICS,
    correlation,
    correlation_table,
    CorrelationResult,
    holm,
    kendall_tau_b,
    partial_correlation,
    partial_spearman_rho,
    spearman_rho,
    validity_tables,
)
from .held_out import (
    HELD_OUT_CANDIDATES,
    candidate_scatters,
    choose_predictor,
    fit_threshold,
    FittedRule,
    held_out_evaluation,
    held_out_split,
    HeldOutSplit,
)
from .verdict import (
    ALPHA,
    BEYOND_WORDS,
    EXPECTED_SIGN,
    VERDICT_RULES,
    expected_sign,
    format_number,
    outcome_words,
    verdict,
    verdict_rules,
)
from .report import study_markdown
from .study import (
    STUDY_INPUT_COLUMNS,
    STUDY_TABLES,
    rebuild_study,
    study_table,
    tie_exact_recoveries,
    write_study,
)
from .command import RUN_FACTS_KEPT, main, published_run_facts

__all__ = ["EXPECTED_SIGN", "HELD_OUT_CANDIDATES", "PARTIAL", "PREDICTORS", "STATISTICS", "TRIVIAL_PREDICTORS",
           "VERDICT_RULES", "CorrelationResult", "FittedRule", "HeldOutSplit", "architecture_table",
           "choose_predictor", "correlation", "correlation_table", "fit_threshold", "held_out_evaluation",
           "held_out_split", "holm", "kendall_tau_b", "partial_correlation", "partial_spearman_rho",
           "predictors_from_security", "published_run_facts", "rebuild_study", "spearman_rho", "study_markdown",
           "study_metrics", "study_table", "tie_exact_recoveries", "validity_tables", "verdict", "verdict_rules",
           "write_study"]
