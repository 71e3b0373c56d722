"""Bootstrap confidence intervals over runs, and every form fitted on one table."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike

from treemdp.scaling.fits import (
    FORMS,
    PARAMS,
    Fit,
    FloatArray,
    Form,
    _check_level,
    _check_same_length,
    _check_xy,
    _fit_checked,
    _get_form,
    _group_indices,
    _n_params,
    fit,
    gain_over_initial,
)

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
    groups = _resampling_groups(group, d_arr.size, n_resamples, level)
    samples, n_failed = _resample_fits(f, d_arr, y_arr, groups, offset, n_resamples, _rng(seed))
    return _bootstrap_ci_from(
        point,
        samples,
        level=level,
        n_resamples=n_resamples,
        n_groups=len(groups),
        n_failed=n_failed,
    )


def _rng(seed: int | np.random.Generator) -> np.random.Generator:
    """The Generator itself (which the caller's draws then advance), or a new one from an int."""
    return seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)


def _check_n_resamples(n_resamples: int, minimum: int) -> None:
    if isinstance(n_resamples, bool) or not isinstance(n_resamples, int | np.integer):
        raise ValueError(f"n_resamples must be an int ≥ {minimum}; got {n_resamples!r}")
    if n_resamples < minimum:
        raise ValueError(f"n_resamples must be ≥ {minimum}; got {n_resamples}")


def _resampling_groups(
    group: ArrayLike, n: int, n_resamples: int, level: float
) -> list[np.ndarray]:
    """Check ``bootstrap_ci``'s resampling arguments; the point indices of each group."""
    g = _check_same_length(group, "group", n)
    _check_n_resamples(n_resamples, minimum=1)
    _check_level(level)
    groups = list(_group_indices(g).values())
    if len(groups) < 2:
        raise ValueError(
            f"group must have at least 2 distinct labels to resample; got {len(groups)}"
        )
    return groups


def _sample_keys(offset: bool) -> list[str]:
    return [*PARAMS, *(["offset"] if offset else []), "peak_d", "peak_value"]


def _resample_fits(
    f: Form,
    d: FloatArray,
    y: FloatArray,
    groups: list[np.ndarray],
    offset: bool,
    n_resamples: int,
    rng: np.random.Generator,
) -> tuple[dict[str, FloatArray], int]:
    """Refit on ``n_resamples`` resamples of whole groups.

    Returns:
        (samples, n_failed): each of ``_sample_keys(offset)`` ↦ its resampled values, shape
        (n_resamples,), NaN where the fit failed or (peak keys) the curve has no peak; and how
        many resamples could not be fitted.
    """
    samples = {k: np.full(n_resamples, np.nan) for k in _sample_keys(offset)}
    n_failed = 0
    k_min = _n_params(offset) + 1
    for r in range(n_resamples):
        draw = rng.integers(0, len(groups), size=len(groups))
        idx = np.concatenate([groups[i] for i in draw])
        res = _fit_checked(f, d[idx], y[idx], offset) if idx.size >= k_min else None
        if res is None:
            n_failed += 1
            continue
        for p in PARAMS:
            samples[p][r] = res.params[p]
        if offset:
            samples["offset"][r] = res.offset
        samples["peak_d"][r] = res.peak_d
        samples["peak_value"][r] = res.peak_value
    return samples, n_failed


def _percentile_intervals(
    samples: Mapping[str, FloatArray], level: float
) -> dict[str, tuple[float, float]]:
    """(1 ∓ level)/2 percentiles of each key's non-NaN samples; (NaN, NaN) when there are none."""
    q = 100 * np.array([(1 - level) / 2, (1 + level) / 2])
    intervals: dict[str, tuple[float, float]] = {}
    for k, values in samples.items():
        vals = values[~np.isnan(values)]
        lo, hi = np.percentile(vals, q) if vals.size else (math.nan, math.nan)
        intervals[k] = (float(lo), float(hi))
    return intervals


