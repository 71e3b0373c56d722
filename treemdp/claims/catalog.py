"""The paper's claims, each as a statistic per setting and a decision rule.

``evaluate_checkpoints(table)`` evaluates the claims a checkpoint table can decide (3–9: the
over-optimization curves, fits, objectives, epoch, accuracy, length, R-DPO), on the toy or on
LLM runs alike; ``evaluate_ood(metrics, responses)`` the Tree-MDP claims (1, 2);
``evaluate_theory()`` Proposition 1. Each returns *setting rows*: one per (claim, setting) with
``claim, statistic, value, ci_low, ci_high, setting, verdict, rule`` and the setting's factor
columns. ``summarise`` adds one row per claim: its verdict combined over the settings
(``rules.combine``) and the factor it depends on (``rules.depends_on``).

Claim texts are in ``CLAIMS``; the rule of each claim (a threshold on the statistic's interval)
in ``RULE``. Both are data: the verdict is only ever ``rules.apply(RULE[claim], ...)``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import pandas as pd
from scipy.special import stdtrit

from treemdp.claims import evidence, rules
from treemdp.claims import statistics as st

CLAIMS = {
    "1": "DAAs move probability mass out of distribution (Tree MDP, one pair)",
    "1b": "the in-distribution responses' probability falls during training",
    "2": "at low β the OOD mass concentrates on a few responses",
    "3a": "win rate vs √KL rises then falls (per run)",
    "3b": "win rate vs √KL rises then falls (seed-mean curves)",
    "3c": "the fitted RL-form curve peaks inside the data (final checkpoints)",
    "4": "the RL form d(α − β log d) halves the RMSE of a quadratic-in-KL fit",
    "5a": "IPO keeps KL lowest",
    "5b": "IPO over-optimizes least",
    "6a": "wide-KL (lowest-β) runs peak after about 25% of the epoch",
    "6b": "larger models degrade less",
    "6c": "degradation starts before one epoch ends (the win rate peaks inside the epoch)",
    "7a": "implicit-reward accuracy does not predict win rate (within a size)",
    "7b": "training loss does not predict win rate (within a size)",
    "8a": "smaller models lean more on length (R² of log-ratio on length)",
    "8b": "tighter KL budgets lean more on length",
    "9a": "R-DPO does not cure over-optimization (its runs still fall)",
    "9b": "R-DPO shifts the win-rate-vs-KL frontier up",
    "9c": "R-DPO shifts the length-vs-KL frontier down",
    "P1": "Proposition 1: a policy with nearly all mass OOD reaches the same DPO loss",
}
"""Claim id → the paper's claim (PAPER.md §2–4 and the findings of §3)."""

STATISTIC = {
    "1": "final − initial OOD mass",
    "1b": "peak − final in-distribution mass",
    "2": "effective number of OOD responses (Σp)²/Σp² at the end, lowest β",
    "3a": "peak − final win rate of a run, mean over β",
    "3b": "peak − final win rate of the seed-mean curve, mean over β",
    "3c": "fitted d* / largest d (RL form, final checkpoints)",
    "4": "RMSE(rl) / RMSE(quadratic in KL)",
    "5a": "final KL(other) − final KL(IPO)",
    "5b": "drop(other) − drop(IPO) (drop: peak − final win rate)",
    "6a": "fraction of the epoch at the win-rate peak, lowest β",
    "6b": "Spearman ρ(size rank, drop) over model sizes",
    "6c": "epoch fraction at the peak before a fall > 0.02 (1: no fall), mean over β",
    "7a": "Spearman ρ(accuracy, win rate), checkpoints of all β",
    "7b": "Spearman ρ(loss, win rate) within each β, mean over β",
    "8a": "Spearman ρ(size rank, final length R²) over model sizes",
    "8b": "Spearman ρ(final KL, final length R²) over β",
    "9a": "R-DPO peak − final win rate, mean over β",
    "9b": "final win rate(R-DPO) − (DPO), matched final KL",
    "9c": "final length(DPO) − (R-DPO), matched final KL",
    "P1": "max |loss(ε, ε, 1−2ε) − loss(½, ½, 0)| over ε ∈ {1e-2, 1e-6, 1e-12, 1e-100}",
}
"""Claim id → the statistic that decides it."""

