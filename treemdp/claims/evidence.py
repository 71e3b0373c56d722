"""The evidence every verdict goes through: intervals over seeds, power, nulls, baselines, ceilings.

Pure functions over arrays and tidy tables, shared by the claims table (``experiments/claims.py``)
and the toy-vs-LLM bridge (``experiments/llm_confirm.py --grid``). The unit of independence is a
*seed* (a new problem, new pairs and a new initialisation); a statistic gets its interval from the
spread over seeds, never from checkpoints of one run.

- ``mean_ci``, ``bootstrap_ci``: a statistic with an interval over seeds (``Estimate``).
- ``mde``, ``seeds_needed``: the smallest effect ``n`` seeds can detect; the seeds an effect needs.
- ``shuffle_within``, ``label_null``: what a per-run label gives when checkpoints are shuffled
  within runs (a trajectory-free null).
- ``cohen_kappa``, ``majority_rate``: agreement of binary labels beyond chance, and the constant
  answer's accuracy.
- ``split_seeds``: select on one half of the seeds, score on the other.
- ``split_half_ceiling``: how well any predictor can track per-setting seed means (noise ceiling).
- ``leave_one_out_baseline``: a predictor that knows only the objective and β.
- ``rank_correlation_ci``: a predictor's rank correlation with per-setting seed means, bootstrapped.
- ``verdict``: yes / no / undecided (or no data) from an interval and a bar.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.special import stdtrit  # Student-t quantile

from treemdp.claims.statistics import bootstrap_seeds, spearman, t_interval


@dataclass(frozen=True)
class Estimate:
    """A statistic with an interval over ``n`` independent units (seeds); NaN ends: no interval."""

    value: float  # the statistic on the whole sample
    low: float  # lower end of the interval
    high: float  # upper end of the interval
    n: int  # independent units (seeds) behind it


@dataclass(frozen=True)
class LabelNull:
    """A per-run label's rate beside the rate it has when checkpoints are shuffled within runs."""

    rate: float  # share of units whose label is true
    null_mean: float  # mean rate over shuffled copies
    null_low: float  # 2.5% quantile of the shuffled rates
    null_high: float  # 97.5% quantile of the shuffled rates
    p_value: float  # (1 + #shuffled rates >= rate) / (1 + permutations): one-sided
    n: int  # units (runs)


def _check_level(level: float) -> None:
    if not 0 < level < 1:
        raise ValueError(f"level must lie in (0, 1); got {level}")


def mean_ci(values: Sequence[float], *, level: float = 0.95) -> Estimate:
    """Mean of independent values with a Student-t interval (NaNs dropped).

    Example: (1, 2, 3) gives 2 and 2 ± 4.303/√3 = (-0.484, 4.484).
    """
    mean, low, high = t_interval(values, level=level)
    n = int(np.isfinite(np.asarray(values, dtype=float)).sum())
    return Estimate(mean, low, high, n)


