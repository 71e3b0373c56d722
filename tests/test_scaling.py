"""Tests for treemdp.scaling: closed-form peaks, exact OLS recovery, bootstrap CIs, refusals."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from hypothesis import given
from hypothesis import strategies as st
from scipy.optimize import minimize_scalar

from tests.strategies import curve_points, d_grids, non_finite, scaling_forms
from treemdp import scaling
from treemdp.scaling import (
    FORMS,
    bootstrap_ci,
    evaluate,
    fit,
    fit_table,
    gain_over_initial,
    peak,
    predict_peak,
)

# Parameters with an interior peak inside d ∈ [0, 6] for each form.
TRUTH = {
    "bon": {"alpha": 1.2, "beta": 0.3},  # d* = 2
    "rl": {"alpha": 1.0, "beta": 0.4},  # d* = e^{1.5} ≈ 4.48
    "quadratic_kl": {"alpha": 0.8, "beta": 0.05},  # d* = √8 ≈ 2.83
}
D_GRID = np.linspace(0.0, 6.0, 13)


def noisy_runs(
    form: str, *, n_groups: int = 8, sigma: float = 0.05, seed: int = 1, offset: float = 0.0
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(d, y, group, step): n_groups runs on D_GRID, y = R(d) + offset + N(0, σ²) noise."""
    rng = np.random.default_rng(seed)
    d = np.tile(D_GRID, n_groups)
    group = np.repeat(np.arange(n_groups), D_GRID.size)
    step = np.tile(np.arange(D_GRID.size), n_groups)
    y = evaluate(form, d, **TRUTH[form], offset=offset) + rng.normal(0.0, sigma, d.size)
    return d, y, group, step


def ols_stderr(form: str, d: np.ndarray, sigma: float) -> np.ndarray:
    """Standard errors of (α, β) for i.i.d. N(0, σ²) noise: √diag(σ² (XᵀX)⁻¹)."""
    X = FORMS[form].features(d)
    return np.sqrt(np.diag(sigma**2 * np.linalg.inv(X.T @ X)))


# ---------------------------------------------------------------------------------------------
# Forms and peaks
# ---------------------------------------------------------------------------------------------


def test_hand_computed_values() -> None:
    # bon, α=2, β=0.5 at d=1: 1·(2 − 0.5) = 1.5.
    assert evaluate("bon", [1.0], alpha=2.0, beta=0.5)[0] == pytest.approx(1.5)
    # rl, α=1, β=2 at d=e: e·(1 − 2·1) = −e.
    assert evaluate("rl", [math.e], alpha=1.0, beta=2.0)[0] == pytest.approx(-math.e)
    # quadratic_kl, α=2, β=0.5 at d=2 (KL=4): 2·4 − 0.5·16 = 0.
    assert evaluate("quadratic_kl", [2.0], alpha=2.0, beta=0.5)[0] == pytest.approx(0.0)


@pytest.mark.parametrize("form", list(FORMS))
def test_every_form_is_zero_at_zero_and_offset_shifts(form: str) -> None:
    # R(0) = 0 by definition; for rl this needs the limit d log d → 0 (no NaN from 0·log 0).
    assert evaluate(form, [0.0], alpha=1.3, beta=0.7)[0] == 0.0
    assert evaluate(form, [0.0], alpha=1.3, beta=0.7, offset=0.25)[0] == 0.25


def test_peaks_hand_computed() -> None:
    # bon α=2, β=0.5: d* = 2/(2·0.5) = 2, R = 4/(4·0.5) = 2 = 2·(2 − 0.5·2).
    assert peak("bon", alpha=2.0, beta=0.5) == pytest.approx((2.0, 2.0))
    # rl α=β=1: d* = e^{0} = 1, R = 1·(1 − log 1) = 1 = β d*.
    assert peak("rl", alpha=1.0, beta=1.0) == pytest.approx((1.0, 1.0))
    # quadratic_kl α=2, β=0.5: KL* = 2, d* = √2, R = 2·2 − 0.5·4 = 2.
    assert peak("quadratic_kl", alpha=2.0, beta=0.5) == pytest.approx((math.sqrt(2.0), 2.0))


