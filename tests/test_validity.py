"""Tests of copa.bench.validity: rank correlations with bootstrap CIs, Holm, the partial correlation given the
full-rank split, predictors from security reports (the trivial ones too), the per-architecture table and the
held-out split."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from copa.bench.validity import (
    PREDICTORS,
    TRIVIAL_PREDICTORS,
    FittedRule,
    architecture_table,
    choose_predictor,
    correlation,
    correlation_table,
    fit_threshold,
    held_out_evaluation,
    held_out_split,
    holm,
    kendall_tau_b,
    partial_correlation,
    partial_spearman_rho,
    predictors_from_security,
    spearman_rho,
    validity_tables,
)
from copa.errors import InvalidSpecError

FAST = {"n_resamples": 999, "random_state": 0}


def _bivariate(n: int, r: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    z = np.random.default_rng(seed).multivariate_normal([0, 0], [[1, r], [r, 1]], size=n)
    return z[:, 0] ** 3, np.exp(z[:, 1])  # monotone transforms: the rank correlations of the normal pair


# --- the statistics --------------------------------------------------------------------------------

def test_hand_example_is_exact():
    x, y = [1, 2, 3, 4, 5], [2, 1, 4, 3, 5]  # Σd² = 4: ρ = 1 − 6·4/(5·24) = 0.8; 8 concordant, 2 discordant: τ = 0.6
    assert spearman_rho(np.array(x), np.array(y)) == pytest.approx(0.8, abs=1e-12)
    assert kendall_tau_b(np.array(x), np.array(y)) == pytest.approx(0.6, abs=1e-12)
    rho, tau = correlation(x, y, **FAST), correlation(x, y, statistic="kendall", **FAST)
    assert (rho.estimate, tau.estimate, rho.n) == (pytest.approx(0.8), pytest.approx(0.6), 5)
    assert rho.p_value == pytest.approx(stats.spearmanr(x, y).pvalue)
    # exact test: 1 + 4 + 9 of the 120 orderings of 5 have ≤ 2 discordant pairs; two-sided 2·14/120
    assert tau.p_value == pytest.approx(stats.kendalltau(x, y).pvalue) == pytest.approx(28 / 120)


def test_vectorised_statistics_equal_scipy_with_ties_and_inf():
    rng = np.random.default_rng(1)
    x, y = rng.integers(0, 6, size=(4, 30)).astype(float), rng.normal(size=(4, 30))
    y[:, :3] = np.inf  # exact recoveries: PSNR +inf
    rho, tau = spearman_rho(x, y, axis=-1), kendall_tau_b(x, y, axis=-1)
    for i in range(4):
        assert rho[i] == pytest.approx(stats.spearmanr(x[i], y[i]).statistic, abs=1e-12)
        assert tau[i] == pytest.approx(stats.kendalltau(x[i], y[i]).statistic, abs=1e-12)
    assert np.allclose(spearman_rho(x.T, y.T, axis=0), rho) and np.allclose(kendall_tau_b(x.T, y.T, axis=0), tau)


@pytest.mark.parametrize("r", [0.6, -0.3])
def test_monotone_with_noise_ci_covers_the_population_value(r):
    x, y = _bivariate(400, r, seed=2)
    exact = {"spearman": 6 / math.pi * math.asin(r / 2), "kendall": 2 / math.pi * math.asin(r)}
    for statistic, value in exact.items():
        result = correlation(x, y, statistic=statistic, **FAST)
        assert result.ci_method == "BCa" and result.ci_low < value < result.ci_high, (statistic, result)
        assert abs(result.estimate - value) < 0.08 and result.ci_high - result.ci_low < 0.25
        assert result.p_value < 1e-6


def test_independent_ci_covers_zero():
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=120), rng.normal(size=120)
    for statistic in ("spearman", "kendall"):
        result = correlation(x, y, statistic=statistic, **FAST)
        assert result.ci_low < 0 < result.ci_high and result.p_value > 0.05


def test_bootstrap_is_seeded():
    x, y = _bivariate(60, 0.5, seed=4)
    first, again = correlation(x, y, **FAST), correlation(x, y, **FAST)
    other = correlation(x, y, n_resamples=999, random_state=1)
    assert (first.ci_low, first.ci_high) == (again.ci_low, again.ci_high)
    assert (first.ci_low, first.ci_high) != (other.ci_low, other.ci_high)
    assert correlation(x, y, method="percentile", **FAST).ci_method == "percentile"


def test_perfect_monotone_and_degenerate_cases():
    x = np.linspace(0, 1, 20)
    result = correlation(x, np.exp(x), **FAST)
    assert result.estimate == 1.0 and result.ci_low == pytest.approx(1.0) and result.ci_high == pytest.approx(1.0)
    assert "percentile" in result.ci_method  # every resample gives 1: BCa is undefined
    constant = correlation(x, np.ones(20), **FAST)
    assert math.isnan(constant.estimate) and math.isnan(constant.p_value) and "undefined" in constant.ci_method
    with_nan = correlation([1, 2, np.nan, 4, 5], [1, 3, 2, np.nan, 5], **FAST)
    assert with_nan.n == 3 and with_nan.estimate == pytest.approx(1.0)
    with pytest.raises(InvalidSpecError):
        correlation(x, x, statistic="pearson")


def test_holm_on_a_known_example():
    # sorted 0.005·4 = 0.02, 0.01·3 = 0.03, 0.03·2 = 0.06, 0.04·1 = 0.04 → running max 0.06
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    adjusted = holm([0.2, np.nan, 0.01, 0.9])  # NaN is not in the family: m = 3
    assert math.isnan(adjusted[1]) and adjusted[[0, 2, 3]] == pytest.approx([0.4, 0.03, 0.9])
    assert holm([0.5, 0.6]) == pytest.approx([1.0, 1.0]) and holm([]).size == 0


# --- predictors and the per-architecture table -----------------------------------------------------

def _layer(kind, unknowns, deficiency, forward, gradient, padding=0, condition=None):
    return {"kind": kind, "unknowns": unknowns, "deficiency": deficiency, "forward_rows": forward,
            "gradient_rows": gradient, "padding_rows": padding, "condition_number": condition}


def test_predictors_from_a_hand_made_report():
    report = {"copa_index": -120, "normalised_score": 0.25, "layers": [
        _layer("conv", 3072, -200, 900, 27, condition=1e3),
        _layer("conv", 900, 0, 1600, 36, condition="inf"),
        _layer("fc", 400, 0, 10, 4000)]}
    p = predictors_from_security(report)
    assert set(p) == set(PREDICTORS)
    assert (p["copa_index"], p["normalised_score"], p["any_deficient"], p["depth"]) == (-120, 0.25, True, 2)
    assert (p["image_layer_deficiency"], p["total_deficiency"]) == (200, 200)
    assert p["max_layer_deficiency_fraction"] == pytest.approx(200 / 3072)
    assert p["log10_condition_image"] == pytest.approx(3.0) and p["log10_condition_max"] == math.inf
    assert p["parameters"] == 27 + 36 + 4000 + 10
    report["layers"][0]["condition_number"] = None  # not computed
    assert math.isnan(predictors_from_security(report)["log10_condition_max"])
    assert math.isnan(p["propagated_image_fraction"])  # a report without forward ranks
    # layer 1 leaves 50 directions free; layer 0's 900 forward rows have rank 880 off its gradient rows, so
    # 880 + 50 − 900 = 30 of them reach the image on top of its own 200 undetermined dimensions
    report["layers"][0]["forward_rank"], report["layers"][1]["forward_rank"] = 880, 1000
    report["layers"][1]["deficiency"] = -50
    assert predictors_from_security(report)["propagated_image_fraction"] == pytest.approx(230 / 3072)


@pytest.mark.usefixtures("single_thread")
def test_predictors_from_a_real_report_and_model():
    from copa.layerwise.security import security_report
    from copa.models import create_model

    report = security_report("cnn3_c2", condition=True).to_dict()
    p = predictors_from_security(report)
    assert p["parameters"] == predictors_from_security(report, create_model("cnn3_c2"))["parameters"]
    assert (p["copa_index"], p["total_deficiency"], p["image_layer_deficiency"], p["depth"]) == (
        report["copa_index"], 1470 + 1050, 1470, 2)
    assert p["any_deficient"] is True and math.isfinite(p["log10_condition_max"])
    assert p["log10_condition_max"] >= p["log10_condition_image"]
    assert 1470 / 3072 <= p["propagated_image_fraction"] <= 1.0  # at least the image layer's own free dimensions


def test_architecture_table_picks_the_best_attack():
    board = pd.DataFrame({
        "model": ["m1", "m1", "m2", "m2", "m3", "m3"],
        "attack": ["rgap", "copa", "rgap", "copa", "rgap", "copa"],
        "psnr_mean": [12.0, 15.0, np.inf, 30.0, np.nan, np.nan],
        "ssim_mean": [0.3, 0.5, 1.0, 0.9, np.nan, np.nan]})
    predictors = {"m1": {"copa_index": -5}, "m2": {"copa_index": 0}, "m4": {"copa_index": -1}}
    table = architecture_table(board, predictors).set_index("model")
    assert table.loc["m1", "best_attack"] == "copa" and table.loc["m1", "best_psnr"] == 15.0
    assert table.loc["m1", "best_ssim"] == 0.5 and table.loc["m1", "psnr:rgap"] == 12.0
    assert table.loc["m2", "best_attack"] == "rgap" and table.loc["m2", "best_psnr"] == np.inf
    assert pd.isna(table.loc["m3", "best_attack"]) and math.isnan(table.loc["m3", "best_psnr"])
    assert math.isnan(table.loc["m4", "best_psnr"]) and math.isnan(table.loc["m3", "copa_index"])
    with pytest.raises(InvalidSpecError, match="board lacks the columns"):
        architecture_table(board.drop(columns="ssim_mean"), predictors, metrics=["psnr", "ssim"])


def test_architecture_table_takes_the_best_by_the_headline_metrics_direction():
    """The best attack is the one with the best mean headline metric: the smallest for a metric where lower is
    better (MSE); the other metrics are that attack's."""
    board = pd.DataFrame({"model": ["m1", "m1", "m2", "m2"], "attack": ["rgap", "copa", "rgap", "copa"],
                          "psnr_mean": [12.0, 15.0, 30.0, 20.0], "mse_mean": [0.06, 0.03, 0.001, 0.01]})
    table = architecture_table(board, {"m1": {"copa_index": -5}, "m2": {"copa_index": 0}},
                               metrics=["psnr"], headline="mse").set_index("model")
    assert list(table.columns[-4:]) == ["psnr:copa", "best_attack", "best_mse", "best_psnr"]
    assert table.loc["m1", ["best_attack", "best_mse", "best_psnr"]].tolist() == ["copa", 0.03, 15.0]
    assert table.loc["m2", ["best_attack", "best_mse", "best_psnr"]].tolist() == ["rgap", 0.001, 30.0]
    by_psnr = architecture_table(board, {"m1": {}}, metrics=["mse"]).set_index("model")
    assert by_psnr.loc["m1", ["best_attack", "best_psnr", "best_mse"]].tolist() == ["copa", 15.0, 0.03]