def bootstrap_ci(
    frame: pd.DataFrame,
    statistic: Callable[[pd.DataFrame], float],
    *,
    unit: str = "seed",
    n_resamples: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> Estimate:
    """``statistic(frame)`` with a percentile interval over ``unit`` values resampled with
    replacement (a unit drawn twice is relabelled, so it counts twice in any groupby on ``unit``).

    Exact enumeration of the resamples when there are few units (see
    ``treemdp.claims.statistics.bootstrap_seeds``).
    """
    if unit not in frame.columns:
        raise ValueError(f"unit must be a column of frame; got {unit!r}")
    if unit != "seed":
        if "seed" in frame.columns:
            raise ValueError("frame has a 'seed' column besides the unit column; drop or rename it")
        renamed = frame.rename(columns={unit: "seed"})

        def restore(f: pd.DataFrame) -> float:
            return statistic(f.rename(columns={"seed": unit}))

        value, low, high = bootstrap_seeds(
            renamed, restore, n_resamples=n_resamples, level=level, seed=seed
        )
    else:
        value, low, high = bootstrap_seeds(
            frame, statistic, n_resamples=n_resamples, level=level, seed=seed
        )
    return Estimate(value, low, high, int(frame[unit].nunique()))


def mde(sd: float, n: int, *, alpha: float = 0.05, power: float = 0.8) -> float:
    """The minimal detectable effect: the smallest true mean difference that a two-sided t-test
    at level ``alpha`` detects with probability ``power`` from ``n`` independent values of
    spread ``sd``:
    (t_{1-α/2, n-1} + t_{power, n-1}) · sd / √n. Infinite with fewer than 2 values; NaN sd → NaN.

    Example: sd 1, n 20: (2.093 + 0.861) / √20 = 0.661.
    """
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must lie in (0, 1); got {alpha}")
    if not 0 < power < 1:
        raise ValueError(f"power must lie in (0, 1); got {power}")
    if not math.isfinite(sd):
        return math.nan
    if sd < 0:
        raise ValueError(f"sd must be >= 0; got {sd}")
    if n < 2:
        return math.inf
    df = n - 1
    return float((stdtrit(df, 1 - alpha / 2) + stdtrit(df, power)) * sd / math.sqrt(n))


def seeds_needed(
    effect: float, sd: float, *, alpha: float = 0.05, power: float = 0.8, max_n: int = 100_000
) -> int:
    """The smallest n ≥ 2 with ``mde(sd, n) <= |effect|``; ``max_n + 1`` when even ``max_n`` is too
    few (or the effect is 0 with sd > 0). NaN inputs raise: there is nothing to plan from."""
    if not (math.isfinite(effect) and math.isfinite(sd)):
        raise ValueError(f"effect and sd must be finite; got effect={effect}, sd={sd}")
    if max_n < 2:
        raise ValueError(f"max_n must be >= 2; got {max_n}")
    effect = abs(effect)
    if mde(sd, max_n, alpha=alpha, power=power) > effect:
        return max_n + 1
    lo, hi = 2, max_n  # mde decreases in n: find the first n that reaches the effect
    while lo < hi:
        mid = (lo + hi) // 2
        if mde(sd, mid, alpha=alpha, power=power) <= effect:
            hi = mid
        else:
            lo = mid + 1
    return lo


def _unit_blocks(table: pd.DataFrame, unit: str, order: str) -> list[np.ndarray]:
    """Row positions of each unit, sorted by ``order`` (units in sorted order)."""
    for col in (unit, order):
        if col not in table.columns:
            raise ValueError(f"{col!r} is not a column of the table")
    ordered = table.reset_index(drop=True)
    blocks = []
    for _, rows in ordered.groupby(unit, sort=True):
        blocks.append(rows.sort_values(order, kind="stable").index.to_numpy())
    return blocks


def shuffle_within(
    table: pd.DataFrame,
    *,
    unit: str = "run",
    order: str = "step",
    columns: Sequence[str],
    seed: int = 0,
) -> pd.DataFrame:
    """A copy of ``table`` (index reset) whose ``columns`` are permuted across each unit's rows:
    the unit keeps its values and its ``order`` column, but their order is random, so anything
    that depends on the trajectory is destroyed. The rows of one permutation move together
    (columns are shuffled jointly)."""
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise ValueError(f"columns not in the table: {missing}")
    rng = np.random.default_rng(seed)
    out = table.reset_index(drop=True).copy()
    values = out[list(columns)].to_numpy()
    shuffled = values.copy()
    for rows in _unit_blocks(out, unit, order):
        shuffled[rows] = values[rng.permutation(rows)]
    out[list(columns)] = shuffled
    return out


def label_null(
    table: pd.DataFrame,
    label: Callable[[Mapping[str, np.ndarray]], bool],
    *,
    unit: str = "run",
    order: str = "step",
    columns: Sequence[str],
    n_permutations: int = 200,
    seed: int = 0,
) -> LabelNull:
    """The rate of a per-run label beside its rate on copies shuffled within runs.

    ``label`` gets one unit's rows sorted by ``order`` as a mapping from ``order`` and each of
    ``columns`` to a 1-D array, and returns a bool (for example: the win rate rises and then
    falls by more than 0.02). A label that reads the trajectory has a rate well outside the
    null's interval; one that reads noise sits on it.
    """
    if n_permutations < 1:
        raise ValueError(f"n_permutations must be >= 1; got {n_permutations}")
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise ValueError(f"columns not in the table: {missing}")
    frame = table.reset_index(drop=True)
    blocks = _unit_blocks(frame, unit, order)
    if not blocks:
        raise ValueError("the table has no rows")
    steps = frame[order].to_numpy()
    values = frame[list(columns)].to_numpy(dtype=float)

    def rate(vals: np.ndarray) -> float:
        hits = 0
        for rows in blocks:
            view = {order: steps[rows]}
            view.update({c: vals[rows, j] for j, c in enumerate(columns)})
            hits += bool(label(view))
        return hits / len(blocks)

    observed = rate(values)
    rng = np.random.default_rng(seed)
    null = np.empty(n_permutations)
    for i in range(n_permutations):
        shuffled = values.copy()
        for rows in blocks:
            shuffled[rows] = values[rng.permutation(rows)]
        null[i] = rate(shuffled)
    p_value = (1 + int((null >= observed - 1e-12).sum())) / (1 + n_permutations)
    low, high = np.quantile(null, [0.025, 0.975])
    return LabelNull(observed, float(null.mean()), float(low), float(high), p_value, len(blocks))


def cohen_kappa(a: Sequence, b: Sequence) -> float:
    """Cohen's κ of two label sequences: (p_o − p_e) / (1 − p_e), with p_e from the two marginals.

    1 = perfect agreement, 0 = what independent labels with these marginals give. NaN when
    p_e = 1 (both raters constant and equal: agreement beyond chance is undefined) or no labels.
    Example: a = (1, 1, 0, 0), b = (1, 0, 0, 0): p_o = 3/4, p_e = ½·¼ + ½·¾ = ½, κ = ½.
    """
    a, b = list(a), list(b)
    if len(a) != len(b):
        raise ValueError(f"a and b must be equally long; got {len(a)} and {len(b)}")
    if not a:
        return math.nan
    n = len(a)
    p_o = sum(x == y for x, y in zip(a, b, strict=True)) / n
    labels = set(a) | set(b)
    p_e = sum((a.count(k) / n) * (b.count(k) / n) for k in labels)
    if p_e >= 1 - 1e-12:
        return math.nan
    return (p_o - p_e) / (1 - p_e)


def majority_rate(labels: Sequence) -> float:
    """Accuracy of always answering the most frequent label (NaN with no labels)."""
    labels = list(labels)
    if not labels:
        return math.nan
    return max(labels.count(k) for k in set(labels)) / len(labels)


def split_seeds(seeds: Sequence, *, seed: int = 0) -> tuple[list, list]:
    """A random half of the distinct seeds (to select on) and the rest (to score on).

    With an odd count the scoring half gets the extra seed. Both halves are sorted.
    """
    distinct = sorted(set(seeds))
    if len(distinct) < 2:
        raise ValueError(f"split_seeds needs at least 2 distinct seeds; got {len(distinct)}")
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(distinct))
    half = len(distinct) // 2
    select = sorted(distinct[i] for i in order[:half])
    score = sorted(distinct[i] for i in order[half:])
    return select, score


