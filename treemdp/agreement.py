"""Toy against LLM on a grid of cells: which side degrades, where they agree (with Wilson
intervals), and which toy capacity's trajectory is closest to each LLM run.

Pure functions from tidy tables to tidy tables (``experiments/confirm_grid.py`` writes the
tables they read; ``figures/confirm_grid.py`` draws what they return).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

from treemdp.claims.evidence import cohen_kappa, majority_rate

__all__ = [
    "CELL",
    "GROUPINGS",
    "METRIC_COLUMNS",
    "agreement",
    "cells_table",
    "closest_by_size",
    "closest_toy",
    "summarise",
    "trajectory_distance",
    "wilson",
]

CELL = ["regime", "objective", "beta", "lr", "seed", "size"]
"""The columns that name one cell of the grid."""
METRIC_COLUMNS = [
    "mass_ood", "mass_in_dist", "kl_reverse", "kl_forward", "win_rate", "p_chosen", "p_rejected",
]  # fmt: skip
"""The exact metrics every trajectory row holds."""
Z95 = 1.959963984540054  # the standard normal's 97.5% quantile


def summarise(trajectories: pd.DataFrame, margin: float) -> pd.DataFrame:
    """One row per run (regime, objective, β, lr, seed, size, side): OOD mass at start and end,
    in-distribution mass at start, peak and end, final KL and win rate, and ``degrades`` (OOD
    mass up by >= margin and in-distribution mass >= margin below its peak at the end).

    Args:
        trajectories: rows of ``CELL`` + side, fraction and the metrics (toy rows: lr NaN,
            size "").
        margin: > 0.
    """
    if not margin > 0:
        raise ValueError(f"margin must be > 0; got {margin}")
    t = trajectories.sort_values("fraction", kind="stable")
    keys = [*CELL, "side"]
    g = t.groupby(keys, sort=False, dropna=False)
    out = pd.DataFrame(
        {
            "mass_ood_start": g["mass_ood"].first(),
            "mass_ood_final": g["mass_ood"].last(),
            "mass_in_dist_start": g["mass_in_dist"].first(),
            "mass_in_dist_peak": g["mass_in_dist"].max(),
            "mass_in_dist_final": g["mass_in_dist"].last(),
            "kl_reverse_final": g["kl_reverse"].last(),
            "win_rate_final": g["win_rate"].last(),
        }
    ).reset_index()
    out["degrades"] = (out["mass_ood_final"] - out["mass_ood_start"] >= margin) & (
        out["mass_in_dist_peak"] - out["mass_in_dist_final"] >= margin
    )
    return out


def cells_table(summary: pd.DataFrame) -> pd.DataFrame:
    """A row per cell and side: the LLM runs' rows, and for each the toy capacities' rows of the
    same (regime, seed, objective, β) with the cell's lr and size filled in, ``llm_degrades``
    and ``agrees`` (both degrade, or neither)."""
    llm = summary[summary["side"] == "llm"]
    toy = summary[summary["side"] != "llm"].drop(columns=["lr", "size"])
    shared = ["regime", "objective", "beta", "seed"]
    toy = llm[CELL].merge(toy, on=shared, how="inner")
    toy = toy.merge(llm[[*CELL, "degrades"]].rename(columns={"degrades": "llm_degrades"}), on=CELL)
    toy["agrees"] = toy["degrades"] == toy["llm_degrades"]
    both = pd.concat([llm.assign(llm_degrades=llm["degrades"], agrees=np.nan), toy])
    order = {s: i for i, s in enumerate(dict.fromkeys(["llm", *summary["side"]]))}
    both = both.sort_values(
        [*CELL, "side"], key=lambda c: c.map(order) if c.name == "side" else c, kind="stable"
    )
    return both[[*CELL, "side", *[c for c in both.columns if c not in (*CELL, "side")]]]


def wilson(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion k/n (95% by default); (nan, nan) if n=0."""
    if n == 0:
        return math.nan, math.nan
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


GROUPINGS = (
    ("objective", "size", "lr", "beta"),
    ("objective", "size"),
    ("objective",),
    ("size",),
    ("lr",),
    (),
)


