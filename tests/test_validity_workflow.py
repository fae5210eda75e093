"""The population study as a workflow: copa.bench.validity.write_study on synthetic security entries and a
synthetic leaderboard, the verdict's rules, the label placement of its scatter plots, and the Snakemake
side (config/metric-validity.yaml dry run, a bad predictor name)."""

from __future__ import annotations

import itertools
import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from copa.bench.validity import (
    PREDICTORS,
    STATISTICS,
    held_out_split,
    published_run_facts,
    rebuild_study,
    validity_tables,
    verdict,
    write_study,
)
from copa.errors import InvalidSpecError

ROOT = Path(__file__).resolve().parents[1]
SNAKEMAKE = shutil.which("snakemake", path=str(Path(sys.executable).parent)) or shutil.which("snakemake")
CIFAR_NPZ = ROOT.parent / "shared" / "data" / "cifar10_subset.npz"
needs_snakemake = pytest.mark.skipif(SNAKEMAKE is None, reason="snakemake not installed")
needs_cifar = pytest.mark.skipif(not CIFAR_NPZ.is_file(), reason=f"shared data not present: {CIFAR_NPZ}")

RANDOM = [f"random-chain:{seed}" for seed in range(8)]  # even seeds rank-deficient, odd full-rank
PAPER = {"cnn2_c1": 0, "cnn2_c2": 120, "cnn3_c1": 0, "cnn4_c1": 900}  # undetermined dimensions of the image layer
ATTACKS = ["rgap", "copa"]
SETTINGS = {"predictors": ["copa_index", "normalised_score", "any_deficient", "depth", "propagated_image_fraction"],
            "outcomes": ["best_psnr", "best_ssim", "psnr:rgap", "psnr:copa"], "seed": 0, "n_resamples": 199,
            "leak_threshold": 20.0}


def _report(free: int) -> dict:
    """A SecurityReport.to_dict() of a 2-conv chain whose image layer leaves ``free`` of 3072 dimensions."""
    layer = {"padding_rows": 0, "condition_number": 10.0 + free}
    return {"copa_index": -free, "normalised_score": free / 3072, "layers": [
        {**layer, "kind": "conv", "unknowns": 3072, "deficiency": -free, "forward_rows": 2000, "gradient_rows": 27,
         "forward_rank": 1500},
        {**layer, "kind": "conv", "unknowns": 1000, "deficiency": 0, "forward_rows": 1200, "gradient_rows": 36,
         "forward_rank": 900},
        {**layer, "kind": "fc", "unknowns": 400, "deficiency": 0, "forward_rows": 10, "gradient_rows": 4000}]}


def _frees() -> dict[str, int]:
    deficient = iter([40, 300, 700, 1500])
    return {**{m: (next(deficient) if seed % 2 == 0 else 0) for seed, m in enumerate(RANDOM)}, **PAPER}


def _psnr(free: int, attack: str) -> float:
    """Exact recovery (inf / 140 dB) on full-rank chains; below, falling with the undetermined dimensions."""
    if free == 0:
        return math.inf if attack == "rgap" else 140.0
    return 40.0 - 8.0 * math.log10(free) - (2.0 if attack == "rgap" else 0.0)


