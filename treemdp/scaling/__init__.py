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

Modules: ``fits`` (forms, peaks, least-squares fits), ``bootstrap`` (confidence intervals over
runs, ``fit_table``), ``prediction`` (the peak from early checkpoints); every public name is
importable from ``treemdp.scaling``.
"""

from treemdp.scaling.bootstrap import BootstrapCI, bootstrap_ci, fit_table
from treemdp.scaling.fits import FORMS, Fit, Form, evaluate, fit, gain_over_initial, peak
from treemdp.scaling.prediction import PeakPrediction, predict_peak

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