FALL = 0.02
"""A win-rate fall smaller than this is noise (the minibatch wiggle), not over-optimization."""
NO_PREDICTION = 0.3
"""|ρ| at most this: "does not predict"."""

RULE = {
    "1": rules.describe("above", threshold=0.05),
    "1b": rules.describe("above", threshold=0.05),
    "2": rules.describe("below", threshold=2.0),
    "3a": rules.describe("above", threshold=FALL),
    "3b": rules.describe("above", threshold=FALL),
    "3c": rules.describe("below", threshold=1.0),
    "4": rules.describe("below", threshold=0.6),
    "5a": rules.describe("above", threshold=0.0),
    "5b": rules.describe("above", threshold=0.0),
    "6a": rules.describe("inside", low=0.1, high=0.4),
    "6b": rules.describe("below", threshold=0.0),
    "6c": rules.describe("below", threshold=1.0),
    "7a": rules.describe("inside", low=-NO_PREDICTION, high=NO_PREDICTION),
    "7b": rules.describe("inside", low=-NO_PREDICTION, high=NO_PREDICTION),
    "8a": rules.describe("below", threshold=0.0),
    "8b": rules.describe("below", threshold=0.0),
    "9a": rules.describe("above", threshold=FALL),
    "9b": rules.describe("above", threshold=0.0),
    "9c": rules.describe("above", threshold=0.0),
    "P1": rules.describe("below", threshold=1e-9),
}
"""Claim id → its decision rule (``rules.describe`` text; "halves" is read as ≤ 0.6)."""

FACTORS = (
    "source",
    "variant",
    "policy",
    "objective",
    "comparator",
    "matched",
    "size",
    "kl",
    "checkpoints",
    "beta",
)
"""Setting factor columns, most telling first (``rules.depends_on`` tries them in this order)."""
COLUMNS = ("claim", "statistic", "value", "ci_low", "ci_high", "setting", "verdict", "rule")
"""claims.csv's leading columns (the factor columns and ``depends_on`` follow)."""

KL_MATCH = math.log(1.5)
"""Runs count as matched in KL when their final KLs differ by at most a factor 1.5."""
WIN_MATCH = 0.02
"""Runs count as matched in final win rate within 0.02."""
SINGLE_FAMILY = ("tabular", "loglinear")
"""Toy capacities outside the network family: left out of "model size" trends (6b, 8a)."""


class Stat(NamedTuple):
    """A statistic over seeds: its value and 95 % interval, the seeds behind it and the spread
    of one seed's value (``sd``: what the power columns are computed from)."""

    value: float
    low: float
    high: float
    n: int = 0
    sd: float = math.nan


MAX_SEEDS = 100_000
"""``evidence.seeds_needed``'s ceiling: more seeds than this reads "> 100000"."""


def distance_to_rule(rule: str, value: float) -> float:
    """How far the value lies from the line its rule draws: value − threshold (above, below),
    the distance to the nearer end (inside); the effect the seeds must resolve."""
    name, kw = rules.parse(rule)
    if name == "inside":
        return min(abs(value - kw["low"]), abs(value - kw["high"]))
    return value - kw["threshold"]


def make_row(
    claim: str, value: float, low: float, high: float, n: int = 0, sd: float = math.nan,
    **factors,
) -> dict:  # fmt: skip
    """A setting row: the statistic, its interval, the verdict by the claim's rule, and its power:
    ``n_seeds`` (the seeds behind the interval), ``mde`` (the smallest effect a t-test at 5 %
    detects with power 0.8 from ``n`` seeds of spread ``sd``: ``evidence.mde``) and, where the
    interval straddles the rule's line, ``seeds_needed`` to decide it at the observed spread
    (``evidence.seeds_needed`` of the value's distance to the line; NaN elsewhere)."""
    setting = ", ".join(f"{k}={_fmt(v)}" for k, v in factors.items())
    verdict = rules.apply(RULE[claim], value, low, high)
    power = evidence.mde(float(sd), int(n)) if n and math.isfinite(sd) else math.nan
    needed = math.nan
    if verdict == rules.DEPENDS and math.isfinite(sd) and math.isfinite(value):
        needed = evidence.seeds_needed(distance_to_rule(RULE[claim], value), sd, max_n=MAX_SEEDS)
    return {
        "claim": claim,
        "statistic": STATISTIC[claim],
        "value": value,
        "ci_low": low,
        "ci_high": high,
        "setting": setting,
        "verdict": verdict,
        "rule": RULE[claim],
        "n_seeds": int(n),
        "mde": power,
        "seeds_needed": needed,
        **factors,
    }