@pytest.fixture
def study_inputs(tmp_path):
    security = []
    provenance = {"dataset": "sample", "git_commit": "abc123", "device": "cpu: x86_64, 1 threads",
                  "versions": {"python": "3.11", "torch": "2.4"}}
    for model, free in _frees().items():
        entry = {"model": model, "status": "ok", "reason": None, "copa_index": -free,
                 "normalised_score": free / 3072, "report": _report(free), **provenance}
        security.append(entry)
    security.append({"model": "lenet-zhu", "status": "not-applicable", "copa_index": None, "normalised_score": None,
                     "reason": "not applicable: lenet-zhu is not a chain: it uses sigmoid", **provenance})
    paths = []
    for entry in security:
        path = tmp_path / "security" / f"{entry['model']}.json"
        path.parent.mkdir(exist_ok=True)
        path.write_text(json.dumps(entry))
        paths.append(path)
    rows = []
    for (model, free), attack, defence in itertools.product(_frees().items(), ATTACKS, ["none", "prune:p=0.9"]):
        psnr = _psnr(free, attack) if defence == "none" else 5.0  # the defended rows must not enter the study
        rows.append({"defence": defence, "model": model, "attack": attack, "ok": 4, "psnr_mean": psnr,
                     "ssim_mean": min(1.0, psnr / 60) if math.isfinite(psnr) else 1.0})
    rows += [{"defence": "none", "model": "lenet-zhu", "attack": a, "ok": 0, "psnr_mean": math.nan,
              "ssim_mean": math.nan} for a in ATTACKS]
    board = tmp_path / "leaderboard.csv"
    pd.DataFrame(rows).to_csv(board, index=False)
    return paths, board


def test_write_study_writes_every_file_with_its_columns_and_the_verdict(study_inputs, tmp_path):
    security, board = study_inputs
    out = tmp_path / "validity"
    written = write_study(security, board, out, SETTINGS, attacks=ATTACKS,
                          meta={"command": "snakemake --cores 2", "config hash": "f00d"})
    names = {"architectures.csv", "predictors.csv", "held_out.csv", "validity.md", "scatter_rgap.png",
             "scatter_copa.png", "scatter_best.png", "scatter_best_by_copa_index.png",
             "scatter_best_by_propagated_image_fraction.png"}
    assert set(written) == names and all((out / n).is_file() and (out / n).stat().st_size for n in names)
    assert not list(out.glob(".*.tmp*"))  # atomic writes leave no temporary file

    arch = pd.read_csv(out / "architectures.csv")
    assert {"model", "held_out", *PREDICTORS, "psnr:rgap", "psnr:copa", "ssim:rgap", "best_attack", "best_psnr",
            "best_ssim", "status", "reason", "leaks", "predicted_leaks"} <= set(arch.columns)
    assert len(arch) == 13 and set(arch["model"]) == {*RANDOM, *PAPER, "lenet-zhu"}
    lenet = arch.set_index("model").loc["lenet-zhu"]
    assert lenet["status"] == "excluded" and "not a chain" in lenet["reason"]
    study = arch[arch["status"] == "ok"].set_index("model")
    assert len(study) == 12 and (study["psnr:copa"] > 5).all()  # undefended rows only
    assert study.loc["random-chain:1", "best_attack"] == "rgap" and study.loc["random-chain:1", "best_psnr"] == math.inf
    split = held_out_split(study.index, seed=0)
    assert {m: h for m, h in study["held_out"].items()} == {m: s for s, ms in split.subsets().items() for m in ms}

    predictors = pd.read_csv(out / "predictors.csv")
    stats = [f"{s}_{c}" for s, name in STATISTICS.items() for c in (name, "ci_low", "ci_high", "p", "p_holm")]
    assert {"subset", "predictor", "outcome", "n", *stats} <= set(predictors.columns)
    assert len(predictors) == 2 * len(SETTINGS["predictors"]) * len(SETTINGS["outcomes"])
    assert set(predictors["subset"]) == {"all", "deficient"}
    assert predictors.set_index(["subset", "predictor", "outcome"]).loc[("all", "normalised_score", "best_psnr"),
                                                                        "n"] == 12

    held = pd.read_csv(out / "held_out.csv")
    candidates = ["copa_index", "normalised_score", "propagated_image_fraction"]  # every one reported, losers too
    baselines = ["any_deficient"]  # the trivial predictor among SETTINGS' (total_deficiency is not one of them)
    assert list(held["predictor"]) == [c for c in [*candidates, *baselines] for _ in range(3)]
    assert list(held["role"]) == ["candidate"] * 9 + ["trivial baseline"] * 3
    assert list(held["subset"]) == ["A (fit)", "B (held out)", "paper"] * 4
    full_rank_rule = held[held["predictor"] == "any_deficient"].iloc[0]
    assert (full_rank_rule["sign"], full_rank_rule["threshold"], full_rank_rule["chosen"]) == (-1, 0.5, False)
    assert {"n", "spearman_rho", "spearman_ci_low", "spearman_ci_high", "kendall_tau", "balanced_accuracy",
            "accuracy", "leaks", "rule", "predictor", "chosen", "threshold", "leak_threshold"} <= set(held.columns)
    assert held["chosen"].sum() == 3 and held.loc[held["chosen"], "predictor"].nunique() == 1
    assert (held["leak_threshold"] == 20).all()
    fraction = arch.set_index("model")["propagated_image_fraction"]
    assert fraction["random-chain:2"] == pytest.approx(300 / 3072) and fraction["random-chain:1"] == 0.0

    md = (out / "validity.md").read_text()
    first = md.split("\n\n")[1]  # the paragraph after the title
    assert first.startswith("The normalised security score predicts leakage over all architectures (ρ = -")
    assert "95 % CI [" in first and "among the rank-deficient architectures" in first and "half B" in first
    assert "Candidates compared on half A by |ρ| with best_psnr: copa_index" in first
    assert "propagated_image_fraction" in first.split("half A chose")[1]
    assert "Beside the trivial predictors over all architectures, with best_psnr: any_deficient ρ = -" in first
    assert "What normalised_score adds beyond the full-rank split (Spearman partial ρ given any_deficient" in first
    assert "with psnr:rgap " in first and "with psnr:copa " in first
    assert "the trivial any_deficient (leaks when ≤ 0.5)" in first
    every = predictors[predictors["subset"] == "all"]
    assert (every["partial_given"] == "any_deficient").all() and every["partial_rho"].notna().any()
    assert predictors.loc[predictors["subset"] == "deficient", "partial_rho"].isna().all()
    assert "## Beside the trivial predictors" in md and "any_deficient (trivial)" in md
    for text in ("**command**: `snakemake --cores 2`", "**commit**: `abc123`", "**config hash**: `f00d`",
                 "## How the verdict is decided", "## Rank correlations: all architectures",
                 "## Rank correlations: rank-deficient architectures", "## Held-out evaluation",
                 "lenet-zhu (not applicable: lenet-zhu is not a chain"):
        assert text in md, text


