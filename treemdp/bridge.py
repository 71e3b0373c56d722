"""Does the toy predict the LLM? Exact quantities per setting, compared over seeds (issue 24).

Pure functions from the confirm grid's trajectories (``experiments/confirm_grid.py``) to the
bridge table; every interval, baseline, null, ceiling and verdict comes from
``treemdp.claims.evidence``.

The unit of independence is a seed (its own problem, pairs, SFT and initialisation). A *setting*
is (regime, objective, β, lr, size); the toy does not see lr or size, so its prediction is shared
by the settings that differ only there. Per quantity (OOD mass, KL both ways, gold win rate,
p(chosen), p(rejected)), each summarised three ways (final value, peak-to-end change, the whole
trajectory at the LLM's checkpoints):

1. the toy capacity is chosen on one half of the seeds (the best rank correlation there);
2. on the other half: the rank correlation of the toy's per-setting prediction with the LLM's
   per-setting seed mean (``rank_correlation_ci``: settings and seeds resampled), the same for a
   baseline that knows only the objective and β (``leave_one_out_baseline``), the LLM's own
   split-half ceiling, the calibration slope, the minimal detectable effect, and a verdict:
   "yes" when the interval clears both the baseline's value and chance (0).

Binary labels (``degrades``; the gold win rate ``rises_then_falls``) appear only beside their
shuffled-checkpoint null, with Cohen's κ and the majority-class rate instead of raw agreement.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from treemdp.claims import evidence as ev

__all__ = [
    "BRIDGE_COLUMNS",
    "LABELS",
    "MIN_SEEDS",
    "QUANTITIES",
    "SETTING",
    "SUMMARIES",
    "aligned",
    "bridge",
    "check_poolable",
    "degrades",
    "label_table",
    "paired",
    "rises_then_falls",
    "run_labels",
    "score_label",
    "score_quantity",
    "summaries",
]

SETTING = ["regime", "objective", "beta", "lr", "size"]
"""The columns that name a setting (a cell without its seed)."""
RUN = [*SETTING, "seed", "side"]
"""The columns that name one run."""
QUANTITIES = ("mass_ood", "kl_reverse", "kl_forward", "win_rate", "p_chosen", "p_rejected")
"""The exact quantities both sides have at every checkpoint."""
SUMMARIES = ("final", "peak_to_end", "trajectory")
"""How a run's trajectory of a quantity is summarised: its last value; last minus its largest
value (<= 0: how far it ends below its peak); its value at each of the LLM's checkpoints."""
BRIDGE_COLUMNS = [
    "quantity", "statistic", "value", "ci_low", "ci_high", "baseline", "noise_ceiling",
    "n_seeds", "mde", "verdict",
]  # fmt: skip
"""The bridge table's columns (``bridge.csv``)."""
Z95 = 1.959963984540054


# ------------------------------------------------------------------------------ alignment
def check_poolable(trajectories: pd.DataFrame) -> None:
    """Seeds are pooled only when their runs' configurations differ in the seed alone: one
    trajectory per run and step, and (where the table has a ``config`` column, the run's
    configuration without its seed) one configuration per setting and side. ValueError else."""
    if trajectories.duplicated([*RUN, "step"]).any():
        raise ValueError("trajectories hold two rows for one run and step: configs were mixed")
    if "config" in trajectories.columns:
        n = trajectories.groupby([*SETTING, "side"], dropna=False)["config"].nunique()
        if (n > 1).any():
            raise ValueError(
                f"runs of one setting come from different configurations: {n[n > 1].index[0]}"
            )


def aligned(trajectories: pd.DataFrame) -> pd.DataFrame:
    """Every run's quantities at the fractions of training where the LLM of its regime has a
    checkpoint (0 included): the LLM's own values, the toy's interpolated linearly in the fraction.

    Args:
        trajectories: rows of ``RUN`` + fraction + ``QUANTITIES`` (toy rows: lr NaN, size "").

    Returns:
        One row per run and point: ``RUN``, ``point`` (0, 1, ...), fraction, ``QUANTITIES``.
    """
    llm = trajectories[trajectories["side"] == "llm"]
    grids = {r: np.sort(g["fraction"].unique()) for r, g in llm.groupby("regime")}
    frames = []
    for key, run in trajectories.groupby(RUN, sort=False, dropna=False):
        at = grids.get(key[0])
        if at is None:
            continue
        run = run.sort_values("fraction")
        x = run["fraction"].to_numpy(float)
        row = dict(zip(RUN, key, strict=True))
        cols = {q: np.interp(at, x, run[q].to_numpy(float)) for q in QUANTITIES}
        frames.append(pd.DataFrame({**row, "point": np.arange(len(at)), "fraction": at, **cols}))
    return pd.concat(frames, ignore_index=True)