def _setting_means(
    table: pd.DataFrame, setting: Sequence[str], value: str, units: Sequence | None, unit: str
) -> pd.Series:
    rows = table if units is None else table[table[unit].isin(units)]
    return rows.groupby(list(setting), sort=True)[value].mean()


def split_half_ceiling(
    table: pd.DataFrame,
    *,
    setting: Sequence[str],
    value: str,
    unit: str = "seed",
    n_splits: int = 200,
    level: float = 0.95,
    seed: int = 0,
) -> Estimate:
    """The noise ceiling of predicting per-setting seed means of ``value``.

    Each split halves the seeds at random and takes the Spearman correlation r of the two halves'
    per-setting means; Spearman–Brown gives the reliability of the full-sample means,
    ρ = 2r / (1 + r), and no predictor's correlation with the full-sample means can be expected to
    exceed √ρ (the correlation a perfect predictor, the true means, has). Returns √ρ (negative
    reliabilities count as 0) as the mean over splits, with the split percentiles as interval.
    ``n`` is the number of seeds.
    """
    _check_level(level)
    if n_splits < 1:
        raise ValueError(f"n_splits must be >= 1; got {n_splits}")
    seeds = sorted(table[unit].unique())
    if len(seeds) < 4 or table.groupby(list(setting)).ngroups < 3:
        return Estimate(math.nan, math.nan, math.nan, len(seeds))
    rng = np.random.default_rng(seed)
    ceilings = []
    for _ in range(n_splits):
        a, b = split_seeds(seeds, seed=int(rng.integers(2**32)))
        ma = _setting_means(table, setting, value, a, unit)
        mb = _setting_means(table, setting, value, b, unit).reindex(ma.index)
        r = spearman(ma.to_numpy(), mb.to_numpy())
        if math.isfinite(r):
            rho = 2 * r / (1 + r) if r > -1 else 0.0
            ceilings.append(math.sqrt(max(rho, 0.0)))
    if not ceilings:
        return Estimate(math.nan, math.nan, math.nan, len(seeds))
    low, high = np.quantile(ceilings, [(1 - level) / 2, (1 + level) / 2])
    return Estimate(float(np.mean(ceilings)), float(low), float(high), len(seeds))