def _correlations(all_row, deficient_row):
    """validity_tables' frame for one (predictor, outcome) with the given (ρ, CI low, CI high, Holm p, n)."""
    rows = []
    for subset, (rho, low, high, p, n) in (("all", all_row), ("deficient", deficient_row)):
        rows.append({"subset": subset, "predictor": "copa_index", "outcome": "best_psnr", "n": n, "spearman_rho": rho,
                     "spearman_ci_low": low, "spearman_ci_high": high, "spearman_p": p, "spearman_p_holm": p})
    return pd.DataFrame(rows)


@pytest.mark.parametrize("all_row, deficient_row, expected", [
    ((0.62, 0.45, 0.75, 1e-6, 79), (0.10, -0.2, 0.38, 0.9, 40),
     ("The COPA index predicts leakage over all architectures (ρ = 0.62, 95 % CI [0.45, 0.75], Holm p = 1.0e-06, "
      "n = 79) but does not rank leakage among the rank-deficient architectures (ρ = 0.10, 95 % CI [-0.20, 0.38], "
      "Holm p = 0.900, n = 40: the CI includes 0)")),
    ((0.62, 0.45, 0.75, 1e-6, 79), (0.5, 0.2, 0.7, 0.001, 40),
     ("over all architectures (ρ = 0.62, 95 % CI [0.45, 0.75], Holm p = 1.0e-06, n = 79) and ranks leakage "
      "among the rank-deficient architectures")),
    ((-0.4, -0.6, -0.2, 0.001, 79), (0.3, 0.05, 0.5, 0.2, 40),
     "predicts leakage over all architectures in the wrong direction"),
    ((-0.4, -0.6, -0.2, 0.001, 79), (0.3, 0.05, 0.5, 0.2, 40), "gives only weak evidence that it ranks leakage"),
    ((math.nan,) * 3 + (math.nan, 2), (math.nan,) * 3 + (math.nan, 2), "cannot be judged over all architectures"),
])
def test_verdict_follows_its_rules(all_row, deficient_row, expected):
    text = verdict(_correlations(all_row, deficient_row), None, None, predictor="copa_index", outcome="best_psnr",
                   leak_threshold=20)
    assert expected in text


