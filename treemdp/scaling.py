"""Scaling-law forms for reward over-optimization: least-squares fits, bootstrap CIs, peaks.

The x-axis is d = √KL(π‖π_ref) (Rafailov et al. 2024, §4 of PAPER.md; Gao, Schulman & Hilton 2022).
Every form is linear in its two parameters (α, β), so a fit is one ordinary least-squares solve on a
two-column design matrix (three with a free offset): exact, fast, and with no initial guess to tune.

    form            R(d)                         peak d*              peak value R(d*)
    "bon"           d (α − β d)                  α / (2β)             α² / (4β)
    "rl"            d (α − β log d)              exp(α/β − 1)         β d*
    "quadratic_kl"  α KL − β KL²,  KL = d²       √(α / (2β))          α² / (4β)

"rl" is the form the paper fits to its DAA curves; "quadratic_kl" is the quadratic-in-KL baseline
the paper says it beats. R(0) = 0 by definition for every form: either fit the gain over the
initial policy (``gain_over_initial``) or fit R(d) + c with a free offset c (``offset=True``).
An interior maximum (0 < d* < ∞) exists only for β > 0 (and α > 0 for "bon" and "quadratic_kl");
otherwise the peak is reported as NaN. See docs/scaling.md for the derivations.

Everything here is a pure function on NumPy arrays (float64); nothing does I/O. Anything random
takes a seed or a ``numpy.random.Generator``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike, NDArray

__all__ = [
    "FORMS",
    "BootstrapCI",
    "Fit",
    "Form",
    "PeakPrediction",
    "bootstrap_ci",
    "evaluate",
    "fit",
    "fit_table",
    "gain_over_initial",
    "peak",
    "predict_peak",
]

FloatArray = NDArray[np.float64]
PARAMS: tuple[str, str] = ("alpha", "beta")


def _xlogx(d: FloatArray) -> FloatArray:
    """d log d with its limit 0 at d = 0 (d ≥ 0 is checked by the callers)."""
    out = np.zeros_like(d)
    pos = d > 0
    out[pos] = d[pos] * np.log(d[pos])
    return out


def _bon_features(d: FloatArray) -> FloatArray:
    return np.stack([d, -(d**2)], axis=-1)


def _rl_features(d: FloatArray) -> FloatArray:
    return np.stack([d, -_xlogx(d)], axis=-1)


def _quad_features(d: FloatArray) -> FloatArray:
    kl = d**2
    return np.stack([kl, -(kl**2)], axis=-1)


def _bon_peak(alpha: float, beta: float) -> tuple[float, float]:
    # R'(d) = α − 2βd = 0; a maximum (R'' = −2β < 0) inside d > 0 needs β > 0 and α > 0.
    if not (beta > 0 and alpha > 0):
        return math.nan, math.nan
    return alpha / (2 * beta), alpha**2 / (4 * beta)


def _rl_peak(alpha: float, beta: float) -> tuple[float, float]:
    # R'(d) = α − β log d − β = 0 ⇒ log d* = α/β − 1; R'' = −β/d < 0 needs β > 0 (any α).
    # R(d*) = d*(α − β(α/β − 1)) = β d*. exp overflows to inf for α/β ≳ 710: reported as is.
    if not beta > 0:
        return math.nan, math.nan
    with np.errstate(over="ignore"):
        d_star = float(np.exp(alpha / beta - 1.0))
    return d_star, beta * d_star


def _quad_peak(alpha: float, beta: float) -> tuple[float, float]:
    # In KL this is the BoN parabola: KL* = α/(2β), value α²/(4β); d* = √KL*.
    if not (beta > 0 and alpha > 0):
        return math.nan, math.nan
    return math.sqrt(alpha / (2 * beta)), alpha**2 / (4 * beta)


@dataclass(frozen=True)
class Form:
    """One scaling-law form R(d) = α f(d) − β g(d), linear in (α, β).

    Attributes:
        name: registry key.
        formula: R(d) in one line.
        features: d ↦ [f(d), −g(d)]; shape (N,) ↦ (N, 2).
        peak: (α, β) ↦ (d*, R(d*)), NaN for both when there is no interior maximum.
        source: where the form comes from.
    """

    name: str
    formula: str
    features: Callable[[FloatArray], FloatArray]
    peak: Callable[[float, float], tuple[float, float]]
    source: str


FORMS: dict[str, Form] = {
    f.name: f
    for f in [
        Form(
            name="bon",
            formula="R(d) = d (α − β d)",
            features=_bon_features,
            peak=_bon_peak,
            source="Gao, Schulman & Hilton 2022, best-of-n form",
        ),
        Form(
            name="rl",
            formula="R(d) = d (α − β log d)",
            features=_rl_features,
            peak=_rl_peak,
            source="Gao, Schulman & Hilton 2022, RL form; Rafailov et al. 2024 fit it to DAAs",
        ),
        Form(
            name="quadratic_kl",
            formula="R(d) = α KL − β KL², KL = d²",
            features=_quad_features,
            peak=_quad_peak,
            source="quadratic-in-KL baseline; Rafailov et al. 2024 compare its RMSE to the rl form",
        ),
    ]
}


def _get_form(form: str) -> Form:
    try:
        return FORMS[form]
    except KeyError:
        raise ValueError(f"form must be one of {', '.join(FORMS)}; got {form!r}") from None


# ---------------------------------------------------------------------------------------------
# Argument checks
# ---------------------------------------------------------------------------------------------


def _as_1d(x: ArrayLike, name: str) -> FloatArray:
    try:
        a = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a 1-D array of real numbers; got {x!r}") from None
    if a.ndim != 1:
        raise ValueError(f"{name} must be 1-D (shape (N,)); got shape {a.shape}")
    return a


def _check_finite(a: FloatArray, name: str) -> None:
    bad = ~np.isfinite(a)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(
            f"{name} must be finite (no NaN or Inf); {int(bad.sum())} non-finite value(s), "
            f"first at index {i}: {a[i]}"
        )


def _check_xy(d: ArrayLike, y: ArrayLike) -> tuple[FloatArray, FloatArray]:
    d_arr, y_arr = _as_1d(d, "d"), _as_1d(y, "y")
    if d_arr.shape != y_arr.shape:
        raise ValueError(f"d and y must have the same length; got {d_arr.size} and {y_arr.size}")
    _check_finite(d_arr, "d")
    _check_finite(y_arr, "y")
    if (d_arr < 0).any():
        raise ValueError(f"d = √KL must be ≥ 0; got min(d) = {d_arr.min()}")
    return d_arr, y_arr


def _check_same_length(a: ArrayLike, name: str, n: int) -> np.ndarray:
    arr = np.asarray(a)
    if arr.ndim != 1 or arr.size != n:
        raise ValueError(f"{name} must be 1-D with the same length as d ({n}); got {arr.shape}")
    return arr


def _n_params(offset: bool) -> int:
    return len(PARAMS) + int(offset)


def _check_enough(n: int, offset: bool) -> None:
    k = _n_params(offset)
    if n < k + 1:
        raise ValueError(
            f"d, y: need at least {k + 1} points (parameters + 1) to fit {k} parameters "
            f"({'with' if offset else 'without'} offset); got {n}"
        )


def _check_level(level: float) -> None:
    if not (0 < level < 1):
        raise ValueError(f"level must be in (0, 1); got {level!r}")


# ---------------------------------------------------------------------------------------------
# Evaluation, peaks and the least-squares fit
# ---------------------------------------------------------------------------------------------


def evaluate(
    form: str, d: ArrayLike, *, alpha: float, beta: float, offset: float = 0.0
) -> FloatArray:
    """R(d) + offset for a form and its parameters.

    Args:
        form: a key of ``FORMS``.
        d: √KL(π‖π_ref), each ≥ 0 and finite. Shape (N,) (a scalar is treated as shape (1,)).
        alpha: α.
        beta: β.
        offset: constant added to R(d) (R(0) = offset).

    Returns:
        The curve at ``d``. Shape (N,), float64, in the units of the reward/win rate.
    """
    f = _get_form(form)
    d_arr = _as_1d(np.atleast_1d(np.asarray(d, dtype=np.float64)), "d")
    _check_finite(d_arr, "d")
    if (d_arr < 0).any():
        raise ValueError(f"d = √KL must be ≥ 0; got min(d) = {d_arr.min()}")
    return f.features(d_arr) @ np.array([alpha, beta]) + offset


def peak(form: str, *, alpha: float, beta: float) -> tuple[float, float]:
    """Closed-form peak (d*, R(d*)) of R over d > 0, without offset.

    Args:
        form: a key of ``FORMS``.
        alpha: α.
        beta: β.

    Returns:
        (d*, R(d*)); both NaN when R has no interior maximum on d > 0 (β ≤ 0 for every form;
        also α ≤ 0 for "bon" and "quadratic_kl", whose maximum over d ≥ 0 is then at d = 0).
        For "rl", d* = exp(α/β − 1) may overflow to inf when α/β ≳ 710.
    """
    return _get_form(form).peak(float(alpha), float(beta))


@dataclass(frozen=True)
class Fit:
    """A least-squares fit of one form.

    Attributes:
        form: the form's name (a key of ``FORMS``).
        params: {"alpha": α, "beta": β}.
        offset: the fitted constant c of R(d) + c, or None when the fit had no offset.
        rmse: √(mean squared residual) over the n fitted points (no degrees-of-freedom correction),
            in the units of y.
        n: number of points fitted.
        peak_d: d* of the fitted curve; NaN when it has no interior maximum (see ``peak``).
        peak_value: the fitted curve at d*, offset included (so in the units of y); NaN with peak_d.
    """

    form: str
    params: Mapping[str, float]
    offset: float | None
    rmse: float
    n: int
    peak_d: float
    peak_value: float

    @property
    def has_peak(self) -> bool:
        """Whether the fitted curve has a finite interior maximum."""
        return math.isfinite(self.peak_d)

    def predict(self, d: ArrayLike) -> FloatArray:
        """The fitted curve R(d) (+ offset) at ``d``. Shape (N,) ↦ (N,)."""
        return evaluate(self.form, d, **self.params, offset=self.offset or 0.0)


def _lstsq(
    f: Form, d: FloatArray, y: FloatArray, offset: bool
) -> tuple[FloatArray, FloatArray] | None:
    """Coefficients [α, β(, c)] and residuals, or None if the design matrix is rank-deficient."""
    X = f.features(d)
    if offset:
        X = np.column_stack([X, np.ones_like(d)])
    # Unit-norm columns make the rank decision scale-free (d in [0, 1] vs d in [0, 100]).
    norms = np.linalg.norm(X, axis=0)
    if (norms == 0).any():
        return None
    coef, _, rank, _ = np.linalg.lstsq(X / norms, y, rcond=None)
    if rank < X.shape[1]:
        return None
    coef = coef / norms
    return coef, y - X @ coef


def _fit_checked(f: Form, d: FloatArray, y: FloatArray, offset: bool) -> Fit | None:
    sol = _lstsq(f, d, y, offset)
    if sol is None:
        return None
    coef, resid = sol
    alpha, beta = float(coef[0]), float(coef[1])
    c = float(coef[2]) if offset else None
    d_star, r_star = f.peak(alpha, beta)
    return Fit(
        form=f.name,
        params={"alpha": alpha, "beta": beta},
        offset=c,
        rmse=float(np.sqrt(np.mean(resid**2))),
        n=int(d.size),
        peak_d=d_star,
        peak_value=r_star + (c or 0.0),
    )


def fit(form: str, d: ArrayLike, y: ArrayLike, *, offset: bool = False) -> Fit:
    """Least-squares fit of a form to points (d, y): the exact OLS solution of a linear problem.

    Every form is linear in (α, β) (and the offset c), so the fit is one ``numpy.linalg.lstsq``
    solve on the design matrix [f(d), −g(d)(, 1)]; d log d is taken as 0 at d = 0.

    Args:
        form: a key of ``FORMS``.
        d: √KL(π‖π_ref) of each point, finite and ≥ 0. Shape (N,).
        y: reward / win rate of each point: the gain over the initial policy when
            ``offset=False`` (R(0) = 0), the raw value when ``offset=True``. Shape (N,).
        offset: fit R(d) + c with a free constant c.

    Returns:
        The ``Fit``.

    Raises:
        ValueError: unknown form; d, y not 1-D of equal length; NaN/Inf in d or y; d < 0; fewer
            than (parameters + 1) points; or d with too few distinct values to determine the
            parameters (rank-deficient design matrix).
    """
    f = _get_form(form)
    d_arr, y_arr = _check_xy(d, y)
    _check_enough(d_arr.size, offset)
    result = _fit_checked(f, d_arr, y_arr, offset)
    if result is None:
        k = _n_params(offset)
        raise ValueError(
            f"d must take enough distinct values to determine {k} parameters of form {form!r} "
            f"(the design matrix is rank-deficient); got distinct d = {np.unique(d_arr)[:10]}"
        )
    return result


def gain_over_initial(y: ArrayLike, *, group: ArrayLike, step: ArrayLike) -> FloatArray:
    """y minus its value at the initial checkpoint of the same run: the gain R with R(0) = 0.

    Args:
        y: reward / win rate. Shape (N,).
        group: run (or seed) label of each point; any hashable values. Shape (N,).
        step: training step (or fraction of the epoch) of each point. Shape (N,).

    Returns:
        y − y[first step of its group]. Shape (N,).

    Raises:
        ValueError: lengths differ, y or step not finite, or a group has more than one point at
            its smallest step (the initial value would be ambiguous: label runs more finely).
    """
    y_arr = _as_1d(y, "y")
    _check_finite(y_arr, "y")
    s = _as_1d(_check_same_length(step, "step", y_arr.size), "step")
    _check_finite(s, "step")
    g = _check_same_length(group, "group", y_arr.size)
    out = np.empty_like(y_arr)
    for label, idx in _group_indices(g).items():
        first = idx[s[idx] == s[idx].min()]
        if first.size != 1:
            raise ValueError(
                f"step: group {label!r} has {first.size} points at its smallest step {s[first[0]]};"
                " each group must have exactly one initial point"
            )
        out[idx] = y_arr[idx] - y_arr[first[0]]
    return out


def _group_indices(group: np.ndarray) -> dict[object, np.ndarray]:
    """{label: indices of its rows}, labels in order of first appearance."""
    codes, labels = pd.factorize(group, use_na_sentinel=False)
    order = np.argsort(codes, kind="stable")
    bounds = np.searchsorted(codes[order], np.arange(len(labels) + 1))
    # .item(): plain Python labels, so messages read 'a' rather than np.str_('a').
    return {
        (lab.item() if isinstance(lab, np.generic) else lab): order[bounds[i] : bounds[i + 1]]
        for i, lab in enumerate(labels)
    }


# ---------------------------------------------------------------------------------------------
# Bootstrap over runs
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BootstrapCI:
    """Percentile bootstrap confidence intervals of a fit, resampling whole groups (runs/seeds).

    Attributes:
        fit: the fit on all the data (the point estimate).
        level: coverage of each interval, e.g. 0.95.
        n_resamples: resamples drawn.
        n_groups: distinct groups in the data.
        n_failed: resamples whose fit was impossible (too few points or too few distinct d
            values after resampling); they are left out of every interval.
        n_no_peak: successful resamples whose curve had no interior maximum; left out of the
            peak_d and peak_value intervals (a large count means those intervals mislead).
        intervals: {"alpha", "beta", ("offset",) "peak_d", "peak_value"} ↦ (low, high); NaN when
            no resample gave a value.
        samples: the same keys ↦ the resampled values, shape (n_resamples,), NaN for failed or
            peakless resamples.
    """

    fit: Fit
    level: float
    n_resamples: int
    n_groups: int
    n_failed: int
    n_no_peak: int
    intervals: Mapping[str, tuple[float, float]]
    samples: Mapping[str, FloatArray] = field(repr=False, compare=False)


def bootstrap_ci(
    form: str,
    d: ArrayLike,
    y: ArrayLike,
    group: ArrayLike,
    *,
    offset: bool = False,
    n_resamples: int = 1000,
    level: float = 0.95,
    seed: int | np.random.Generator = 0,
) -> BootstrapCI:
    """Fit a form and put percentile bootstrap CIs on α, β, (c,) d* and R(d*).

    Each resample draws as many groups as there are, with replacement, keeps all the points of
    each drawn group (a group drawn twice contributes its points twice) and refits. Whole runs are
    resampled because points within a run are correlated (one policy's trajectory); resampling
    points would understate the spread.

    Args:
        form: a key of ``FORMS``.
        d: √KL of each point, finite and ≥ 0. Shape (N,).
        y: reward / win rate of each point (see ``fit``). Shape (N,).
        group: run/seed label of each point; at least 2 distinct labels. Shape (N,).
        offset: fit R(d) + c.
        n_resamples: number of bootstrap resamples, ≥ 1.
        level: interval coverage in (0, 1); the bounds are the (1 ∓ level)/2 percentiles.
        seed: an int seed or a ``numpy.random.Generator`` (which is advanced); the same seed
            gives the same result.

    Returns:
        The ``BootstrapCI``. With few groups the percentile intervals under-cover (8 runs: a
        nominal 90 % interval on β covered the truth 80 % of the time in simulation); see
        docs/scaling.md.

    Raises:
        ValueError: everything ``fit`` refuses; group of the wrong length or with fewer than 2
            labels; n_resamples < 1; level outside (0, 1).
    """
    f = _get_form(form)
    point = fit(form, d, y, offset=offset)
    d_arr, y_arr = _check_xy(d, y)
    g = _check_same_length(group, "group", d_arr.size)
    if isinstance(n_resamples, bool) or not isinstance(n_resamples, int | np.integer):
        raise ValueError(f"n_resamples must be an int ≥ 1; got {n_resamples!r}")
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be ≥ 1; got {n_resamples}")
    _check_level(level)
    groups = list(_group_indices(g).values())
    if len(groups) < 2:
        raise ValueError(
            f"group must have at least 2 distinct labels to resample; got {len(groups)}"
        )
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)

    keys = [*PARAMS, *(["offset"] if offset else []), "peak_d", "peak_value"]
    samples = {k: np.full(n_resamples, np.nan) for k in keys}
    n_failed = 0
    k_min = _n_params(offset) + 1
    for r in range(n_resamples):
        draw = rng.integers(0, len(groups), size=len(groups))
        idx = np.concatenate([groups[i] for i in draw])
        res = _fit_checked(f, d_arr[idx], y_arr[idx], offset) if idx.size >= k_min else None
        if res is None:
            n_failed += 1
            continue
        for p in PARAMS:
            samples[p][r] = res.params[p]
        if offset:
            samples["offset"][r] = res.offset
        samples["peak_d"][r] = res.peak_d
        samples["peak_value"][r] = res.peak_value
    n_no_peak = int(np.isnan(samples["peak_d"]).sum()) - n_failed

    q = 100 * np.array([(1 - level) / 2, (1 + level) / 2])
    intervals: dict[str, tuple[float, float]] = {}
    for k in keys:
        vals = samples[k][~np.isnan(samples[k])]
        lo, hi = np.percentile(vals, q) if vals.size else (math.nan, math.nan)
        intervals[k] = (float(lo), float(hi))
    return BootstrapCI(
        fit=point,
        level=level,
        n_resamples=n_resamples,
        n_groups=len(groups),
        n_failed=n_failed,
        n_no_peak=n_no_peak,
        intervals=intervals,
        samples=samples,
    )


# ---------------------------------------------------------------------------------------------
# Tables
# ---------------------------------------------------------------------------------------------

Baseline = Literal["none", "gain", "offset"]


def _column(data: pd.DataFrame | Mapping[str, ArrayLike], name: str, arg: str) -> np.ndarray:
    try:
        return np.asarray(data[name])
    except KeyError:
        cols = list(data.columns) if isinstance(data, pd.DataFrame) else list(data)
        raise ValueError(f"{arg}: column {name!r} not in data; columns are {cols}") from None


def fit_table(
    data: pd.DataFrame | Mapping[str, ArrayLike],
    *,
    d: str = "d",
    y: str = "y",
    group: str | None = "group",
    step: str | None = None,
    forms: Sequence[str] = tuple(FORMS),
    baseline: Baseline = "none",
    n_resamples: int = 1000,
    level: float = 0.95,
    seed: int | np.random.Generator = 0,
) -> pd.DataFrame:
    """Fit every form to one table and return one tidy row per form.

    Args:
        data: a DataFrame, or a mapping from column name to a shape (N,) array.
        d: name of the √KL column.
        y: name of the reward / win-rate column.
        group: name of the run/seed column, or None. Needed for the bootstrap CIs and for
            ``baseline="gain"``.
        step: name of the training-step column; needed only for ``baseline="gain"``.
        forms: which forms to fit, in row order.
        baseline: how R(0) = 0 is met. "none": y already is the gain; "gain": subtract each run's
            y at its smallest step first (``gain_over_initial``); "offset": fit R(d) + c.
        n_resamples: bootstrap resamples per form; 0 (or ``group=None``) skips the CIs (NaN).
        level: CI coverage in (0, 1).
        seed: int seed or Generator; every registered form gets its own stream spawned from it,
            so a form's CI does not depend on which other forms are fitted.

    Returns:
        One row per form with columns: form, alpha, beta, offset (NaN without offset), rmse, n,
        peak_d, peak_value, then {alpha, beta, offset, peak_d, peak_value}_{lo, hi}, n_resamples,
        n_failed, n_no_peak, level.

    Raises:
        ValueError: a named column missing; baseline unknown or "gain" without group and step;
            anything ``fit`` or ``bootstrap_ci`` refuses.
    """
    if baseline not in ("none", "gain", "offset"):
        raise ValueError(f"baseline must be one of none, gain, offset; got {baseline!r}")
    if isinstance(n_resamples, bool) or not isinstance(n_resamples, int | np.integer):
        raise ValueError(f"n_resamples must be an int ≥ 0; got {n_resamples!r}")
    if n_resamples < 0:
        raise ValueError(f"n_resamples must be ≥ 0; got {n_resamples}")
    _check_level(level)
    for name in forms:
        _get_form(name)
    d_arr, y_arr = _check_xy(_column(data, d, "d"), _column(data, y, "y"))
    g = _column(data, group, "group") if group is not None else None
    if baseline == "gain":
        if g is None or step is None:
            raise ValueError('baseline="gain" needs both group and step column names')
        y_arr = gain_over_initial(y_arr, group=g, step=_column(data, step, "step"))
    offset = baseline == "offset"
    with_ci = g is not None and n_resamples > 0
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    # One stream per registered form, picked by name: a form's CI is the same whichever other
    # forms are requested alongside it.
    streams = dict(zip(FORMS, rng.spawn(len(FORMS)), strict=True))

    rows = []
    ci_keys = [*PARAMS, "offset", "peak_d", "peak_value"]
    for name in forms:
        if with_ci:
            boot = bootstrap_ci(
                name,
                d_arr,
                y_arr,
                g,
                offset=offset,
                n_resamples=n_resamples,
                level=level,
                seed=streams[name],
            )
            res, intervals = boot.fit, boot.intervals
            extra = {"n_failed": boot.n_failed, "n_no_peak": boot.n_no_peak}
        else:
            res, intervals = fit(name, d_arr, y_arr, offset=offset), {}
            extra = {"n_failed": 0, "n_no_peak": 0}
        row: dict[str, object] = {
            "form": name,
            "alpha": res.params["alpha"],
            "beta": res.params["beta"],
            "offset": math.nan if res.offset is None else res.offset,
            "rmse": res.rmse,
            "n": res.n,
            "peak_d": res.peak_d,
            "peak_value": res.peak_value,
        }
        for k in ci_keys:
            lo, hi = intervals.get(k, (math.nan, math.nan))
            row[f"{k}_lo"], row[f"{k}_hi"] = lo, hi
        row.update(n_resamples=n_resamples if with_ci else 0, **extra, level=level)
        rows.append(row)
    return pd.DataFrame(rows)


# ---------------------------------------------------------------------------------------------
# Peak prediction from early checkpoints
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PeakPrediction:
    """How well a fit on early checkpoints predicts the rest of training and its peak.

    Attributes:
        fit: the fit on the early points (step ≤ cutoff).
        cutoff: the step cutoff that was used.
        n_train: points with step ≤ cutoff.
        n_test: held-out points with step > cutoff.
        test_rmse: √(mean squared error) of the fit's prediction on the held-out points.
        predicted_peak_d: d* of the early fit (NaN if it has no interior maximum).
        predicted_peak_value: the early fit at d* (offset included); NaN with predicted_peak_d.
        observed_peak_d: d of the data point with the largest y, over all points.
        observed_peak_value: that largest y.
        peak_d_error: predicted_peak_d − observed_peak_d.
        peak_value_error: predicted_peak_value − observed_peak_value.
    """

    fit: Fit
    cutoff: float
    n_train: int
    n_test: int
    test_rmse: float
    predicted_peak_d: float
    predicted_peak_value: float
    observed_peak_d: float
    observed_peak_value: float
    peak_d_error: float
    peak_value_error: float


def predict_peak(
    form: str,
    d: ArrayLike,
    y: ArrayLike,
    step: ArrayLike,
    *,
    cutoff: float | None = None,
    fraction: float | None = None,
    offset: bool = False,
) -> PeakPrediction:
    """Fit on early checkpoints, predict the later ones, and compare predicted and observed peaks.

    Give exactly one of ``cutoff`` (fit on step ≤ cutoff) or ``fraction`` (fit on the first
    fraction of training: step ≤ min(step) + fraction · (max(step) − min(step))).

    The observed peak is the data point with the largest y over all points (early and late), the
    quantity a practitioner would read off the curve after training.

    Args:
        form: a key of ``FORMS``.
        d: √KL of each point, finite and ≥ 0. Shape (N,).
        y: reward / win rate (the gain when ``offset=False``). Shape (N,).
        step: training step (or epoch fraction) of each point, finite. Shape (N,).
        cutoff: last step used for fitting.
        fraction: share of the step range used for fitting, in (0, 1).
        offset: fit R(d) + c.

    Returns:
        The ``PeakPrediction``.

    Raises:
        ValueError: both or neither of cutoff and fraction; fraction outside (0, 1); no held-out
            points (cutoff ≥ max step); too few early points to fit; anything ``fit`` refuses.
    """
    _get_form(form)
    d_arr, y_arr = _check_xy(d, y)
    s = _as_1d(_check_same_length(step, "step", d_arr.size), "step")
    _check_finite(s, "step")
    if (cutoff is None) == (fraction is None):
        raise ValueError("give exactly one of cutoff or fraction")
    if fraction is not None:
        if not (0 < fraction < 1):
            raise ValueError(f"fraction must be in (0, 1); got {fraction!r}")
        cut = float(s.min() + fraction * (s.max() - s.min()))
    else:
        cut = float(cutoff)  # type: ignore[arg-type]
        if not math.isfinite(cut):
            raise ValueError(f"cutoff must be finite; got {cutoff!r}")
    train = s <= cut
    if train.all():
        raise ValueError(f"cutoff must be < the last step {s.max()} to leave points to predict")
    try:
        early = fit(form, d_arr[train], y_arr[train], offset=offset)
    except ValueError as e:
        raise ValueError(
            f"cutoff = {cut}: the points with step ≤ cutoff cannot be fitted: {e}"
        ) from e
    test = ~train
    resid = y_arr[test] - early.predict(d_arr[test])
    best = int(np.argmax(y_arr))
    obs_d, obs_v = float(d_arr[best]), float(y_arr[best])
    return PeakPrediction(
        fit=early,
        cutoff=cut,
        n_train=int(train.sum()),
        n_test=int(test.sum()),
        test_rmse=float(np.sqrt(np.mean(resid**2))),
        predicted_peak_d=early.peak_d,
        predicted_peak_value=early.peak_value,
        observed_peak_d=obs_d,
        observed_peak_value=obs_v,
        peak_d_error=early.peak_d - obs_d,
        peak_value_error=early.peak_value - obs_v,
    )