def _fmt(v) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def _per_seed(values: pd.Series) -> Stat:
    """Mean and t interval over a Series indexed (or grouped) by seed (``evidence.mean_ci``),
    with the seeds' spread."""
    est = evidence.mean_ci(values.to_numpy())
    x = values.to_numpy(dtype=float)
    x = x[np.isfinite(x)]
    sd = float(x.std(ddof=1)) if len(x) >= 2 else math.nan
    return Stat(est.value, est.low, est.high, est.n, sd)


def _boot(frame: pd.DataFrame, statistic, n_resamples: int) -> Stat:
    """A statistic that is not a mean of per-seed values (a seed-mean curve, a fit) with its
    bootstrap interval over seeds (``evidence.bootstrap_ci``). Its ``sd`` is the spread per seed
    that a t interval of this width would have: (high − low) / (2 t_{0.975, n−1}) · √n."""
    est = evidence.bootstrap_ci(frame, statistic, n_resamples=n_resamples)
    sd = math.nan
    if est.n >= 2 and math.isfinite(est.low) and math.isfinite(est.high):
        t = float(stdtrit(est.n - 1, 0.975))
        sd = (est.high - est.low) / (2 * t) * math.sqrt(est.n)
    return Stat(est.value, est.low, est.high, est.n, sd)


# ---------------------------------------------------------------------------------------------
# Claims from a checkpoint table (toy or LLM)
# ---------------------------------------------------------------------------------------------


def evaluate_checkpoints(
    table: pd.DataFrame,
    *,
    source: str = "toy",
    n_resamples: int = 200,
    only: Sequence[str] | None = None,
    nulls: bool = False,
) -> pd.DataFrame:
    """Setting rows of claims 3–9 on a checkpoint table (figures/checkpoints.py COLUMNS).

    Claims needing what the table lacks are left out (5 without IPO, 9 without R-DPO, 8 where
    ``length_r2`` is all NaN, 6b and 8a with fewer than three model sizes of one family).
    ``only``: evaluate just these claim ids (default: all). ``nulls``: beside each 3a row, the
    per-run flag "rises then falls" (peak − start and peak − final both > ``FALL``) as a rate
    over runs and the rate shuffled checkpoints give (``evidence.label_null``: columns
    ``flag_rate``, ``null_rate``, ``null_low``, ``null_high``, ``null_p``).

    Runs are pooled as seeds only within a setting: a table with several ``variant`` values
    (runs of one size, objective and β whose configurations differ in more than the seed,
    ``treemdp.runs.identity``) is evaluated per variant, each row naming its variant (a
    ``variant`` factor column and ``variant=(...)`` in ``setting``).
    """
    variants = list(dict.fromkeys(table["variant"])) if "variant" in table.columns else [""]
    if len(variants) > 1 or variants[0] != "":
        parts = []
        for variant in variants:
            rows = evaluate_checkpoints(
                table[table["variant"] == variant].assign(variant=""),
                source=source, n_resamples=n_resamples, only=only, nulls=nulls,
            )  # fmt: skip
            if len(rows):
                rows["setting"] = rows["setting"] + f", variant=({variant})"
                parts.append(rows.assign(variant=variant))
        return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()
    runs = st.run_table(table, fall=FALL)
    rows: list[dict] = []

    def want(claim: str) -> bool:
        return only is None or claim in only

    paper = [o for o in ("dpo", "ipo", "slic") if o in set(table["objective"])]
    sizes = list(table.drop_duplicates("size").sort_values("size_rank")["size"])
    family = [s for s in sizes if s not in SINGLE_FAMILY]
    lowest = table["beta"].min()
    for objective in paper:
        for size in sizes:
            rows += [
                make_row(claim, *value, source=source, objective=objective, size=size, **extra)
                for claim, value, extra in _cell_claims(
                    table[(table["objective"] == objective) & (table["size"] == size)],
                    runs[(runs["objective"] == objective) & (runs["size"] == size)],
                    lowest=lowest,
                    n_resamples=n_resamples,
                    want=want,
                )
            ]
        if len(family) >= 3 and (want("6b") or want("8a")):
            r = runs[(runs["objective"] == objective) & runs["size"].isin(family)]
            per = r.groupby(["seed", "size_rank"])[["drop", "length_r2_final"]].mean().reset_index()
            cell = {"source": source, "objective": objective, "size": "/".join(family)}
            if want("6b"):
                rho = per.groupby("seed").apply(
                    lambda g: st.spearman(g["size_rank"], g["drop"]), include_groups=False
                )
                rows.append(make_row("6b", *_per_seed(rho), **cell))
            if want("8a") and per["length_r2_final"].notna().any():
                rho = per.groupby("seed").apply(
                    lambda g: st.spearman(g["size_rank"], g["length_r2_final"]),
                    include_groups=False,
                )
                rows.append(make_row("8a", *_per_seed(rho), **cell))
    if nulls and want("3a"):
        for row in rows:
            if row["claim"] == "3a":
                cell = table[
                    (table["objective"] == row["objective"]) & (table["size"] == row["size"])
                ]
                row |= flag_null(cell)
    if "ipo" in paper and (want("5a") or want("5b")):
        rows += [r for r in _ipo_rows(runs, sizes, source) if want(r["claim"])]
    if "rdpo" in set(table["objective"]) and "dpo" in paper and any(map(want, ("9a", "9b", "9c"))):
        rows += [r for r in _rdpo_rows(runs, sizes, source) if want(r["claim"])]
    return pd.DataFrame(rows)