@pytest.mark.parametrize("form", list(FORMS))
@pytest.mark.parametrize(("alpha", "beta"), [(1.0, 0.4), (0.3, 0.05), (2.5, 1.7)])
def test_peak_matches_grid_argmax_and_stationarity(form: str, alpha: float, beta: float) -> None:
    d_star, r_star = peak(form, alpha=alpha, beta=beta)
    assert 0 < d_star < math.inf
    # Oracle 1: argmax on a fine grid around the peak (spacing 1e-5 · 3 d*).
    grid = np.linspace(1e-9, 3 * d_star, 300_001)
    r = evaluate(form, grid, alpha=alpha, beta=beta)
    assert grid[np.argmax(r)] == pytest.approx(d_star, abs=2e-5 * 3 * d_star)
    assert r.max() == pytest.approx(r_star, rel=1e-9)
    # Oracle 2: a bounded scalar optimiser and a zero central-difference derivative at d*.
    opt = minimize_scalar(
        lambda x: -evaluate(form, [x], alpha=alpha, beta=beta)[0],
        bounds=(1e-9, 3 * d_star),
        method="bounded",
        options={"xatol": 1e-10},
    )
    assert opt.x == pytest.approx(d_star, rel=1e-5)
    h = 1e-6 * d_star
    slope = np.diff(evaluate(form, [d_star - h, d_star + h], alpha=alpha, beta=beta))[0] / (2 * h)
    assert abs(slope) < 1e-6
    assert evaluate(form, [d_star], alpha=alpha, beta=beta)[0] == pytest.approx(r_star, rel=1e-12)


@pytest.mark.parametrize(
    ("form", "alpha", "beta"),
    [
        ("bon", 1.0, 0.0),
        ("bon", 1.0, -0.5),
        ("bon", -1.0, 0.5),  # concave, but its maximum over d ≥ 0 is at d = 0
        ("bon", 0.0, 0.5),
        ("rl", 1.0, 0.0),
        ("rl", 1.0, -0.5),  # convex: no maximum
        ("quadratic_kl", 1.0, -0.1),
        ("quadratic_kl", -1.0, 0.1),
    ],
)
def test_no_interior_peak_is_nan(form: str, alpha: float, beta: float) -> None:
    d_star, r_star = peak(form, alpha=alpha, beta=beta)
    assert math.isnan(d_star) and math.isnan(r_star)


def test_rl_peak_exists_for_negative_alpha() -> None:
    # R = d(α − β log d) with α < 0, β > 0 is still positive for d < e^{α/β}: the peak is interior.
    d_star, r_star = peak("rl", alpha=-1.0, beta=1.0)
    assert d_star == pytest.approx(math.exp(-2.0))
    assert r_star == pytest.approx(math.exp(-2.0))


# ---------------------------------------------------------------------------------------------
# Fits
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("form", list(FORMS))
@pytest.mark.parametrize("offset", [None, 0.0, -0.37])
def test_noise_free_recovery(form: str, offset: float | None) -> None:
    true = TRUTH[form]
    y = evaluate(form, D_GRID, **true, offset=offset or 0.0)
    res = fit(form, D_GRID, y, offset=offset is not None)
    assert res.form == form and res.n == D_GRID.size
    for k, v in true.items():
        assert res.params[k] == pytest.approx(v, abs=1e-10)
    if offset is None:
        assert res.offset is None
    else:
        assert res.offset == pytest.approx(offset, abs=1e-10)
    assert res.rmse < 1e-12
    d_star, r_star = peak(form, **true)
    assert res.peak_d == pytest.approx(d_star, rel=1e-9)
    assert res.peak_value == pytest.approx(r_star + (offset or 0.0), rel=1e-9)
    assert res.has_peak
    np.testing.assert_allclose(res.predict(D_GRID), y, atol=1e-10)


@pytest.mark.parametrize("form", list(FORMS))
def test_noisy_recovery_within_four_standard_errors(form: str) -> None:
    sigma = 0.05
    d, y, _, _ = noisy_runs(form, sigma=sigma)
    res = fit(form, d, y)
    se = ols_stderr(form, d, sigma)
    # Under the model the OLS estimate is N(truth, se²): |error| > 4 se has probability 6e-5.
    for k, s in zip(("alpha", "beta"), se, strict=True):
        assert abs(res.params[k] - TRUTH[form][k]) < 4 * s
    # The residual RMSE estimates σ (n = 104 points, 2 parameters): within 20 %.
    assert res.rmse == pytest.approx(sigma, rel=0.2)