def leave_one_out_baseline(means: pd.DataFrame, *, value: str, group: Sequence[str]) -> pd.Series:
    """For each row (a setting) of ``means``, the mean of ``value`` over the *other* rows that
    share its ``group`` columns (e.g. objective and β): a predictor that knows only those.
    NaN where a row is alone in its group. Index aligned with ``means``.

    Example: values 1, 2, 6 in one group give baselines 4, 3.5, 1.5.
    """
    grouped = means.groupby(list(group), sort=False)[value]
    total = grouped.transform("sum")
    count = grouped.transform("count")
    others = count - means[value].notna().astype(int)
    out = (total - means[value].fillna(0.0)) / others.where(others > 0)
    return out.rename(f"{value}_baseline")


def rank_correlation_ci(
    table: pd.DataFrame,
    *,
    setting: Sequence[str],
    predicted: str,
    observed: str,
    unit: str = "seed",
    n_resamples: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> Estimate:
    """Spearman correlation between a per-setting prediction and the per-setting seed means of an
    observed quantity, with a two-way bootstrap interval: each resample draws the settings *and*
    the seeds with replacement.

    Resampling seeds alone would treat the settings as fixed, and a prediction unrelated to the
    truth has some nonzero correlation with a fixed set of true means (about ±0.3 for 12
    settings); resampling the settings too makes its interval straddle 0, as it should.

    ``table`` has one row per (setting, seed): the ``observed`` value of that seed and the
    setting's ``predicted`` value (constant within a setting). ``n`` is the number of seeds.
    """
    _check_level(level)
    if n_resamples < 0:
        raise ValueError(f"n_resamples must be >= 0; got {n_resamples}")
    for col in (*setting, predicted, observed, unit):
        if col not in table.columns:
            raise ValueError(f"{col!r} is not a column of the table")
    grid = table.pivot_table(index=list(setting), columns=unit, values=observed, aggfunc="mean")
    pred = table.groupby(list(setting))[predicted].first().reindex(grid.index).to_numpy(float)
    obs = grid.to_numpy(float)  # (S, K), NaN where a setting lacks a seed
    n_settings, n_seeds = obs.shape
    value = spearman(pred, np.nanmean(obs, axis=1))
    if n_resamples == 0 or n_seeds < 2 or n_settings < 3:
        return Estimate(value, math.nan, math.nan, n_seeds)
    rng = np.random.default_rng(seed)
    draws = []
    with np.errstate(all="ignore"):
        for _ in range(n_resamples):
            s = rng.integers(n_settings, size=n_settings)
            k = rng.integers(n_seeds, size=n_seeds)
            means = np.nanmean(obs[np.ix_(s, k)], axis=1)
            r = spearman(pred[s], means)
            if math.isfinite(r):
                draws.append(r)
    if not draws:
        return Estimate(value, math.nan, math.nan, n_seeds)
    low, high = np.quantile(draws, [(1 - level) / 2, (1 + level) / 2])
    return Estimate(value, float(low), float(high), n_seeds)


def verdict(estimate: Estimate, *, bar: float) -> str:
    """ "yes" when the whole interval lies above ``bar`` (the larger of the baseline and chance),
    "no" when it lies wholly below it, "undecided" when it straddles or has no ends, and
    "no data" when the statistic itself is NaN."""
    if not math.isfinite(estimate.value):
        return "no data"
    if math.isfinite(estimate.low) and estimate.low > bar:
        return "yes"
    if math.isfinite(estimate.high) and estimate.high < bar:
        return "no"
    return "undecided"