def rises_then_falls(run: dict) -> bool:
    """The per-run flag: the win rate rises above its start and falls from its peak to its end,
    each by more than ``FALL`` (``run``: one run's ``win_rate`` in step order)."""
    win = np.asarray(run["win_rate"], dtype=float)
    if len(win) < 3 or not np.isfinite(win).all():
        return False
    return bool(win.max() - win[0] > FALL and win.max() - win[-1] > FALL)


def flag_null(cell: pd.DataFrame, n_permutations: int = 200) -> dict:
    """The rate of ``rises_then_falls`` over a cell's runs beside its rate with each run's
    checkpoints shuffled (``evidence.label_null``): a flag that noise raises as often is no
    evidence of over-optimization."""
    null = evidence.label_null(
        cell, rises_then_falls, unit="run", order="step", columns=["win_rate"],
        n_permutations=n_permutations,
    )  # fmt: skip
    return {"flag_rate": null.rate, "null_rate": null.null_mean, "null_low": null.null_low,
            "null_high": null.null_high, "null_p": null.p_value}  # fmt: skip


def _cell_claims(sub: pd.DataFrame, r: pd.DataFrame, *, lowest: float, n_resamples: int, want):
    """(claim, (value, low, high), extra factors) of claims 3, 4, 6a, 7, 8b for one (objective,
    size): ``sub`` its checkpoints, ``r`` its runs (``statistics.run_table``)."""
    out = []
    if want("3a"):
        out.append(("3a", _per_seed(r.groupby("seed")["drop"].mean()), {}))
    if want("3b"):
        out.append(("3b", _boot(sub, st.seed_mean_drop, n_resamples), {}))
    if want("3c"):
        v = _boot(sub, st.fitted_peak_ratio, n_resamples)
        out.append(("3c", v, {}))
    if want("4"):
        for kl, x in (("reverse", "d"), ("forward", "d_forward")):
            for which in ("final", "all"):

                def ratio(t, x=x, which=which):
                    return st.fit_rmse_ratio(t, x=x, final=which == "final")

                v = _boot(sub, ratio, n_resamples)
                out.append(("4", v, {"kl": kl, "checkpoints": which}))
    if want("6a"):
        low = r[r["beta"] == lowest]
        out.append(("6a", _per_seed(low.groupby("seed")["peak_fraction"].mean()), {}))
    if want("6c"):
        out.append(("6c", _per_seed(r.groupby("seed")["degrade_fraction"].mean()), {}))
    pts = sub[sub["step"] > 0]
    if want("7a"):
        acc = pts.groupby("seed").apply(
            lambda g: st.spearman(g["reward_accuracy"], g["win_rate"]), include_groups=False
        )
        out.append(("7a", _per_seed(acc), {}))
    if want("7b"):  # per β: the loss's scale changes with β (IPO's by ~10⁴ over the grid)
        loss = pts.groupby("seed").apply(
            lambda g: np.nanmean(
                [st.spearman(b["loss"], b["win_rate"]) for _, b in g.groupby("beta")]
            ),
            include_groups=False,
        )
        out.append(("7b", _per_seed(loss), {}))
    if want("8b") and r["length_r2_final"].notna().any():
        rho = r.groupby("seed").apply(
            lambda g: st.spearman(g["kl_final"], g["length_r2_final"]), include_groups=False
        )
        out.append(("8b", _per_seed(rho), {}))
    return out