def summaries(points: pd.DataFrame) -> pd.DataFrame:
    """Long table of every run's summaries (``SUMMARIES``) of every quantity.

    Args:
        points: ``aligned`` rows.

    Returns:
        ``RUN``, quantity (``"<quantity>:<summary>"``), point (-1 for final and peak_to_end;
        the checkpoint for trajectory, start excluded), value.
    """
    pts = points.sort_values([*RUN, "point"], na_position="first")
    g = pts.groupby(RUN, sort=False, dropna=False)
    frames = []
    for q in QUANTITIES:
        last, peak = g[q].last(), g[q].max()
        for name, series in (("final", last), ("peak_to_end", last - peak)):
            f = series.rename("value").reset_index()
            frames.append(f.assign(quantity=f"{q}:{name}", point=-1))
        traj = pts[pts["point"] > 0][[*RUN, "point", q]].rename(columns={q: "value"})
        frames.append(traj.assign(quantity=f"{q}:trajectory"))
    return pd.concat(frames, ignore_index=True)[[*RUN, "quantity", "point", "value"]]


def paired(values: pd.DataFrame, toy: str) -> pd.DataFrame:
    """The LLM's summaries beside toy capacity ``toy``'s (same regime, objective, β, seed,
    quantity and point; the toy's value repeated over the LLM's lrs and sizes).

    Returns:
        ``SETTING``, seed, quantity, point, llm, toy.
    """
    shared = ["regime", "objective", "beta", "seed", "quantity", "point"]
    llm = values[values["side"] == "llm"].drop(columns="side").rename(columns={"value": "llm"})
    theirs = values[values["side"] == toy][[*shared, "value"]].rename(columns={"value": "toy"})
    return llm.merge(theirs, on=shared, how="inner")


# ------------------------------------------------------------------------------ labels
def degrades(run: Mapping[str, np.ndarray], margin: float) -> bool:
    """OOD mass up by at least ``margin`` from the start, and in-distribution mass (1 − OOD
    mass) at least ``margin`` below its peak at the end (``treemdp.agreement.summarise``'s rule).
    The start is ``run["mass_ood_start"]`` (kept out of a checkpoint shuffle)."""
    ood = run["mass_ood"]
    start = float(run["mass_ood_start"][0])
    in_dist = np.concatenate([[1 - start], 1 - ood])
    return bool(ood[-1] - start >= margin and in_dist.max() - in_dist[-1] >= margin)


def rises_then_falls(run: Mapping[str, np.ndarray], margin: float) -> bool:
    """The gold win rate peaks at least ``margin`` above its start and ends at least ``margin``
    below its peak (``experiments/llm_overopt.py``'s rule)."""
    wr = run["win_rate"]
    start = float(run["win_rate_start"][0])
    peak = max(start, float(wr.max()))
    return bool(peak >= start + margin and wr[-1] <= peak - margin)


LABELS = {"degrades": degrades, "win_rate_rises_then_falls": rises_then_falls}
"""Binary labels of a run's checkpoints (start given separately)."""


def label_table(points: pd.DataFrame) -> pd.DataFrame:
    """The checkpoints after the start (point > 0) with each run's start values beside them
    (``mass_ood_start``, ``win_rate_start``) and a ``run`` id: what the labels and their
    shuffled-checkpoint null read."""
    pts = points.copy()
    pts["run"] = pts.groupby(RUN, sort=False, dropna=False).ngroup()
    start = pts[pts["point"] == 0].set_index("run")
    out = pts[pts["point"] > 0].copy()
    out["mass_ood_start"] = out["run"].map(start["mass_ood"])
    out["win_rate_start"] = out["run"].map(start["win_rate"])
    return out