def test_offset_recovers_added_constant_under_noise() -> None:
    c = 0.5  # e.g. a win rate of 50 % for the initial policy
    d, y, _, _ = noisy_runs("rl", offset=c, sigma=0.02)
    res = fit("rl", d, y, offset=True)
    X = np.column_stack([FORMS["rl"].features(d), np.ones_like(d)])
    se_c = math.sqrt(0.02**2 * np.linalg.inv(X.T @ X)[2, 2])
    assert abs(res.offset - c) < 4 * se_c
    # The peak value is reported in the units of y, offset included.
    assert res.peak_value == pytest.approx(res.params["beta"] * res.peak_d + res.offset)


def test_gain_over_initial_then_fit_equals_offset_free_truth() -> None:
    # Runs start at different raw values; subtracting each run's step-0 value gives R exactly.
    d = np.tile(D_GRID, 3)
    group = np.repeat(["a", "b", "c"], D_GRID.size)
    step = np.tile(np.arange(D_GRID.size), 3)
    start = np.repeat([0.1, 0.5, 0.3], D_GRID.size)
    y = evaluate("rl", d, **TRUTH["rl"]) + start
    gain = gain_over_initial(y, group=group, step=step)
    np.testing.assert_allclose(gain, evaluate("rl", d, **TRUTH["rl"]), atol=1e-15)
    res = fit("rl", d, gain)
    assert res.params == pytest.approx(TRUTH["rl"], abs=1e-10)


def test_rl_beats_quadratic_on_rl_data() -> None:
    # Noise-free: the rl fit is exact, the quadratic-in-KL fit cannot be.
    y = evaluate("rl", D_GRID, **TRUTH["rl"])
    assert fit("rl", D_GRID, y).rmse < 1e-12 < 1e-3 < fit("quadratic_kl", D_GRID, y).rmse
    # With noise: the paper reports rl halves the quadratic's RMSE; here the margin is larger.
    d, y, _, _ = noisy_runs("rl")
    assert fit("rl", d, y).rmse < 0.5 * fit("quadratic_kl", d, y).rmse


def test_scaling_y_scales_params_and_keeps_peak_location() -> None:
    # Metamorphic: R is linear in (α, β), so y ↦ k y gives (kα, kβ), the same d*, k·R(d*).
    d, y, _, _ = noisy_runs("rl")
    a, b = fit("rl", d, y), fit("rl", d, 3.0 * y)
    assert b.params == pytest.approx({k: 3.0 * v for k, v in a.params.items()}, rel=1e-10)
    assert b.peak_d == pytest.approx(a.peak_d, rel=1e-10)
    assert b.peak_value == pytest.approx(3.0 * a.peak_value, rel=1e-10)
    assert b.rmse == pytest.approx(3.0 * a.rmse, rel=1e-10)


def test_fit_without_peak_reports_nan() -> None:
    # Data rising linearly: the bon fit gets β ≈ 0 or < 0 and no interior maximum.
    y = 2.0 * D_GRID + 0.1 * D_GRID**2
    res = fit("bon", D_GRID, y)
    assert res.params["beta"] < 0
    assert not res.has_peak and math.isnan(res.peak_d) and math.isnan(res.peak_value)


def test_fit_does_not_mutate_inputs() -> None:
    d, y = D_GRID.copy(), evaluate("rl", D_GRID, **TRUTH["rl"])
    d0, y0 = d.copy(), y.copy()
    fit("rl", d, y, offset=True)
    np.testing.assert_array_equal(d, d0)
    np.testing.assert_array_equal(y, y0)


@given(form=scaling_forms, points=curve_points(), data=st.data())
def test_fit_is_invariant_to_point_order(form: str, points, data) -> None:
    d, y = points
    perm = np.asarray(data.draw(st.permutations(range(d.size))))
    offset = data.draw(st.booleans())
    a, b = fit(form, d, y, offset=offset), fit(form, d[perm], y[perm], offset=offset)
    scale = 1.0 + max(abs(v) for v in a.params.values())
    for k in a.params:
        assert b.params[k] == pytest.approx(a.params[k], rel=1e-7, abs=1e-9 * scale)
    if offset:
        assert b.offset == pytest.approx(a.offset, rel=1e-7, abs=1e-9 * scale)
    assert b.rmse == pytest.approx(a.rmse, rel=1e-7, abs=1e-9 * scale)
    assert b.n == a.n