def _synthetic_table(n: int = 80, seed: int = 5) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    score = rng.uniform(0, 1, n)
    psnr = 40 - 30 * score + rng.normal(0, 3, n)  # secure (high score) → low PSNR
    return pd.DataFrame({
        "model": [f"random-chain:{i}" for i in range(n - 6)] + [f"cnn{i}" for i in range(6)],
        "normalised_score": score, "noise": rng.normal(size=n), "any_deficient": score > 0.3,
        "best_psnr": psnr, "best_ssim": 1 - score + rng.normal(0, 0.1, n)})


def test_correlation_table_and_subsets():
    table = _synthetic_table()
    frame = correlation_table(table, ["normalised_score", "noise"], ["best_psnr", "best_ssim"], **FAST)
    assert list(frame[["predictor", "outcome"]].itertuples(index=False, name=None)) == [
        ("normalised_score", "best_psnr"), ("normalised_score", "best_ssim"), ("noise", "best_psnr"), ("noise", "best_ssim")]
    for statistic in ("spearman", "kendall"):
        assert np.allclose(frame[f"{statistic}_p_holm"], holm(frame[f"{statistic}_p"]))
    strong = frame.iloc[0]
    assert strong["spearman_rho"] < -0.7 and strong["spearman_ci_high"] < 0 and strong["spearman_p_holm"] < 1e-6
    both = validity_tables(table, ["normalised_score", "any_deficient"], ["best_psnr"], **FAST)
    assert list(both["subset"]) == ["all", "all", "deficient", "deficient"]
    deficient = both[both["subset"] == "deficient"].set_index("predictor")
    assert deficient.loc["normalised_score", "n"] == int(table["any_deficient"].sum())
    assert math.isnan(deficient.loc["any_deficient", "spearman_rho"])  # constant within the subset
    with pytest.raises(InvalidSpecError):
        correlation_table(table, ["missing"], ["best_psnr"])