def run_labels(table: pd.DataFrame, margin: float) -> pd.DataFrame:
    """Every run's labels: ``RUN`` + one bool column per ``LABELS`` entry."""
    rows = []
    for key, g in table.groupby(RUN, sort=False, dropna=False):
        g = g.sort_values("point")
        view = {c: g[c].to_numpy(float) for c in ("mass_ood", "win_rate", "mass_ood_start",
                                                   "win_rate_start")}  # fmt: skip
        row = dict(zip(RUN, key, strict=True))
        row.update({name: f(view, margin) for name, f in LABELS.items()})
        rows.append(row)
    return pd.DataFrame(rows)


# ------------------------------------------------------------------------------ statistics
def _mde(est: ev.Estimate) -> float:
    """The minimal detectable effect at the estimate's seeds: its interval's half-width read as
    1.96 standard errors, i.e. an equivalent per-seed spread (half-width / 1.96 · √n)."""
    sd = _spread(est)
    return ev.mde(sd, est.n) if math.isfinite(sd) else math.nan


def _spread(est: ev.Estimate) -> float:
    if est.n < 2 or not (math.isfinite(est.low) and math.isfinite(est.high)):
        return math.nan
    return (est.high - est.low) / (2 * Z95) * math.sqrt(est.n)


def _setting_keys(quantity: str) -> list[str]:
    return [*SETTING, "point"] if quantity.endswith(":trajectory") else list(SETTING)


def _correlation(pairs: pd.DataFrame, keys: list[str]) -> float:
    """Spearman correlation of the toy's and the LLM's per-setting seed means (no interval)."""
    means = pairs.groupby(keys, dropna=False)[["toy", "llm"]].mean()
    return ev.spearman(means["toy"].to_numpy(), means["llm"].to_numpy())