def _paired(a: pd.DataFrame, b: pd.DataFrame, matched: str) -> pd.DataFrame:
    """Runs of ``a`` paired with ``b``'s at matched β, final KL or final win rate."""
    if matched == "beta":
        return st.match_runs(a, b, on="beta", tolerance=1e-12)
    if matched == "KL":
        return st.match_runs(a, b, on="kl_final", tolerance=KL_MATCH, log=True)
    return st.match_runs(a, b, on="win_final", tolerance=WIN_MATCH)


def _ipo_rows(runs: pd.DataFrame, sizes: Sequence[str], source: str) -> list[dict]:
    """Claim 5: IPO against DPO and SLiC, at matched β and at matched KL / final win rate."""
    rows = []
    for size in sizes:
        ipo = runs[(runs["objective"] == "ipo") & (runs["size"] == size)]
        for other in ("dpo", "slic"):
            b = runs[(runs["objective"] == other) & (runs["size"] == size)]
            if ipo.empty or b.empty:
                continue
            cell = {"source": source, "comparator": other, "size": size}
            for matched in ("beta", "final win rate"):
                p = _paired(ipo, b, matched)
                v = (
                    (p["kl_final_b"] - p["kl_final_a"]).groupby(p["seed"]).mean()
                    if len(p)
                    else pd.Series()
                )
                rows.append(make_row("5a", *_per_seed(v), **cell, matched=matched))
            for matched in ("beta", "KL"):
                p = _paired(ipo, b, matched)
                v = (p["drop_b"] - p["drop_a"]).groupby(p["seed"]).mean() if len(p) else pd.Series()
                rows.append(make_row("5b", *_per_seed(v), **cell, matched=matched))
    return rows


def _rdpo_rows(runs: pd.DataFrame, sizes: Sequence[str], source: str) -> list[dict]:
    """Claim 9: R-DPO against DPO."""
    rows = []
    for size in sizes:
        a = runs[(runs["objective"] == "rdpo") & (runs["size"] == size)]
        b = runs[(runs["objective"] == "dpo") & (runs["size"] == size)]
        if a.empty or b.empty:
            continue
        cell = {"source": source, "size": size}
        rows.append(make_row("9a", *_per_seed(a.groupby("seed")["drop"].mean()), **cell))
        p = _paired(a, b, "KL")
        win = (
            (p["win_final_a"] - p["win_final_b"]).groupby(p["seed"]).mean()
            if len(p)
            else pd.Series()
        )
        rows.append(make_row("9b", *_per_seed(win), **cell, matched="KL"))
        length = (
            (p["length_final_b"] - p["length_final_a"]).groupby(p["seed"]).mean()
            if len(p)
            else pd.Series()
        )
        rows.append(make_row("9c", *_per_seed(length), **cell, matched="KL"))
    return rows


# ---------------------------------------------------------------------------------------------
# Tree-MDP claims (ood_mass) and Proposition 1
# ---------------------------------------------------------------------------------------------


def evaluate_ood(
    metrics: pd.DataFrame, responses: pd.DataFrame | None, *, source: str = "toy"
) -> pd.DataFrame:
    """Setting rows of claims 1, 1b (per policy, objective, β) and 2 (per objective, lowest β,
    non-tabular policies) from ood_mass tables with a ``policy`` column (or an LLM family's exact
    masses, ``source`` "llm", policy ``llm-<size>``)."""
    runs = st.ood_growth(metrics)
    rows = []
    for (policy, objective, beta), g in runs.groupby(["policy", "objective", "beta"], sort=False):
        cell = {"source": source, "policy": policy, "objective": objective, "beta": float(beta)}
        rows.append(make_row("1", *_per_seed(g.groupby("seed")["ood_gain"].mean()), **cell))
        rows.append(make_row("1b", *_per_seed(g.groupby("seed")["in_dist_fall"].mean()), **cell))
    if responses is not None and len(responses):
        n_eff = st.effective_ood_number(responses)
        keys = metrics.drop_duplicates("run").set_index("run")[
            ["policy", "objective", "beta", "seed"]
        ]
        table = keys.join(n_eff, how="inner")
        table = table[(table["policy"] != "tabular") & (table["beta"] == table["beta"].min())]
        for (policy, objective, beta), g in table.groupby(
            ["policy", "objective", "beta"], sort=False
        ):
            cell = {"source": "toy", "policy": policy, "objective": objective, "beta": float(beta)}
            rows.append(make_row("2", *_per_seed(g.groupby("seed")["n_eff"].mean()), **cell))
    return pd.DataFrame(rows)