def test_place_labels_never_overlap_and_stay_inside_the_axes():
    from matplotlib.text import Text

    from copa.bench.plots import _figure, place_labels

    rng = np.random.default_rng(0)
    xs = np.concatenate([rng.uniform(0, 1, 60), np.zeros(20)])  # a crowd and a column at x = 0
    ys = np.concatenate([rng.uniform(10, 40, 60), np.linspace(90, 100, 20)])
    labels = [f"rc{i}" if i % 3 else f"cnn{i}_c1" for i in range(len(xs))]
    fig = _figure(9.5, 6.5)
    ax = fig.subplots()
    ax.scatter(xs, ys, s=22)
    texts = place_labels(ax, xs, ys, labels)
    fig.canvas.draw()  # as saved
    renderer = fig.canvas.get_renderer()
    frame = ax.get_window_extent(renderer)
    boxes = [Text.get_window_extent(t, renderer) for t in texts]  # the text only, not its leader line
    assert [t.get_text() for t in texts] == labels
    for a, b in itertools.combinations(boxes, 2):
        assert not a.overlaps(b) or min(a.x1, b.x1) - max(a.x0, b.x0) <= 0.5 or min(a.y1, b.y1) - max(a.y0, b.y0) <= 0.5
    assert all(frame.x0 <= b.x0 and b.x1 <= frame.x1 and frame.y0 <= b.y0 and b.y1 <= frame.y1 for b in boxes)
    points = ax.transData.transform(np.column_stack([xs, ys]))
    for b in boxes:  # no label covers a point's centre
        assert not np.any((points[:, 0] > b.x0) & (points[:, 0] < b.x1) & (points[:, 1] > b.y0) & (points[:, 1] < b.y1))


def test_validity_tables_of_the_writer_equal_the_library_on_the_study_rows(study_inputs, tmp_path):
    security, board = study_inputs
    write_study(security, board, tmp_path / "v", SETTINGS, attacks=ATTACKS)
    arch = pd.read_csv(tmp_path / "v" / "architectures.csv")
    study = arch[arch["status"] == "ok"].reset_index(drop=True)
    expected = validity_tables(study, SETTINGS["predictors"], SETTINGS["outcomes"], n_resamples=199, random_state=0)
    got = pd.read_csv(tmp_path / "v" / "predictors.csv")
    pd.testing.assert_frame_equal(got[["subset", "predictor", "outcome", "n", "spearman_rho", "spearman_ci_low"]],
                                  expected[["subset", "predictor", "outcome", "n", "spearman_rho", "spearman_ci_low"]],
                                  check_dtype=False)