def agreement(cells: pd.DataFrame) -> pd.DataFrame:
    """Agreement of each toy capacity with the LLM, per group of cells.

    Args:
        cells: ``cells_table`` rows (toy rows carry ``degrades``, ``llm_degrades``, ``agrees``).

    Returns:
        One row per (toy, regime) and group: the finest groups (objective, size, lr, beta),
        then by objective and size, by objective, by size, by lr, and over all cells ("all"
        where a key is pooled); columns toy, regime, objective, size, lr, beta, cells, agree,
        rate, ci_low, ci_high (95% Wilson score interval), toy_degrades and llm_degrades (cells
        where each side degrades), majority_rate (the rate of always giving the LLM's more
        frequent answer: the bar raw agreement must clear) and kappa (Cohen's κ; NaN when both
        sides give one constant answer). Raw agreement is no verdict: ``treemdp.bridge`` is.
    """
    toy = cells[cells["side"] != "llm"]
    rows = []
    for keys in GROUPINGS:
        by = ["side", "regime", *keys]
        for values, g in toy.groupby(by, sort=False):
            named = dict(zip(by, values, strict=True))
            n, k = len(g), int(g["agrees"].sum())
            lo, hi = wilson(k, n)
            row = {"toy": named["side"], "regime": named["regime"]}
            row.update({key: named.get(key, "all") for key in ("objective", "size", "lr", "beta")})
            row.update(
                cells=n,
                agree=k,
                rate=k / n,
                ci_low=lo,
                ci_high=hi,
                toy_degrades=int(g["degrades"].sum()),
                llm_degrades=int(g["llm_degrades"].sum()),
                majority_rate=majority_rate(g["llm_degrades"].astype(bool).tolist()),
                kappa=cohen_kappa(
                    g["degrades"].astype(bool).tolist(), g["llm_degrades"].astype(bool).tolist()
                ),
            )
            rows.append(row)
    return pd.DataFrame(rows)


def trajectory_distance(llm: pd.DataFrame, toy: pd.DataFrame) -> float:
    """Distance between an LLM run's trajectory and a toy run's: the root mean square, over the
    LLM's checkpoints and three quantities, of the differences in OOD mass, in-distribution
    mass and 1 − exp(−KL(π‖π_ref)) (KL mapped to [0, 1) like the masses), the toy's values
    interpolated linearly in the fraction of training at the LLM's checkpoints.

    Args:
        llm: one run's rows with fraction, mass_ood, mass_in_dist, kl_reverse.
        toy: the same columns for one toy run.
    """
    x = toy.sort_values("fraction")
    at = llm["fraction"].to_numpy(dtype=float)
    diffs = []
    for m in ("mass_ood", "mass_in_dist", "kl_reverse"):
        theirs = np.interp(at, x["fraction"].to_numpy(dtype=float), x[m].to_numpy(dtype=float))
        ours = llm[m].to_numpy(dtype=float)
        if m == "kl_reverse":
            theirs, ours = -np.expm1(-theirs), -np.expm1(-ours)
        diffs.append(ours - theirs)
    return float(np.sqrt(np.mean(np.square(np.concatenate(diffs)))))


def closest_toy(trajectories: pd.DataFrame) -> pd.DataFrame:
    """For each LLM run, the toy capacity whose trajectory (same regime, seed, objective, β) is
    closest (``trajectory_distance``), its distance, and the runner-up's.

    Returns:
        One row per LLM run: regime, objective, beta, lr, seed, size, closest, distance,
        runner_up, runner_up_distance (ties go to the capacity listed first).
    """
    toys = trajectories[trajectories["side"] != "llm"]
    toy_groups = {
        k: g for k, g in toys.groupby(["regime", "seed", "objective", "beta"], sort=False)
    }
    rows = []
    for key, run_rows in trajectories[trajectories["side"] == "llm"].groupby(CELL, sort=False):
        cell = dict(zip(CELL, key, strict=True))
        group = toy_groups.get((cell["regime"], cell["seed"], cell["objective"], cell["beta"]))
        if group is None:
            continue
        dist = [
            (trajectory_distance(run_rows, g), side)
            for side, g in group.groupby("side", sort=False)
        ]
        ranked = sorted(dist, key=lambda d: d[0])  # stable: ties keep the capacity order
        best = ranked[0]
        second = ranked[1] if len(ranked) > 1 else (math.nan, "")
        rows.append(
            {
                **cell,
                "closest": best[1],
                "distance": best[0],
                "runner_up": second[1],
                "runner_up_distance": second[0],
            }
        )
    return pd.DataFrame(rows)


def closest_by_size(closest: pd.DataFrame, capacities: Sequence[str]) -> pd.DataFrame:
    """Per size and regime, per toy capacity: how many LLM runs it is closest to (share of the
    size's runs) and the mean distance over those runs (NaN where it is closest to none)."""
    rows = []
    for (size, regime), g in closest.groupby(["size", "regime"], sort=False):
        for cap in capacities:
            mine = g[g["closest"] == cap]
            rows.append(
                {
                    "size": size,
                    "regime": regime,
                    "toy": cap,
                    "runs": len(mine),
                    "share": len(mine) / len(g),
                    "mean_distance": mine["distance"].mean() if len(mine) else math.nan,
                }
            )
    return pd.DataFrame(rows)