def evaluate_theory(beta: float = 0.1) -> pd.DataFrame:
    """Setting row of Proposition 1 on the paper's three-response example."""
    from treemdp.theory import three_response_example

    ex = three_response_example(beta=beta)
    gap = float((ex.family_losses - ex.half_loss).abs().max())
    row = make_row("P1", gap, math.nan, math.nan, source="theory", beta=float(beta))
    return pd.DataFrame([row])


# ---------------------------------------------------------------------------------------------
# One row per claim
# ---------------------------------------------------------------------------------------------


def summarise(settings: pd.DataFrame) -> pd.DataFrame:
    """One row per (source, claim): the median value over its settings and their range (as
    ci_low / ci_high), the verdict combined over settings and what it depends on (with the seeds
    that would decide the settings whose intervals straddle), the fewest seeds behind a setting
    (``n_seeds``), the largest ``mde`` and ``seeds_needed`` over its settings."""
    rows = []
    for (source, claim), g in settings.groupby(["source", "claim"], sort=False):
        verdict = rules.combine(list(g["verdict"]))
        values = g["value"].replace([np.inf, -np.inf], np.nan)
        on = rules.depends_on(g, FACTORS) if verdict == rules.DEPENDS else ""
        needed = g.loc[g["verdict"] == rules.DEPENDS, "seeds_needed"] if "seeds_needed" in g else ()
        needed = pd.Series(needed, dtype=float).dropna()
        if on.startswith("seed") and len(needed):
            on = on.removesuffix(")") + f"; {seeds_text(needed)} would decide them)"
        with_data = g[g["verdict"] != rules.NO_DATA]
        n_seeds = with_data["n_seeds"] if "n_seeds" in g else pd.Series([], dtype=int)
        rows.append(
            {
                "claim": claim,
                "statistic": STATISTIC[claim] + f"; median (range) over {len(g)} settings",
                "value": float(values.median()) if values.notna().any() else math.nan,
                "ci_low": float(values.min()) if values.notna().any() else math.nan,
                "ci_high": float(values.max()) if values.notna().any() else math.nan,
                "setting": f"{source}: all {len(g)} settings",
                "verdict": verdict,
                "rule": RULE[claim],
                "source": source,
                "depends_on": on,
                "n_settings": len(g),
                "n_seeds": int(n_seeds.min()) if len(n_seeds) else 0,
                "mde": float(g["mde"].max()) if "mde" in g and g["mde"].notna().any() else math.nan,
                "seeds_needed": float(needed.max()) if len(needed) else math.nan,
                **{
                    f"n_{v.replace(' ', '_')}": int((g["verdict"] == v).sum())
                    for v in rules.VERDICTS
                },
            }
        )
    return pd.DataFrame(rows)


def seeds_text(needed: pd.Series) -> str:
    """ "40 seeds", "40–300 seeds", "> 100000 seeds" from per-setting ``seeds_needed``."""

    def one(n: float) -> str:
        return f"> {MAX_SEEDS}" if n > MAX_SEEDS else f"{int(n)}"

    lo, hi = float(needed.min()), float(needed.max())
    return f"{one(lo)} seeds" if lo == hi else f"{one(lo)}–{one(hi)} seeds"


def order(frame: pd.DataFrame) -> pd.DataFrame:
    """Rows in claim order (as in ``CLAIMS``), stable within a claim."""
    rank = {c: i for i, c in enumerate(CLAIMS)}
    return frame.sort_values("claim", key=lambda s: s.map(rank), kind="stable").reset_index(
        drop=True
    )