@given(form=scaling_forms, d=d_grids(min_size=4), alpha=st.floats(-3, 3), beta=st.floats(-3, 3))
def test_noise_free_recovery_property(form: str, d: np.ndarray, alpha: float, beta: float) -> None:
    # Any parameters (peaked or not) are recovered exactly from ≥ 3 distinct lattice points.
    res = fit(form, d, evaluate(form, d, alpha=alpha, beta=beta))
    y_scale = 1.0 + float(np.abs(FORMS[form].features(d)).max())
    assert res.params["alpha"] == pytest.approx(alpha, abs=1e-8 * y_scale)
    assert res.params["beta"] == pytest.approx(beta, abs=1e-8 * y_scale)


# ---------------------------------------------------------------------------------------------
# Refusals
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("form", list(FORMS))
@pytest.mark.parametrize("offset", [False, True])
def test_too_few_points(form: str, offset: bool) -> None:
    k = 3 if offset else 2
    d = np.array([0.5, 1.0, 2.0, 3.0])
    y = evaluate(form, d, alpha=1.0, beta=0.2)
    with pytest.raises(ValueError, match=r"d, y: need at least \d+ points \(parameters \+ 1\)"):
        fit(form, d[:k], y[:k], offset=offset)
    fit(form, d[: k + 1], y[: k + 1], offset=offset)  # k + 1 points are enough


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("arg", ["d", "y"])
def test_non_finite_refused(bad: float, arg: str) -> None:
    d, y = D_GRID.copy(), evaluate("rl", D_GRID, **TRUTH["rl"])
    (d if arg == "d" else y)[3] = bad
    with pytest.raises(ValueError, match=rf"^{arg} must be finite.*index 3"):
        fit("rl", d, y)


def test_negative_d_refused() -> None:
    d = D_GRID.copy()
    d[2] = -1e-12
    with pytest.raises(ValueError, match=r"d = √KL must be ≥ 0"):
        fit("bon", d, np.zeros_like(d))
    with pytest.raises(ValueError, match=r"d = √KL must be ≥ 0"):
        evaluate("rl", [-1.0], alpha=1.0, beta=1.0)


@given(
    form=scaling_forms,
    points=curve_points(),
    bad=non_finite,
    arg=st.sampled_from(["d", "y"]),
    data=st.data(),
)
def test_any_non_finite_insertion_is_refused(form: str, points, bad: float, arg: str, data) -> None:
    d, y = (a.copy() for a in points)
    i = data.draw(st.integers(0, d.size - 1))
    (d if arg == "d" else y)[i] = bad
    with pytest.raises(ValueError, match=rf"^{arg} must be finite"):
        fit(form, d, y, offset=data.draw(st.booleans()))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"form": "cubic"}, r"form must be one of bon, rl, quadratic_kl"),
        ({"d": D_GRID[:-1]}, r"d and y must have the same length"),
        ({"d": np.ones((13, 1))}, r"d must be 1-D"),
        ({"y": "abc"}, r"y must be a 1-D array of real numbers"),
        # Every d equal: the two columns are proportional, α and β are not identified.
        ({"d": np.full(13, 2.0)}, r"d must take enough distinct values"),
        # d ∈ {0, 1}: d log d vanishes at both, so β is not identified for rl.
        ({"d": np.array([0.0, 1.0] * 6 + [1.0])}, r"d must take enough distinct values"),
    ],
)
def test_bad_arguments_refused(kwargs: dict, message: str) -> None:
    args = {"form": "rl", "d": D_GRID, "y": np.linspace(0, 1, 13)} | kwargs
    with pytest.raises(ValueError, match=message):
        fit(args["form"], args["d"], args["y"])