# --- the partial correlation given the full-rank split -----------------------------------------------

def _split_explained(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A 0/1 split ``z`` (1 = deficient), a predictor that separates it, and an outcome that depends on the split
    alone (exact recovery at 60 dB when full rank, noise around 15 dB otherwise), independent of the predictor
    within each group."""
    rng = np.random.default_rng(seed)
    z = (rng.random(n) < 0.55).astype(float)
    x = np.where(z == 1, rng.uniform(0.05, 1.0, n), 0.0)  # a score: 0 on full rank, positive when deficient
    y = np.where(z == 1, rng.normal(15, 3, n), 60.0)
    return x, y, z


def test_partial_rho_is_fishers_formula_on_spearman_rhos():
    rng = np.random.default_rng(4)
    for control in (rng.integers(0, 2, 60).astype(float), rng.normal(size=60)):  # binary and continuous
        x = control + rng.normal(size=60)
        y = np.exp(x + control + rng.normal(size=60))
        rxy, rxz, ryz = (stats.spearmanr(a, b).statistic for a, b in ((x, y), (x, control), (y, control)))
        expected = (rxy - rxz * ryz) / math.sqrt((1 - rxz ** 2) * (1 - ryz ** 2))
        assert partial_spearman_rho(x, y, control) == pytest.approx(expected, abs=1e-12)
    stacked = rng.normal(size=(3, 5, 40))
    loop = [partial_spearman_rho(*(v[i] for v in stacked)) for i in range(5)]
    assert np.allclose(partial_spearman_rho(*stacked, axis=-1), loop)
    assert np.allclose(partial_spearman_rho(*(v.T for v in stacked), axis=0), loop)


def test_an_outcome_explained_by_full_rank_alone_has_partial_rho_near_zero():
    x, y, z = _split_explained(400, seed=5)
    plain = correlation(x, y, **FAST)
    partial = partial_correlation(x, y, z, **FAST)
    assert plain.estimate < -0.7 and plain.ci_high < 0  # the split alone makes the plain ρ look strong
    assert abs(partial.estimate) < 0.1 and partial.ci_low < 0 < partial.ci_high and partial.p_value > 0.05
    assert partial.n == 400 and partial.ci_method == "BCa"


def test_partial_rho_is_the_within_deficient_rho_when_full_rank_is_constant():
    x, y, z = _split_explained(120, seed=6)
    y = np.where(z == 1, y - 20 * x, 60.0)  # now the score orders the deficient ones
    deficient = z == 1
    within = stats.spearmanr(x[deficient], y[deficient]).statistic
    partial = partial_correlation(x, y, z, **FAST)
    assert partial.estimate == pytest.approx(within, abs=1e-12) and partial.estimate < -0.7
    assert partial.ci_high < 0 and partial.p_value < 1e-10


def test_partial_p_value_is_the_t_test_of_the_predictor_in_a_regression_on_ranks():
    """The partial correlation's t test on n − 3 degrees of freedom equals the t test of x's coefficient in the
    least-squares regression of rank(y) on rank(x) and the split (an independent computation)."""
    rng = np.random.default_rng(7)
    z = rng.integers(0, 2, 50).astype(float)
    x = rng.normal(size=50) + z
    y = 0.4 * x + z + rng.normal(size=50)
    design = np.column_stack([np.ones(50), stats.rankdata(x), z])
    coefficients, residual, *_ = np.linalg.lstsq(design, stats.rankdata(y), rcond=None)
    sigma2 = residual[0] / (50 - 3)
    t = coefficients[1] / math.sqrt(sigma2 * np.linalg.inv(design.T @ design)[1, 1])
    result = partial_correlation(x, y, z, **FAST)
    assert result.p_value == pytest.approx(2 * stats.t.sf(abs(t), 47), rel=1e-9)
    assert np.sign(result.estimate) == np.sign(coefficients[1])


def test_partial_rho_is_undefined_for_the_split_itself_and_for_small_samples():
    x, y, z = _split_explained(40, seed=8)
    assert math.isnan(partial_spearman_rho(z, y, z)) and math.isnan(partial_spearman_rho(x, z, z))
    result = partial_correlation(z, y, z, **FAST)
    assert math.isnan(result.estimate) and math.isnan(result.ci_low) and "undefined" in result.ci_method
    assert math.isnan(partial_correlation([1, 2, 3], [3, 1, 2], [0, 1, 0], **FAST).estimate)
    assert partial_correlation([1, 2, np.nan, 4, 5], [2, 1, 7, 4, 3], [0, 0, 1, 1, 1], **FAST).n == 4


# --- the trivial predictors ------------------------------------------------------------------------

def test_the_trivial_predictors_are_ordinary_predictors_computed_from_the_ranks():
    assert set(TRIVIAL_PREDICTORS) == {"any_deficient", "total_deficiency"} and set(TRIVIAL_PREDICTORS) <= set(PREDICTORS)
    report = {"copa_index": -1, "normalised_score": 0.1, "layers": [
        _layer("conv", 3072, -200, 900, 27), _layer("conv", 900, -16, 1600, 36), _layer("fc", 400, 0, 10, 4000)]}
    p = predictors_from_security(report)
    assert (p["any_deficient"], p["total_deficiency"]) == (True, 216)  # a deeper layer counts as much as the image's
    for layer in report["layers"]:
        layer["deficiency"] = 0
    assert (predictors_from_security(report)["any_deficient"], predictors_from_security(report)["total_deficiency"]) \
        == (False, 0)


def test_the_full_rank_rule_fitted_on_half_a():
    """any_deficient fitted as a threshold rule is "full rank leaks" (leaks when ≤ 0.5): it misses every
    deficient chain that leaks and calls every full-rank one leaking; its balanced accuracy is that of the split."""
    table = _synthetic_table()
    split = held_out_split(table["model"], seed=0)
    rule, report = held_out_evaluation(
        table, split, lambda t: fit_threshold(t, choose_predictor(t, ["any_deficient"]), leak_threshold=25),
        leak_threshold=25, **FAST)
    assert rule.weights == {"any_deficient": 1.0} and rule.sign == -1 and rule.threshold == pytest.approx(0.5)
    full_rank = ~table["any_deficient"].astype(bool)
    assert list(rule.predict_leaks(table)) == list(full_rank)
    truth = table["best_psnr"] >= 25
    assert (truth & ~full_rank).sum() > 5  # deficient chains that leak: the rule calls them safe
    for subset, names in split.subsets().items():
        part = table["model"].isin(names)
        leak, called = truth[part], full_rank[part]
        rates = [(called[leak]).mean(), (~called[~leak]).mean()]  # sensitivity, specificity
        assert report.set_index("subset").loc[subset, "balanced_accuracy"] == pytest.approx(np.mean(rates))


def test_validity_tables_add_the_partial_correlation_to_the_all_subset():
    table = _synthetic_table()
    frame = validity_tables(table, ["normalised_score", "any_deficient", "noise"], ["best_psnr"], **FAST)
    every, deficient = (frame[frame["subset"] == s].set_index("predictor") for s in ("all", "deficient"))
    assert (every["partial_given"] == "any_deficient").all() and deficient["partial_rho"].isna().all()
    assert math.isnan(every.loc["any_deficient", "partial_rho"])  # the split given itself
    z = table["any_deficient"].astype(float)
    assert every.loc["normalised_score", "partial_rho"] == pytest.approx(
        float(partial_spearman_rho(table["normalised_score"], table["best_psnr"], z)))
    assert np.allclose(every["partial_p_holm"].dropna(), holm(every["partial_p"].dropna()))


# --- held-out evaluation ---------------------------------------------------------------------------

def test_held_out_split_is_seeded_disjoint_and_covering():
    models = [f"random-chain:{i}" for i in range(41)] + ["cnn2_c1", "cnn4_c2", "cnn6"]
    split = held_out_split(reversed(models), seed=7)
    again = held_out_split(models, seed=7)
    assert (split.a, split.b, split.paper) == (again.a, again.b, again.paper)
    assert held_out_split(models, seed=8).a != split.a
    a, b, paper = set(split.a), set(split.b), set(split.paper)
    assert not (a & b or a & paper or b & paper) and a | b | paper == set(models)
    assert (len(split.a), len(split.b), split.paper) == (20, 21, ("cnn2_c1", "cnn4_c2", "cnn6"))
    assert list(split.a) == sorted(split.a, key=lambda m: int(m.split(":")[1]))


def test_held_out_evaluation_fits_on_half_a_only():
    table = _synthetic_table()
    split = held_out_split(table["model"], seed=0)
    seen = []

    def fit(train):
        seen.append(set(train["model"]))
        return choose_predictor(train, ["noise", "normalised_score"])

    rule, report = held_out_evaluation(table, split, fit, **FAST)
    assert seen == [set(split.a)]
    assert rule.weights == {"normalised_score": 1.0} and rule.sign == -1
    assert list(report["subset"]) == ["A (fit)", "B (held out)", "paper"]
    assert list(report["models"]) == [len(split.a), len(split.b), 6]
    held = report.set_index("subset").loc["B (held out)"]
    assert held["spearman_rho"] < -0.6 and held["spearman_ci_high"] < 0


def test_threshold_rule_on_half_a_reported_elsewhere():
    table = _synthetic_table()
    split = held_out_split(table["model"], seed=1)
    rule, report = held_out_evaluation(
        table, split, lambda t: fit_threshold(t, choose_predictor(t, ["normalised_score"]), leak_threshold=25),
        leak_threshold=25, **FAST)
    assert rule.sign == -1 and 0.2 < rule.threshold < 0.8 and rule.fit["leak_threshold"] == 25
    assert {"accuracy", "balanced_accuracy", "leaks"} <= set(report.columns)
    accuracy = report.set_index("subset")["balanced_accuracy"]
    assert accuracy["A (fit)"] > 0.85 and accuracy["B (held out)"] > 0.85 and accuracy["paper"] >= 0.5


def test_fit_threshold_finds_a_clean_cut_and_its_direction():
    train = pd.DataFrame({"model": list("abcdef"), "x": [0.1, 0.2, 0.3, 0.7, 0.8, 0.9],
                          "best_psnr": [10, 11, 12, 40, 41, 42]})
    rule = fit_threshold(train, "x", leak_threshold=20)
    assert (rule.sign, rule.threshold, rule.fit["balanced_accuracy"]) == (1, pytest.approx(0.5), 1.0)
    assert list(rule.predict_leaks(train)) == [False] * 3 + [True] * 3
    flipped = fit_threshold(train.assign(x=-train["x"]), "x", leak_threshold=20)
    assert flipped.sign == -1 and flipped.threshold == pytest.approx(-0.5)
    with pytest.raises(InvalidSpecError):
        FittedRule({"x": 1.0}).predict_leaks(train)