def _with_predictions(pairs: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """The slim table the statistics read: setting (an integer id of ``keys``), seed, toy, llm,
    the toy's per-setting seed mean (``predicted``) and the objective-β baseline (``baseline``:
    the LLM's mean over the other settings with that objective and β, and at the same checkpoint
    for trajectories)."""
    setting = pairs.groupby(keys, dropna=False, sort=True).ngroup().rename("setting")
    slim = pairs[["seed", "toy", "llm"]].assign(setting=setting)
    group = ["objective", "beta", *(["point"] if "point" in keys else [])]
    means = pairs[group].assign(setting=setting).groupby("setting").first()
    means[["predicted", "llm"]] = slim.groupby("setting")[["toy", "llm"]].mean()
    means["baseline"] = ev.leave_one_out_baseline(means, value="llm", group=group)
    return slim.join(means[["predicted", "baseline"]], on="setting")


def _slope(x: np.ndarray, y: np.ndarray) -> float:
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    if len(x) < 3 or np.ptp(x) == 0:
        return math.nan
    with warnings.catch_warnings():  # a resample with nearly equal x: a poorly conditioned fit
        warnings.simplefilter("ignore", np.exceptions.RankWarning)
        return float(np.polyfit(x, y, 1)[0])


MIN_SEEDS = 3
"""Fewer scoring seeds than this give no verdict but "undecided": with two seeds the bootstrap
has three distinct resamples, and its interval says nothing about the next seed."""


def _row(
    quantity: str, statistic: str, est: ev.Estimate, *, baseline: float, ceiling: float,
    bar: float,
) -> dict:  # fmt: skip
    decided = ev.verdict(est, bar=bar)
    if est.n < MIN_SEEDS and decided in ("yes", "no"):
        decided = "undecided"
    return {
        "quantity": quantity, "statistic": statistic, "value": est.value, "ci_low": est.low,
        "ci_high": est.high, "baseline": baseline, "noise_ceiling": ceiling, "n_seeds": est.n,
        "mde": _mde(est), "verdict": decided,
    }  # fmt: skip


def _bar(*values: float) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return max(finite) if finite else 0.0


def score_quantity(
    pairs: pd.DataFrame, quantity: str, *, n_resamples: int, n_splits: int = 200, seed: int = 0
) -> list[dict]:
    """The rank-correlation and calibration rows of one quantity from its scoring seeds' pairs
    (``paired`` rows of one quantity and one toy capacity)."""
    table = _with_predictions(pairs, _setting_keys(quantity))
    keys = ["setting"]
    est = ev.rank_correlation_ci(
        table, setting=keys, predicted="predicted", observed="llm", n_resamples=n_resamples,
        seed=seed,
    )  # fmt: skip
    base = ev.rank_correlation_ci(
        table.dropna(subset=["baseline"]), setting=keys, predicted="baseline", observed="llm",
        n_resamples=n_resamples, seed=seed,
    )  # fmt: skip
    ceiling = ev.split_half_ceiling(table, setting=keys, value="llm", n_splits=n_splits, seed=seed)
    rows = [_row(quantity, "spearman", est, baseline=base.value, ceiling=ceiling.value,
                 bar=_bar(base.value, 0.0))]  # fmt: skip

    def slope(f: pd.DataFrame, column: str) -> float:
        ids = f["setting"].to_numpy()
        count = np.bincount(ids).astype(float)
        count[count == 0] = np.nan  # numpy, not groupby: this runs once per resample
        x = np.bincount(ids, f[column].to_numpy(float)) / count
        return _slope(x, np.bincount(ids, f["llm"].to_numpy(float)) / count)

    slim = table[["setting", "seed", "toy", "llm"]]
    cal = ev.bootstrap_ci(slim, lambda f: slope(f, "toy"), n_resamples=n_resamples, seed=seed)
    cal_base = slope(table, "baseline")
    rows.append(_row(quantity, "calibration_slope", cal, baseline=cal_base,
                     ceiling=math.nan, bar=0.0))  # fmt: skip
    return rows


def score_label(
    labels: pd.DataFrame, label_points: pd.DataFrame, name: str, *, toy: str, margin: float,
    n_resamples: int, n_permutations: int, seed: int = 0,
) -> list[dict]:  # fmt: skip
    """κ, agreement beside the majority rate, and the LLM's rate beside its shuffled-checkpoint
    null, of label ``name`` on the scoring seeds."""
    llm = labels[labels["side"] == "llm"]
    shared = ["regime", "objective", "beta", "seed"]
    theirs = labels[labels["side"] == toy][[*shared, name]].rename(columns={name: "toy"})
    both = llm.merge(theirs, on=shared, how="inner").rename(columns={name: "llm"})
    both["agree"] = (both["toy"] == both["llm"]).astype(float)
    kappa = ev.bootstrap_ci(
        both, lambda f: ev.cohen_kappa(f["toy"].tolist(), f["llm"].tolist()),
        n_resamples=n_resamples, seed=seed,
    )  # fmt: skip
    agree = ev.bootstrap_ci(both, lambda f: f["agree"].mean(), n_resamples=n_resamples, seed=seed)
    majority = ev.majority_rate(both["llm"].tolist())
    rows = [
        _row(name, "kappa", kappa, baseline=0.0, ceiling=math.nan, bar=0.0),
        _row(name, "agreement", agree, baseline=majority, ceiling=math.nan, bar=majority),
    ]
    at = label_points
    llm_points = at[(at["side"] == "llm") & at["seed"].isin(llm["seed"].unique())]
    # the starts are constant within a run, so the joint shuffle leaves them where they are
    null = ev.label_null(
        llm_points, lambda run: LABELS[name](run, margin), unit="run", order="point",
        columns=["mass_ood", "win_rate", "mass_ood_start", "win_rate_start"],
        n_permutations=n_permutations, seed=seed,
    )  # fmt: skip
    rate = ev.bootstrap_ci(llm, lambda f: f[name].mean(), n_resamples=n_resamples, seed=seed)
    rows.append(_row(name, "llm_rate_vs_shuffled", rate, baseline=null.null_mean,
                     ceiling=math.nan, bar=null.null_mean))  # fmt: skip
    return rows


# ------------------------------------------------------------------------------ the table
def bridge(
    trajectories: pd.DataFrame,
    capacities: Sequence[str],
    *,
    margin: float,
    n_resamples: int = 1000,
    n_permutations: int = 200,
    n_splits: int = 200,
    target_effect: float = 0.5,
    split_seed: int = 0,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The bridge table and the held-out capacity choice.

    Args:
        trajectories: the confirm grid's rows (``RUN`` + step, fraction, ``QUANTITIES``).
        capacities: the toy capacities (side names), in the order ties are broken.
        margin: > 0, the labels' mass / win-rate change.
        n_resamples: bootstrap resamples per interval.
        n_permutations: shuffled copies for each label's null.
        n_splits: random seed halves for each noise ceiling.
        target_effect: the effect (a rank correlation above the bar, a κ, ...) whose seeds
            needed are reported.
        split_seed: which half of the seeds selects the capacity (``evidence.split_seeds``).

    Returns:
        ``BRIDGE_COLUMNS`` rows (per quantity: spearman and calibration_slope; per label:
        kappa, agreement, llm_rate_vs_shuffled), and the selection table: per quantity or label
        the chosen capacity, its selection-half statistic, the selection and scoring seeds,
        the per-seed spread and the seeds ``target_effect`` needs.
    """
    if not margin > 0:
        raise ValueError(f"margin must be > 0; got {margin}")
    check_poolable(trajectories)
    points = aligned(trajectories)
    values = summaries(points)
    seeds = sorted(points["seed"].unique())
    held_out = len(seeds) >= 2
    select, score = ev.split_seeds(seeds, seed=split_seed) if held_out else (seeds, seeds)
    rows, chosen = [], []
    by_toy = {toy: dict(iter(paired(values, toy).groupby("quantity"))) for toy in capacities}
    for quantity in dict.fromkeys(values["quantity"]):
        keys = _setting_keys(quantity)
        fits = {}
        for toy in capacities:
            pairs = by_toy[toy][quantity]
            fits[toy] = _correlation(pairs[pairs["seed"].isin(select)], keys)
        best = _argmax(fits, capacities)
        pairs = by_toy[best][quantity]
        new = score_quantity(
            pairs[pairs["seed"].isin(score)], quantity, n_resamples=n_resamples, n_splits=n_splits
        )
        rows += new
        chosen.append(_chosen(quantity, best, fits[best], select, score, held_out, new[0]))
    labels_at = label_table(points)
    labels = run_labels(labels_at, margin)
    for name in LABELS:
        fits = {}
        for toy in capacities:
            a = labels[(labels["side"] == toy) & labels["seed"].isin(select)]
            b = labels[(labels["side"] == "llm") & labels["seed"].isin(select)]
            m = b.merge(a, on=["regime", "objective", "beta", "seed"], suffixes=("", "_toy"))
            fits[toy] = ev.cohen_kappa(m[f"{name}_toy"].tolist(), m[name].tolist())
        best = _argmax(fits, capacities)
        new = score_label(
            labels[labels["seed"].isin(score)], labels_at, name, toy=best, margin=margin,
            n_resamples=n_resamples, n_permutations=n_permutations,
        )  # fmt: skip
        rows += new
        chosen.append(_chosen(name, best, fits[best], select, score, held_out, new[0]))
    table = pd.DataFrame(rows, columns=BRIDGE_COLUMNS)
    selection = pd.DataFrame(chosen)
    selection["seeds_needed"] = [
        ev.seeds_needed(target_effect, sd) if math.isfinite(sd) else -1
        for sd in selection["spread"]
    ]
    selection["target_effect"] = target_effect
    return table, selection


def _argmax(fits: Mapping[str, float], order: Sequence[str]) -> str:
    """The capacity with the largest finite statistic (ties and all-NaN: the first listed)."""
    best, value = order[0], -math.inf
    for toy in order:
        v = fits[toy]
        if math.isfinite(v) and v > value:
            best, value = toy, v
    return best


def _chosen(
    name: str, toy: str, fit: float, select: Sequence, score: Sequence, held_out: bool,
    row: dict,
) -> dict:  # fmt: skip
    est = ev.Estimate(row["value"], row["ci_low"], row["ci_high"], row["n_seeds"])
    return {
        "quantity": name, "statistic": row["statistic"], "toy": toy, "selection_value": fit,
        "select_seeds": " ".join(map(str, select)), "score_seeds": " ".join(map(str, score)),
        "held_out": held_out, "spread": _spread(est), "mde": row["mde"],
    }  # fmt: skip