# ---------------------------------------------------------------------------------------------
# Bootstrap
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("form", list(FORMS))
def test_bootstrap_ci_contains_truth(form: str) -> None:
    d, y, group, _ = noisy_runs(form)
    boot = bootstrap_ci(form, d, y, group, n_resamples=500, level=0.95, seed=0)
    assert boot.n_groups == 8 and boot.n_failed == 0 and boot.n_no_peak == 0
    d_star, r_star = peak(form, **TRUTH[form])
    truth = {**TRUTH[form], "peak_d": d_star, "peak_value": r_star}
    for k, v in truth.items():
        lo, hi = boot.intervals[k]
        assert lo < v < hi, (k, lo, v, hi)
        # The point estimate lies inside its own interval.
        point = boot.fit.params.get(k, getattr(boot.fit, k, None))
        assert lo <= point <= hi
    assert boot.fit == fit(form, d, y)


def test_bootstrap_is_reproducible_and_seed_dependent() -> None:
    d, y, group, _ = noisy_runs("rl")
    a = bootstrap_ci("rl", d, y, group, n_resamples=200, seed=7)
    b = bootstrap_ci("rl", d, y, group, n_resamples=200, seed=7)
    c = bootstrap_ci("rl", d, y, group, n_resamples=200, seed=np.random.default_rng(7))
    assert a == b == c  # intervals and counts; samples are compared separately
    for k in a.samples:
        np.testing.assert_array_equal(a.samples[k], b.samples[k])
    other = bootstrap_ci("rl", d, y, group, n_resamples=200, seed=8)
    assert other.intervals != a.intervals


def test_bootstrap_interval_narrows_with_level() -> None:
    d, y, group, _ = noisy_runs("bon")
    wide = bootstrap_ci("bon", d, y, group, n_resamples=300, level=0.99, seed=0).intervals
    narrow = bootstrap_ci("bon", d, y, group, n_resamples=300, level=0.5, seed=0).intervals
    for k in wide:
        assert wide[k][0] <= narrow[k][0] <= narrow[k][1] <= wide[k][1]


def test_bootstrap_resamples_whole_groups() -> None:
    # Two runs with different slopes and nothing else: a resample holds one run twice (α = that
    # run's slope) or both (α = the mean), so α takes exactly the three values {1, 2, 3}.
    d = np.tile(D_GRID[1:], 2)
    group = np.repeat([0, 1], D_GRID.size - 1)
    y = np.where(group == 0, 1.0, 3.0) * d - 0.5 * d**2
    boot = bootstrap_ci("bon", d, y, group, n_resamples=400, seed=3)
    values = np.unique(np.round(boot.samples["alpha"], 8))
    np.testing.assert_allclose(values, [1.0, 2.0, 3.0])


def test_bootstrap_group_labels_do_not_matter() -> None:
    d, y, group, _ = noisy_runs("rl")
    a = bootstrap_ci("rl", d, y, group, n_resamples=100, seed=1)
    b = bootstrap_ci("rl", d, y, np.array([f"seed-{g}" for g in group]), n_resamples=100, seed=1)
    assert a == b


def test_bootstrap_counts_failed_resamples() -> None:
    # Run 0 has d ∈ {0, 1} only (β unidentified for rl on its own); a resample of run 0 twice fails.
    d = np.concatenate([[0.0, 1.0, 1.0], D_GRID[1:]])
    group = np.array([0] * 3 + [1] * (D_GRID.size - 1))
    y = evaluate("rl", d, **TRUTH["rl"])
    boot = bootstrap_ci("rl", d, y, group, n_resamples=200, seed=0)
    n_nan = int(np.isnan(boot.samples["alpha"]).sum())
    assert boot.n_failed == n_nan > 0  # about a quarter of the resamples
    assert boot.intervals["alpha"] == pytest.approx((TRUTH["rl"]["alpha"],) * 2, abs=1e-10)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"group": np.zeros(104)}, r"group must have at least 2 distinct labels"),
        ({"group": np.zeros(5)}, r"group must be 1-D with the same length as d"),
        ({"n_resamples": 0}, r"n_resamples must be ≥ 1"),
        ({"n_resamples": 2.5}, r"n_resamples must be an int"),
        ({"level": 1.0}, r"level must be in \(0, 1\)"),
        ({"level": 0.0}, r"level must be in \(0, 1\)"),
    ],
)
def test_bootstrap_refusals(kwargs: dict, message: str) -> None:
    d, y, group, _ = noisy_runs("rl")
    args = {"group": group, "n_resamples": 10, "level": 0.9} | kwargs
    with pytest.raises(ValueError, match=message):
        bootstrap_ci("rl", d, y, args.pop("group"), **args)