def _bootstrap_ci_from(
    point: Fit,
    samples: dict[str, FloatArray],
    *,
    level: float,
    n_resamples: int,
    n_groups: int,
    n_failed: int,
) -> BootstrapCI:
    """The ``BootstrapCI`` of a point fit and its resamples (see ``_resample_fits``)."""
    return BootstrapCI(
        fit=point,
        level=level,
        n_resamples=n_resamples,
        n_groups=n_groups,
        n_failed=n_failed,
        n_no_peak=int(np.isnan(samples["peak_d"]).sum()) - n_failed,
        intervals=_percentile_intervals(samples, level),
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
        peak_d, peak_value, d_min, d_max (the range of the fitted d), peak_in_data (whether
        d_min ≤ d* ≤ d_max: a peak outside the data is an extrapolation), then
        {alpha, beta, offset, peak_d, peak_value}_{lo, hi}, n_resamples, n_failed, n_no_peak,
        level.

    Raises:
        ValueError: a named column missing; baseline unknown or "gain" without group and step;
            anything ``fit`` or ``bootstrap_ci`` refuses.
    """
    _check_table_arguments(forms, baseline, n_resamples, level)
    d_arr, y_arr, g = _table_columns(data, d=d, y=y, group=group, step=step, baseline=baseline)
    # One stream per registered form, picked by name: a form's CI is the same whichever other
    # forms are requested alongside it.
    streams = dict(zip(FORMS, _rng(seed).spawn(len(FORMS)), strict=True))
    ci_group = g if n_resamples > 0 else None  # no labels or no resamples: no CIs
    offset = baseline == "offset"
    rows = [
        _form_row(name, d_arr, y_arr, ci_group, offset, n_resamples, level, streams[name])
        for name in forms
    ]
    return pd.DataFrame(rows)


def _check_table_arguments(
    forms: Sequence[str], baseline: str, n_resamples: int, level: float
) -> None:
    if baseline not in ("none", "gain", "offset"):
        raise ValueError(f"baseline must be one of none, gain, offset; got {baseline!r}")
    _check_n_resamples(n_resamples, minimum=0)
    _check_level(level)
    for name in forms:
        _get_form(name)


def _table_columns(
    data: pd.DataFrame | Mapping[str, ArrayLike],
    *,
    d: str,
    y: str,
    group: str | None,
    step: str | None,
    baseline: Baseline,
) -> tuple[FloatArray, FloatArray, np.ndarray | None]:
    """(d, y, group) columns of ``fit_table``'s data, y as the gain when baseline="gain"."""
    d_arr, y_arr = _check_xy(_column(data, d, "d"), _column(data, y, "y"))
    g = _column(data, group, "group") if group is not None else None
    if baseline == "gain":
        if g is None or step is None:
            raise ValueError('baseline="gain" needs both group and step column names')
        y_arr = gain_over_initial(y_arr, group=g, step=_column(data, step, "step"))
    return d_arr, y_arr, g


def _form_row(
    name: str,
    d: FloatArray,
    y: FloatArray,
    group: np.ndarray | None,
    offset: bool,
    n_resamples: int,
    level: float,
    rng: np.random.Generator,
) -> dict[str, object]:
    """One ``fit_table`` row: the fit of form ``name``, with bootstrap CIs unless group is None."""
    if group is not None:
        boot = bootstrap_ci(
            name, d, y, group, offset=offset, n_resamples=n_resamples, level=level, seed=rng
        )
        res, intervals = boot.fit, boot.intervals
        counts = {
            "n_resamples": n_resamples,
            "n_failed": boot.n_failed,
            "n_no_peak": boot.n_no_peak,
        }
    else:
        res, intervals = fit(name, d, y, offset=offset), {}
        counts = {"n_resamples": 0, "n_failed": 0, "n_no_peak": 0}
    row: dict[str, object] = {
        "form": name,
        "alpha": res.params["alpha"],
        "beta": res.params["beta"],
        "offset": math.nan if res.offset is None else res.offset,
        "rmse": res.rmse,
        "n": res.n,
        "peak_d": res.peak_d,
        "peak_value": res.peak_value,
        "d_min": res.d_min,
        "d_max": res.d_max,
        "peak_in_data": res.peak_in_data,
    }
    for k in [*PARAMS, "offset", "peak_d", "peak_value"]:
        lo, hi = intervals.get(k, (math.nan, math.nan))
        row[f"{k}_lo"], row[f"{k}_hi"] = lo, hi
    return {**row, **counts, "level": level}


# ---------------------------------------------------------------------------------------------