def test_rebuild_from_architectures_csv_reproduces_the_study(study_inputs, tmp_path):
    """rebuild_study reads back what write_study wrote (no security entry, no leaderboard) and gets the same
    tables; the CLI carries the run's facts into the header as "run's KEY"."""
    security, board = study_inputs
    settings = {**SETTINGS, "predictors": [*SETTINGS["predictors"], "total_deficiency"], "exact_psnr": 60.0}
    write_study(security, board, tmp_path / "run", settings, attacks=ATTACKS,
                meta={"command": "snakemake --cores 2", "config hash": "f00d", "images per cell": "4"})
    rebuild_study(tmp_path / "run" / "architectures.csv", tmp_path / "again", settings, attacks=ATTACKS)
    for name in ("architectures.csv", "predictors.csv", "held_out.csv"):
        pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "again" / name), pd.read_csv(tmp_path / "run" / name))
    text = (tmp_path / "again" / "validity.md").read_text()
    assert text.split("\n\n")[1] == (tmp_path / "run" / "validity.md").read_text().split("\n\n")[1]  # the verdict
    assert "total_deficiency's partial ρ, for comparison" in text.split("\n\n")[1]
    older = tmp_path / "older.csv"  # a file from before a predictor existed: rebuild from the security entries
    pd.read_csv(tmp_path / "run" / "architectures.csv").drop(columns="total_deficiency").to_csv(older, index=False)
    with pytest.raises(InvalidSpecError, match=r"lacks the columns \['total_deficiency'\]"):
        rebuild_study(older, tmp_path / "bad", settings, attacks=ATTACKS)

    from copa.bench.validity import main

    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"title": "T", "attacks": ATTACKS, "validity": settings,
                                      "plots": {"security_metric": "normalised_score", "psnr_cap": 100}}))
    assert main([str(tmp_path / "run" / "architectures.csv"), "--config", str(config), "--out",
                 str(tmp_path / "run")]) == 0  # in place, as the published study is rebuilt
    facts = published_run_facts(tmp_path / "run" / "validity.md")
    assert (facts["command"], facts["commit"], facts["config hash"], facts["images per cell"]) == (
        "snakemake --cores 2", "abc123", "f00d", "4")  # the run's, read back from the rebuilt header
    header = (tmp_path / "run" / "validity.md").read_text().split("## ")[0]
    assert "- **command**: `python -m copa.bench.validity " in header and "- **run's commit**: abc123" in header
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "run" / "predictors.csv"),
                                  pd.read_csv(tmp_path / "again" / "predictors.csv"))


# --------------------------------------------------------------------------------------------------
# The workflow


def _snakemake(workdir, configfile, *args):
    return subprocess.run([SNAKEMAKE, "-s", str(ROOT / "Snakefile"), "--directory", str(workdir), "--cores", "2",
                           "--configfile", str(configfile), *args], capture_output=True, text=True, check=False)


def _job_counts(stdout: str) -> dict[str, int]:
    counts = {}
    for line in stdout.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].isdigit():
            counts[parts[0]] = int(parts[1])
    return counts


def test_the_study_design_is_declared():
    design = yaml.safe_load((ROOT / "config" / "metric-validity.yaml").read_text())
    paper = yaml.safe_load((ROOT / "config" / "paper.yaml").read_text())
    seeds = [int(m.split(":")[1]) for m in design["models"] if m.startswith("random-chain:")]
    assert sorted(seeds) == list(range(64)) and sum(s % 2 == 0 for s in seeds) == 32
    assert [m for m in design["models"] if ":" not in m] == [m for m in paper["models"] if m != "lenet-zhu"]
    assert design["attacks"] == ["rgap", "copa", "copa-gm", "ig", "mean-image"]
    assert design["security"] == {"condition": True} and design["validity"]["floors"] == ["mean-image"]
    assert design["validity"]["predictors"] == list(PREDICTORS)
    studied = [a for a in design["attacks"] if a not in design["validity"]["floors"]]
    assert design["validity"]["outcomes"] == ["best_psnr", "best_ssim", *(f"{metric}:{a}" for metric in ("psnr", "ssim")
                                                                          for a in studied)]


