"""Predicting the peak from the checkpoints before it."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike

from treemdp.scaling.fits import (
    Fit,
    FloatArray,
    _as_1d,
    _check_finite,
    _check_same_length,
    _check_xy,
    _get_form,
    fit,
)

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
    cut = _step_cutoff(s, cutoff=cutoff, fraction=fraction)
    train = s <= cut
    if train.all():
        raise ValueError(f"cutoff must be < the last step {s.max()} to leave points to predict")
    try:
        early = fit(form, d_arr[train], y_arr[train], offset=offset)
    except ValueError as e:
        raise ValueError(
            f"cutoff = {cut}: the points with step ≤ cutoff cannot be fitted: {e}"
        ) from e
    return _compare_peaks(early, cut, d_arr, y_arr, train)


def _step_cutoff(s: FloatArray, *, cutoff: float | None, fraction: float | None) -> float:
    """The last step to fit on: ``cutoff`` itself, or ``fraction`` of the way along the steps."""
    if (cutoff is None) == (fraction is None):
        raise ValueError("give exactly one of cutoff or fraction")
    if fraction is not None:
        if not (0 < fraction < 1):
            raise ValueError(f"fraction must be in (0, 1); got {fraction!r}")
        return float(s.min() + fraction * (s.max() - s.min()))
    cut = float(cutoff)  # type: ignore[arg-type]
    if not math.isfinite(cut):
        raise ValueError(f"cutoff must be finite; got {cutoff!r}")
    return cut


def _compare_peaks(
    early: Fit, cut: float, d: FloatArray, y: FloatArray, train: np.ndarray
) -> PeakPrediction:
    """The early fit's error on the held-out points (~train) and its peak against the data's."""
    test = ~train
    resid = y[test] - early.predict(d[test])
    best = int(np.argmax(y))
    obs_d, obs_v = float(d[best]), float(y[best])
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