@pytest.mark.slow
def test_bootstrap_coverage_is_near_nominal() -> None:
    # 100 independent noisy data sets of 8 runs each; a 90 % percentile CI on β from 200 resamples.
    # With only 8 groups the percentile bootstrap under-covers: it behaves like a normal interval
    # with a bootstrap spread √(7/8) too small where a t₇ quantile would be right, which predicts
    # 2·t₇.cdf(1.645·√(7/8)) − 1 ≈ 0.83; over 300 data sets we measured 0.80 (79/100 here).
    # The band [70, 95] fails with probability < 1 % for any true coverage in [0.80, 0.88]
    # (binomial tails), yet catches intervals that are far too narrow (e.g. resampling a single
    # group) or far too wide (e.g. wrong percentiles).
    hits = 0
    for seed in range(100):
        d, y, group, _ = noisy_runs("rl", seed=1000 + seed, sigma=0.1)
        boot = bootstrap_ci("rl", d, y, group, n_resamples=200, level=0.9, seed=seed)
        lo, hi = boot.intervals["beta"]
        hits += lo < TRUTH["rl"]["beta"] < hi
    assert 70 <= hits <= 95


# ---------------------------------------------------------------------------------------------
# Tables
# ---------------------------------------------------------------------------------------------


def test_fit_table_rows_and_columns() -> None:
    d, y, group, _ = noisy_runs("rl")
    table = fit_table({"d": d, "y": y, "group": group}, n_resamples=100, seed=0)
    assert list(table["form"]) == list(FORMS)
    for col in ["alpha", "beta", "rmse", "peak_d", "peak_value", "alpha_lo", "beta_hi"]:
        assert col in table.columns
    for _, row in table.iterrows():
        res = fit(row["form"], d, y)
        assert row["alpha"] == res.params["alpha"] and row["rmse"] == res.rmse
        assert row["alpha_lo"] < row["alpha"] < row["alpha_hi"]
        assert math.isnan(row["offset"]) and math.isnan(row["offset_lo"])
        assert row["n_resamples"] == 100 and row["level"] == 0.95
    by_form = table.set_index("form")
    assert by_form.loc["rl", "rmse"] < 0.5 * by_form.loc["quadratic_kl", "rmse"]


@pytest.mark.parametrize(
    "d_points, where",
    [
        (np.linspace(1.5, 3.0, 6), "before"),  # d* = e^(−0.5) ≈ 0.61 < every point
        (np.linspace(0.1, 3.0, 6), "inside"),
        (np.linspace(0.01, 0.3, 6), "beyond"),
    ],
)
def test_a_fit_says_whether_its_peak_lies_inside_the_data(d_points, where) -> None:
    y = scaling.evaluate("rl", d_points, alpha=0.1, beta=0.2)  # exact: d* = exp(0.1/0.2 − 1)
    res = fit("rl", d_points, y)
    assert res.d_min == d_points.min() and res.d_max == d_points.max()
    assert res.peak_d == pytest.approx(math.exp(-0.5), rel=1e-6)
    assert res.peak_in_data == (where == "inside")
    row = fit_table({"d": d_points, "y": y}, group=None, forms=["rl"]).iloc[0]
    assert row["peak_in_data"] == (where == "inside")
    assert (row["d_min"], row["d_max"]) == (d_points.min(), d_points.max())


def test_a_fit_without_a_peak_is_not_in_the_data() -> None:
    d = np.linspace(0.1, 2.0, 6)
    res = fit("rl", d, scaling.evaluate("rl", d, alpha=0.5, beta=-0.1))  # β < 0: no maximum
    assert not res.has_peak and not res.peak_in_data


def test_fit_table_dataframe_columns_and_form_independent_ci() -> None:
    d, y, group, _ = noisy_runs("rl")
    df = pd.DataFrame({"kl_sqrt": d, "win": y, "seed": group})
    kw = {"d": "kl_sqrt", "y": "win", "group": "seed", "n_resamples": 50, "seed": 4}
    all_forms = fit_table(df, **kw).set_index("form")
    rl_only = fit_table(df, forms=["rl"], **kw).set_index("form")
    pd.testing.assert_series_equal(all_forms.loc["rl"], rl_only.loc["rl"])