@needs_snakemake
@needs_cifar
def test_dry_run_schedules_the_study_and_every_security_job(tmp_path):
    result = _snakemake(tmp_path, ROOT / "config" / "metric-validity.yaml", "--dry-run", "--config",
                        f"dataset=npz:{CIFAR_NPZ}")
    assert result.returncode == 0, result.stderr[-3000:]
    counts = _job_counts(result.stdout)
    assert counts.get("validity") == 1 and counts.get("security", 0) >= 81 and counts.get("cell") == 81 * 5, counts
    assert "results/metric-validity/validity/validity.md" in result.stdout
    for predictor in ("copa_index", "propagated_image_fraction"):  # the held-out candidates besides the plots' axis
        assert f"results/metric-validity/validity/scatter_best_by_{predictor}.png" in result.stdout


@needs_snakemake
def test_without_a_validity_section_the_study_is_not_scheduled(tmp_path):
    result = _snakemake(tmp_path, ROOT / "config" / "smoke.yaml", "--dry-run")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "validity" not in _job_counts(result.stdout)


@needs_snakemake
def test_a_bad_predictor_name_fails_in_one_line_naming_it(tmp_path):
    config = yaml.safe_load((ROOT / "config" / "smoke.yaml").read_text())
    config["validity"] = {"predictors": ["copa_index", "normalised_scor"], "outcomes": ["best_psnr"]}
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(config))
    result = _snakemake(tmp_path, path, "--dry-run")
    assert result.returncode != 0
    lines = [line for line in (result.stdout + result.stderr).splitlines() if "invalid config" in line]
    assert len(lines) == 1, result.stdout + result.stderr
    assert ("invalid config: validity.predictors: unknown predictor 'normalised_scor'. Did you mean "
            "'normalised_score'?") in lines[0]
    assert not (tmp_path / "runs").exists()


def test_exact_recoveries_tie_at_exact_psnr_in_every_statistic(study_inputs, tmp_path):
    """Full-rank chains recovered exactly at 100–290 dB (rounding) must not be ranked by their rounding."""
    security, board = study_inputs
    frame = pd.read_csv(board)
    full_rank = [m for m, free in _frees().items() if free == 0]
    for k, model in enumerate(full_rank):  # exact recoveries at different rounding levels
        frame.loc[(frame["model"] == model) & (frame["attack"] == "copa") & (frame["defence"] == "none"),
                  "psnr_mean"] = 100.0 + 30.0 * k
    frame.to_csv(board, index=False)
    settings = {**SETTINGS, "exact_psnr": 60.0}
    write_study(security, board, tmp_path / "tied", settings, attacks=ATTACKS)
    write_study(security, board, tmp_path / "raw", SETTINGS, attacks=ATTACKS)
    arch = pd.read_csv(tmp_path / "tied" / "architectures.csv")
    assert arch["psnr:copa"].max() == 100.0 + 30.0 * (len(full_rank) - 1)  # the table keeps the measured means
    study = arch[arch["status"] == "ok"].reset_index(drop=True)
    for column in ("best_psnr", "psnr:rgap", "psnr:copa"):
        study[column] = study[column].clip(upper=60.0)
    expected = validity_tables(study, settings["predictors"], settings["outcomes"], n_resamples=199, random_state=0)
    tied, raw = (pd.read_csv(tmp_path / name / "predictors.csv") for name in ("tied", "raw"))
    columns = ["subset", "predictor", "outcome", "n", "spearman_rho", "kendall_tau"]
    pd.testing.assert_frame_equal(tied[columns], expected[columns], check_dtype=False)
    key = (tied["subset"] == "all") & (tied["predictor"] == "copa_index") & (tied["outcome"] == "psnr:copa")
    assert float(tied.loc[key, "spearman_rho"].iloc[0]) > float(raw.loc[key, "spearman_rho"].iloc[0])
    assert "a mean PSNR ≥ 60 dB counts as 60 dB" in (tmp_path / "tied" / "validity.md").read_text()


