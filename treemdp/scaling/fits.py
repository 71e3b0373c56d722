"""The scaling-law forms, their peaks, and exact least-squares fits (see ``treemdp.scaling``)."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike, NDArray

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
        d_min, d_max: the smallest and largest d of the fitted points (the data's range).
    """

    form: str
    params: Mapping[str, float]
    offset: float | None
    rmse: float
    n: int
    peak_d: float
    peak_value: float
    d_min: float = math.nan
    d_max: float = math.nan

    @property
    def has_peak(self) -> bool:
        """Whether the fitted curve has a finite interior maximum."""
        return math.isfinite(self.peak_d)

    @property
    def peak_in_data(self) -> bool:
        """Whether the fitted peak d* lies inside the range of the fitted points,
        d_min ≤ d* ≤ d_max. A d* before every point or beyond every point is an extrapolation
        of the form, not a peak the data show (False; also False without a peak)."""
        return self.has_peak and self.d_min <= self.peak_d <= self.d_max

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
        d_min=float(d.min()),
        d_max=float(d.max()),
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