def test_fit_table_baselines() -> None:
    d, y, group, step = noisy_runs("rl", offset=0.5, sigma=0.0)
    data = {"d": d, "y": y, "group": group, "step": step}
    gain = fit_table(data, step="step", baseline="gain", n_resamples=0).set_index("form")
    assert gain.loc["rl", "alpha"] == pytest.approx(TRUTH["rl"]["alpha"], abs=1e-10)
    assert gain.loc["rl", "n_resamples"] == 0 and math.isnan(gain.loc["rl", "alpha_lo"])
    off = fit_table(data, group=None, baseline="offset").set_index("form")
    assert off.loc["rl", "offset"] == pytest.approx(0.5, abs=1e-10)
    assert math.isnan(off.loc["rl", "beta_hi"])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"d": "kl"}, r"d: column 'kl' not in data"),
        ({"baseline": "zero"}, r"baseline must be one of"),
        ({"baseline": "gain"}, r'baseline="gain" needs both group and step'),
        ({"forms": ["rl", "cubic"]}, r"form must be one of"),
        ({"n_resamples": -1}, r"n_resamples must be ≥ 0"),
    ],
)
def test_fit_table_refusals(kwargs: dict, message: str) -> None:
    d, y, group, _ = noisy_runs("rl")
    with pytest.raises(ValueError, match=message):
        fit_table({"d": d, "y": y, "group": group}, **kwargs)


def test_gain_over_initial_refuses_ambiguous_start() -> None:
    with pytest.raises(ValueError, match=r"step: group 'a' has 2 points at its smallest step"):
        gain_over_initial([1.0, 2.0, 3.0], group=["a", "a", "a"], step=[0, 0, 1])


# ---------------------------------------------------------------------------------------------
# Peak prediction
# ---------------------------------------------------------------------------------------------


def test_predict_peak_noise_free_is_exact() -> None:
    # One run, dense in d, training moves d monotonically: step i ↦ d = i/100.
    d = np.linspace(0, 8, 801)
    step = np.arange(d.size)
    y = evaluate("rl", d, **TRUTH["rl"])
    pred = predict_peak("rl", d, y, step, fraction=0.25)  # d ≤ 2, well before d* ≈ 4.48
    assert pred.n_train == 201 and pred.n_test == 600 and pred.cutoff == 200
    assert pred.test_rmse < 1e-10
    d_star, r_star = peak("rl", **TRUTH["rl"])
    assert pred.predicted_peak_d == pytest.approx(d_star, rel=1e-9)
    assert pred.predicted_peak_value == pytest.approx(r_star, rel=1e-9)
    # Observed = best grid point: within half a grid step (0.005) of d*.
    assert abs(pred.peak_d_error) <= 0.005 + 1e-12
    assert pred.peak_d_error == pytest.approx(pred.predicted_peak_d - pred.observed_peak_d)
    assert 0 <= pred.peak_value_error < 1e-4  # the curve is flat at its peak


def test_predict_peak_cutoff_equals_fraction_and_noisy_sanity() -> None:
    d, y, _, step = noisy_runs("rl")
    a = predict_peak("rl", d, y, step, fraction=0.5)
    b = predict_peak("rl", d, y, step, cutoff=6)
    assert a == b
    # The early fit still extrapolates within a few noise σ, and its d* lands near the truth.
    assert a.test_rmse < 3 * 0.05
    assert a.predicted_peak_d == pytest.approx(peak("rl", **TRUTH["rl"])[0], rel=0.05)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({}, r"give exactly one of cutoff or fraction"),
        ({"cutoff": 3, "fraction": 0.5}, r"give exactly one of cutoff or fraction"),
        ({"fraction": 1.0}, r"fraction must be in \(0, 1\)"),
        ({"cutoff": 12}, r"cutoff must be < the last step"),
        ({"cutoff": math.nan}, r"cutoff must be finite"),
        ({"cutoff": 0}, r"cutoff = 0.0: the points with step ≤ cutoff cannot be fitted"),
    ],
)
def test_predict_peak_refusals(kwargs: dict, message: str) -> None:
    d, y, _, step = noisy_runs("rl", n_groups=1)
    with pytest.raises(ValueError, match=message):
        predict_peak("rl", d, y, step, **kwargs)


def test_module_exports_exist() -> None:
    for name in scaling.__all__:
        assert hasattr(scaling, name)