def test_a_headline_metric_where_lower_is_better_ranks_and_leaks_that_way(study_inputs, tmp_path):
    """headline="mse" (lower is better): the best attack is the one of least MSE, "leaks" is MSE ≤ the threshold,
    and the normalised score is expected to rise with the outcome (a more secure model, a larger error)."""
    security, board_csv = study_inputs
    board = pd.read_csv(board_csv)
    board["mse_mean"] = 10.0 ** (-board["psnr_mean"] / 10)  # PSNR = −10·log10(MSE): the same order, reversed
    board.to_csv(board_csv, index=False)
    settings = {**SETTINGS, "outcomes": ["best_mse", "best_psnr", "mse:rgap", "mse:copa"], "leak_threshold": 0.01}
    write_study(security, board_csv, tmp_path / "mse", settings, attacks=ATTACKS, headline="mse")
    arch = pd.read_csv(tmp_path / "mse" / "architectures.csv")
    assert {"mse:rgap", "best_mse", "best_psnr"} <= set(arch.columns) and "ssim:rgap" not in arch.columns
    study = arch[arch["status"] == "ok"].set_index("model")
    by_psnr = study[["psnr:rgap", "psnr:copa"]].to_numpy().argmax(axis=1)
    assert study["best_attack"].tolist() == [ATTACKS[i] for i in by_psnr]  # least MSE = largest PSNR
    assert (study["leaks"] == (study["best_psnr"] >= 20.0)).all() and study["leaks"].any() and not study["leaks"].all()
    text = (tmp_path / "mse" / "validity.md").read_text()
    assert "the best attack is the one with the smallest mean MSE per architecture" in text
    assert "leaks: best_mse ≤ 0.01" in text and "reversed for MSE, where lower is better" in text
    assert "The normalised security score predicts leakage over all architectures (ρ = 1.00" in text  # not "wrong"


def test_a_floor_attack_is_a_reference_not_a_studied_attack(study_inputs, tmp_path):
    """validity.floors (issue 34): the mean-image floor's rows are kept as floor_psnr, never the best attack and in
    no statistic; validity.md counts per attack the architectures below it and the deficient head to head; a rebuild
    from architectures.csv gives the same files."""
    security, board = study_inputs
    rows = pd.read_csv(board)
    floor_psnr = {m: (30.0 if m == "random-chain:6" else 12.0) for m in rows["model"].unique()}  # beats both on :6
    floor = pd.DataFrame([{"defence": "none", "model": m, "attack": "mean-image", "ok": 4, "psnr_mean": v,
                           "ssim_mean": 0.1} for m, v in floor_psnr.items()])
    pd.concat([rows, floor]).to_csv(board, index=False)
    settings = {**SETTINGS, "floors": ["mean-image"]}
    write_study(security, board, tmp_path / "run", settings, attacks=[*ATTACKS, "mean-image"])
    table = pd.read_csv(tmp_path / "run" / "architectures.csv").set_index("model")
    assert "mean-image" not in set(table["best_attack"].dropna())
    assert table.loc["random-chain:6", "floor_psnr"] == 30.0 and table.loc["random-chain:6", "best_psnr"] < 30.0
    assert "mean-image" not in " ".join(pd.read_csv(tmp_path / "run" / "predictors.csv")["outcome"])
    text = (tmp_path / "run" / "validity.md").read_text()
    below = [line for line in text.splitlines() if line.startswith("| rgap ") or line.startswith("| copa ")][:2]
    assert all("random-chain:6 (" in line for line in below), below
    assert "## Against the floor, and head to head" in text and not (tmp_path / "run" / "scatter_mean-image.png").exists()
    rebuild_study(tmp_path / "run" / "architectures.csv", tmp_path / "again", settings, attacks=[*ATTACKS, "mean-image"])
    for name in ("architectures.csv", "predictors.csv", "held_out.csv"):
        pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "again" / name), pd.read_csv(tmp_path / "run" / name))
