"""Decision rules: a verdict from a statistic and its confidence interval, never from prose.

Every rule is a pure function ``rule(value, ci_low, ci_high, **threshold) -> verdict`` with
verdict one of ``REPRODUCED``, ``REFUTED``, ``DEPENDS``. A rule reads the interval, not the point
value: a claim is *reproduced* when the whole interval lies where the claim says, *refuted* when
the whole interval lies on the other side, and it *depends* (on the seed: some seeds give it,
some do not) when the interval straddles the line. Where there is no interval (one seed, as in
the paper's LLM runs), the point value stands for both ends. A NaN value is ``NO_DATA``: the
statistic could not be computed (no runs of that kind, a win rate never judged), which says
nothing about seeds.

``combine`` turns the verdicts of one claim's settings into the claim's verdict, and
``depends_on`` names the setting factor that separates the verdicts (e.g. "size" when tabular
policies refute a claim that every network reproduces).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import pandas as pd

REPRODUCED = "reproduced"
REFUTED = "refuted"
DEPENDS = "depends"
NO_DATA = "no data"
VERDICTS = (REPRODUCED, REFUTED, DEPENDS, NO_DATA)


def _interval(value: float, ci_low: float, ci_high: float) -> tuple[float, float] | None:
    """(low, high) to decide on: the interval, or the value at both ends where the interval is
    missing (NaN); None where the value itself is missing (NaN). An infinite value or end is a
    value (a fit without a peak: d* = inf), not a missing one."""
    if value is None or math.isnan(float(value)):
        return None

    def end(x) -> float:
        return float(value) if x is None or math.isnan(float(x)) else float(x)

    lo, hi = end(ci_low), end(ci_high)
    if lo > hi:
        raise ValueError(f"ci_low must be <= ci_high; got {lo} > {hi}")
    return lo, hi


def above(value: float, ci_low: float, ci_high: float, *, threshold: float) -> str:
    """The claim "the statistic exceeds ``threshold``".

    reproduced if ci_low > threshold; refuted if ci_high <= threshold; else depends. At the
    boundary (ci_low == threshold < ci_high) the claim is not shown: depends.
    """
    span = _interval(value, ci_low, ci_high)
    if span is None:
        return NO_DATA
    lo, hi = span
    if lo > threshold:
        return REPRODUCED
    if hi <= threshold:
        return REFUTED
    return DEPENDS


def below(value: float, ci_low: float, ci_high: float, *, threshold: float) -> str:
    """The claim "the statistic is below ``threshold``".

    reproduced if ci_high < threshold; refuted if ci_low >= threshold; else depends.
    """
    span = _interval(value, ci_low, ci_high)
    if span is None:
        return NO_DATA
    lo, hi = span
    if hi < threshold:
        return REPRODUCED
    if lo >= threshold:
        return REFUTED
    return DEPENDS


def inside(value: float, ci_low: float, ci_high: float, *, low: float, high: float) -> str:
    """The claim "the statistic lies in [low, high]" (e.g. "no correlation": |ρ| ≤ 0.3).

    reproduced if low <= ci_low and ci_high <= high; refuted if the interval misses [low, high]
    entirely (ci_high < low or ci_low > high); else depends.
    """
    if not low <= high:
        raise ValueError(f"low must be <= high; got {low} > {high}")
    span = _interval(value, ci_low, ci_high)
    if span is None:
        return NO_DATA
    lo, hi = span
    if low <= lo and hi <= high:
        return REPRODUCED
    if hi < low or lo > high:
        return REFUTED
    return DEPENDS


RULES = {"above": above, "below": below, "inside": inside}
"""Rule name → function (the name and its keywords are written into claims.csv's ``rule``)."""


def describe(rule: str, **kw: float) -> str:
    """A rule as text, e.g. ``above(threshold=0.02)``: what claims.csv's ``rule`` column holds."""
    if rule not in RULES:
        raise ValueError(f"rule must be one of {', '.join(RULES)}; got {rule!r}")
    return f"{rule}({', '.join(f'{k}={v:g}' for k, v in kw.items())})"


def parse(text: str) -> tuple[str, dict[str, float]]:
    """The inverse of ``describe``: ``"above(threshold=0.02)"`` → ("above", {"threshold": 0.02})."""
    name, _, rest = text.partition("(")
    if name not in RULES or not rest.endswith(")"):
        raise ValueError(f"rule text must look like above(threshold=0.02); got {text!r}")
    kw = {}
    for part in filter(None, rest[:-1].split(",")):
        key, _, val = part.strip().partition("=")
        kw[key] = float(val)
    return name, kw


def apply(text: str, value: float, ci_low: float, ci_high: float) -> str:
    """Apply the rule written as ``text`` (``describe``'s form) to a statistic."""
    name, kw = parse(text)
    return RULES[name](value, ci_low, ci_high, **kw)


def combine(verdicts: Sequence[str]) -> str:
    """A claim's verdict over its settings: reproduced (or refuted) if every setting with data
    is; no data if none has data; else depends. ValueError for an empty list or an unknown
    verdict."""
    if not verdicts:
        raise ValueError("verdicts must hold at least one verdict")
    unknown = set(verdicts) - set(VERDICTS)
    if unknown:
        raise ValueError(f"verdicts must be among {VERDICTS}; got {sorted(unknown)}")
    verdicts = [v for v in verdicts if v != NO_DATA]
    if not verdicts:
        return NO_DATA
    if all(v == REPRODUCED for v in verdicts):
        return REPRODUCED
    if all(v == REFUTED for v in verdicts):
        return REFUTED
    return DEPENDS


def depends_on(rows: pd.DataFrame, factors: Sequence[str], *, depth: int = 3) -> str:
    """What the verdicts of one claim's setting rows depend on, as text.

    A factor *separates* when each of its levels has a single verdict. The answer is the first
    factor (in ``factors`` order) that separates, with its levels grouped by verdict, e.g.
    "size (tabular: refuted; mlp4, mlp16: reproduced)"; else the first factor with some levels
    of a single verdict, its other levels explained recursively (``depth`` levels deep), e.g.
    "policy (tabular: refuted; loglinear: beta (0.01: reproduced; 0.1, 0.5: depends))"; else
    "seed (the intervals straddle)" when every row depends, else "setting (n reproduced, m
    refuted, k depends; see the rows)".
    Empty string when all rows agree on reproduced or refuted.

    Args:
        rows: one row per setting, with a ``verdict`` column and the ``factors`` columns.
        factors: candidate factor columns, most telling first.
        depth: how many factors deep to explain.
    """
    rows = rows[rows["verdict"] != NO_DATA]
    verdicts = set(rows["verdict"])
    if verdicts == {DEPENDS}:
        return "seed (the intervals straddle)"
    if len(verdicts) == 1:
        return ""
    usable = [f for f in factors if f in rows.columns and rows[f].nunique(dropna=True) > 1]
    pure = {}
    for f in usable:
        per_level = rows.groupby(f, sort=False)["verdict"].agg(lambda v: sorted(set(v)))
        pure[f] = per_level
        if all(len(v) == 1 for v in per_level):
            return f"{f} ({_levels(per_level)})"
    if depth > 1:
        for f in usable:
            per_level = pure[f]
            single = per_level[per_level.map(len) == 1]
            if 0 < len(single) < len(per_level):
                parts = [_levels(single)] if len(single) else []
                for level, v in per_level[per_level.map(len) > 1].items():
                    inner = depends_on(rows[rows[f] == level], factors, depth=depth - 1)
                    parts.append(f"{_fmt(level)}: {inner or v[0]}")
                return f"{f} ({'; '.join(parts)})"
    counts = rows["verdict"].value_counts()
    tally = ", ".join(f"{counts[v]} {v}" for v in VERDICTS if v in counts)
    return f"setting ({tally}; see the rows)"


def _fmt(level) -> str:
    return f"{level:g}" if isinstance(level, float) else str(level)


def _levels(per_level: pd.Series) -> str:
    """ "a, b: reproduced; c: refuted" from level → [verdict]."""
    groups: dict[str, list[str]] = {}
    for level, v in per_level.items():
        groups.setdefault(v[0], []).append(_fmt(level))
    return "; ".join(f"{', '.join(levels)}: {verdict}" for verdict, levels in groups.items())
