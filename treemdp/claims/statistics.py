"""The statistics the claims are decided on: pure functions of tidy tables, with intervals.

Tables (one row per logged checkpoint of a run):

- the *checkpoint table* of figures/checkpoints.py (``run, objective, beta, size, size_rank,
  seed, step, fraction, final, kl_reverse, kl_forward, d, d_forward, win_rate,
  reward_accuracy, loss, length, length_r2``): toy_scaling runs or LLM evaluation runs;
- an ood_mass ``metrics.csv`` (``run, objective, beta, seed, step, mass_ood, mass_in_dist``) and
  its ``responses.csv`` (``run, step, response, logp, role``).

Intervals are over seeds: a statistic is first reduced to one value per seed, then
``t_interval`` gives the mean and a Student-t interval (each seed is an independent problem:
its own features, rewards and pairs). Statistics that are not a mean of per-seed values (a
seed-mean curve, a fit) use ``bootstrap_seeds``: the seeds are resampled with replacement.
With one seed there is no interval (NaN ends).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd
from scipy.special import stdtrit  # the Student-t quantile (lighter than scipy.stats)

from treemdp import scaling


def t_interval(values: Sequence[float], *, level: float = 0.95) -> tuple[float, float, float]:
    """Mean and two-sided Student-t interval of independent values (NaNs dropped).

    Returns (mean, low, high); low = high = NaN with fewer than two values; all NaN with none.
    Example: (1, 2, 3): mean 2, sd 1, half-width t_{2, 0.975}/√3 = 4.303/1.732 = 2.484.
    """
    if not 0 < level < 1:
        raise ValueError(f"level must lie in (0, 1); got {level}")
    x = np.asarray(values, dtype=float)
    x = x[np.isfinite(x)]
    if len(x) == 0:
        return math.nan, math.nan, math.nan
    mean = float(x.mean())
    if len(x) < 2:
        return mean, math.nan, math.nan
    half = float(stdtrit(len(x) - 1, 0.5 + level / 2) * x.std(ddof=1) / math.sqrt(len(x)))
    return mean, mean - half, mean + half


def bootstrap_seeds(
    frame: pd.DataFrame,
    statistic: Callable[[pd.DataFrame], float],
    *,
    n_resamples: int = 200,
    level: float = 0.95,
    seed: int = 0,
) -> tuple[float, float, float]:
    """``statistic(frame)`` and a percentile interval over resampled seeds.

    A resample draws as many seeds as the frame has, with replacement, and stacks their rows
    (a seed drawn twice appears twice, renamed so groupings by seed keep them apart). When the
    distinct resamples (multisets of seeds) are no more than ``n_resamples`` (10 for 3 seeds, 35
    for 4), each is evaluated once and weighted by its probability: the exact bootstrap
    distribution. Otherwise ``n_resamples`` random resamples. Resamples where the statistic is NaN
    are dropped. Returns (value, low, high); NaN ends with one seed or ``n_resamples`` = 0.
    """
    if n_resamples < 0:
        raise ValueError(f"n_resamples must be >= 0; got {n_resamples}")
    if not 0 < level < 1:
        raise ValueError(f"level must lie in (0, 1); got {level}")
    value = float(statistic(frame))
    seeds = sorted(frame["seed"].unique())
    n = len(seeds)
    if n < 2 or n_resamples == 0:
        return value, math.nan, math.nan
    # Each seed's row positions: a resample is one positional take and a new seed column (a
    # concat of per-seed frames cost ~30 ms a resample at 20 seeds; this ~1 ms).
    frame = frame.reset_index(drop=True)
    codes = frame["seed"].to_numpy()
    rows = {s: np.flatnonzero(codes == s) for s in seeds}
    if math.comb(2 * n - 1, n) <= n_resamples:
        draws = list(itertools.combinations_with_replacement(seeds, n))
        weights = [
            math.factorial(n) / math.prod(math.factorial(d.count(s)) for s in set(d)) / n**n
            for d in draws
        ]
    else:
        rng = np.random.default_rng(seed)
        draws = [tuple(rng.choice(seeds, size=n, replace=True)) for _ in range(n_resamples)]
        weights = [1.0 / n_resamples] * n_resamples
    values, kept = [], []
    for drawn, w in zip(draws, weights, strict=True):
        sample = frame.take(np.concatenate([rows[s] for s in drawn])).reset_index(drop=True)
        sample["seed"] = np.repeat(np.arange(n), [len(rows[s]) for s in drawn])
        v = float(statistic(sample))
        if math.isfinite(v) or math.isinf(v):
            values.append(v)
            kept.append(w)
    if not values:
        return value, math.nan, math.nan
    return (value, *weighted_quantiles(values, kept, [(1 - level) / 2, (1 + level) / 2]))


def weighted_quantiles(
    values: Sequence[float], weights: Sequence[float], qs: Sequence[float]
) -> tuple[float, ...]:
    """Quantiles of a discrete distribution (inverted CDF: the smallest value whose cumulative
    weight reaches q). Example: values (1, 2, 3), weights (0.2, 0.5, 0.3): q = 0.1 → 1,
    q = 0.5 → 2, q = 0.75 → 3."""
    v = np.asarray(values, dtype=float)
    w = np.asarray(weights, dtype=float)
    if len(v) == 0 or len(v) != len(w) or (w < 0).any() or w.sum() <= 0:
        raise ValueError("values and weights must be equally long, non-empty, weights >= 0")
    idx = np.argsort(v, kind="stable")
    v, cum = v[idx], np.cumsum(w[idx]) / w.sum()
    out = []
    for q in qs:
        j = int(np.searchsorted(cum, q - 1e-12, side="left"))
        out.append(float(v[min(j, len(v) - 1)]))
    return tuple(out)


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman rank correlation (average ranks for ties); NaN with fewer than 3 finite pairs or
    a constant variable."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return math.nan
    return float(np.corrcoef(average_ranks(x), average_ranks(y))[0, 1])


def average_ranks(x: np.ndarray) -> np.ndarray:
    """Ranks 1..n of a 1-D array, ties given their average rank (as ``pandas.Series.rank``).
    Example: (10, 20, 20, 5) → (2, 3.5, 3.5, 1)."""
    order = np.argsort(x, kind="stable")
    sorted_x = x[order]
    # the first index of each run of equal values, and the average rank of that run
    starts = np.flatnonzero(np.r_[True, sorted_x[1:] != sorted_x[:-1]])
    ends = np.r_[starts[1:], len(x)]
    ranks = np.empty(len(x))
    ranks[order] = np.repeat((starts + ends + 1) / 2, ends - starts)
    return ranks


# ---------------------------------------------------------------------------------------------
# Per-run summaries of a checkpoint table
# ---------------------------------------------------------------------------------------------


def run_table(table: pd.DataFrame, *, fall: float = 0.02) -> pd.DataFrame:
    """One row per run of a checkpoint table: its keys and

    ``win_start`` (first checkpoint), ``win_peak``, ``win_final``, ``drop`` = peak − final,
    ``peak_fraction`` (fraction of the epoch at the first checkpoint with the peak win rate),
    ``degrade_fraction`` (``peak_fraction`` where the run then falls by more than ``fall``, else
    the run's last fraction: a run that does not fall never starts to degrade),
    ``kl_final``, ``d_final``, ``length_final``, ``length_r2_final``.
    """
    table = table.sort_values(["run", "step"])
    runs = table.groupby("run", sort=False)
    first, last = runs.head(1).set_index("run"), runs.tail(1).set_index("run")
    peak_at = table.loc[runs["win_rate"].idxmax()].set_index("run")
    keys = ["objective", "beta", "size", "size_rank", "seed"]
    out = last[keys].copy()
    out["win_start"] = first["win_rate"]
    out["win_peak"] = runs["win_rate"].max()
    out["win_final"] = last["win_rate"]
    out["drop"] = out["win_peak"] - out["win_final"]
    out["peak_fraction"] = peak_at["fraction"]
    out["degrade_fraction"] = out["peak_fraction"].where(out["drop"] > fall, last["fraction"])
    out["kl_final"] = last["kl_reverse"]
    out["d_final"] = last["d"]
    out["length_final"] = last["length"]
    out["length_r2_final"] = last["length_r2"]
    return out.reset_index()


def seed_mean_drop(table: pd.DataFrame) -> float:
    """Peak − final win rate of the seed-mean curve, averaged over β.

    Per β, the win rate is averaged over seeds at each step (every seed of a β logs the same
    steps), and the drop is that curve's maximum minus its last value.
    """
    drops = []
    for _, g in table.groupby("beta"):
        curve = g.groupby("step")["win_rate"].mean().sort_index()
        drops.append(curve.max() - curve.iloc[-1])
    return float(np.mean(drops)) if drops else math.nan


def fit_rmse_ratio(table: pd.DataFrame, *, x: str = "d", final: bool = False) -> float:
    """RMSE of the RL form d(α − β log d) over that of the quadratic-in-KL form, both fitted by
    least squares to the win-rate gain over each run's first checkpoint against ``x``; NaN when
    either fit is impossible (too few points)."""
    start = table.sort_values("step").groupby("run")["win_rate"].transform("first")
    points = table.assign(gain=table["win_rate"] - start)
    if final:
        points = points[points["final"]]
    try:
        rl = scaling.fit("rl", points[x].to_numpy(), points["gain"].to_numpy())
        quad = scaling.fit("quadratic_kl", points[x].to_numpy(), points["gain"].to_numpy())
    except ValueError:
        return math.nan
    return rl.rmse / quad.rmse if quad.rmse > 0 else math.nan


def fitted_peak_ratio(table: pd.DataFrame, *, x: str = "d") -> float:
    """d* of the RL form fitted to the final checkpoints' win-rate gain, over the largest d of
    the data (< 1: the fitted peak lies inside the data); inf when the fit has no peak."""
    start = table.sort_values("step").groupby("run")["win_rate"].transform("first")
    points = table.assign(gain=table["win_rate"] - start)
    points = points[points["final"]]
    try:
        f = scaling.fit("rl", points[x].to_numpy(), points["gain"].to_numpy())
    except ValueError:
        return math.nan
    top = points[x].max()
    return f.peak_d / top if f.has_peak and top > 0 else math.inf


# ---------------------------------------------------------------------------------------------
# Matching runs of two objectives
# ---------------------------------------------------------------------------------------------


def match_runs(
    a: pd.DataFrame,
    b: pd.DataFrame,
    *,
    on: str,
    tolerance: float,
    log: bool = False,
    within: Sequence[str] = ("size", "seed"),
) -> pd.DataFrame:
    """Pair each run of ``a`` with the run of ``b`` (same ``within`` keys) closest in ``on``.

    Used to compare objectives at matched KL (``on="kl_final"``, ``log=True``: distance
    |log KL_a − log KL_b|) or matched final win rate (``on="win_final"``). Pairs farther apart
    than ``tolerance`` are dropped. Returns the paired rows, ``a`` columns suffixed ``_a``, ``b``'s
    ``_b``, plus ``gap`` (the distance).
    """
    rows = []
    for key, ga in a.groupby(list(within)):
        key = key if isinstance(key, tuple) else (key,)
        mask = np.logical_and.reduce([b[c] == k for c, k in zip(within, key, strict=True)])
        gb = b[mask]
        if gb.empty:
            continue
        vb = gb[on].to_numpy(dtype=float)
        for _, ra in ga.iterrows():
            va = float(ra[on])
            if log:
                with np.errstate(divide="ignore"):
                    dist = np.abs(np.log(np.maximum(vb, 1e-300)) - math.log(max(va, 1e-300)))
            else:
                dist = np.abs(vb - va)
            j = int(np.argmin(dist))
            if dist[j] > tolerance:
                continue
            rb = gb.iloc[j]
            row = {f"{c}_a": ra[c] for c in a.columns} | {f"{c}_b": rb[c] for c in b.columns}
            row |= {c: k for c, k in zip(within, key, strict=True)}
            rows.append(row | {"gap": float(dist[j])})
    return pd.DataFrame(rows)


# ---------------------------------------------------------------------------------------------
# ood_mass tables
# ---------------------------------------------------------------------------------------------


def ood_growth(metrics: pd.DataFrame) -> pd.DataFrame:
    """Per run: ``ood_gain`` = final − initial OOD mass, ``in_dist_fall`` = peak − final
    in-distribution mass (the paper's "-indist" figures: it falls), with the run's keys."""
    metrics = metrics.sort_values(["run", "step"])
    runs = metrics.groupby("run", sort=False)
    first, last = runs.head(1).set_index("run"), runs.tail(1).set_index("run")
    keys = [c for c in ("policy", "objective", "beta", "seed") if c in metrics.columns]
    out = last[keys].copy()
    out["ood_gain"] = last["mass_ood"] - first["mass_ood"]
    out["in_dist_fall"] = runs["mass_in_dist"].max() - last["mass_in_dist"]
    return out.reset_index()


def effective_ood_number(responses: pd.DataFrame) -> pd.Series:
    """Per run, at its last logged step: the effective number of OOD responses,
    (Σ p)² / Σ p² over responses with role "ood" (1 when one response holds all the OOD mass,
    n when n share it equally). Index: run."""
    last = responses.groupby("run")["step"].transform("max")
    ood = responses[(responses["step"] == last) & (responses["role"] == "ood")]
    p = np.exp(ood["logp"].astype(float))
    sums = p.groupby(ood["run"]).sum()
    squares = (p**2).groupby(ood["run"]).sum()
    return (sums**2 / squares).rename("n_eff")
