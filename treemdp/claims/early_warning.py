"""Which monitoring signals track a known truth, and which warn of the win-rate peak before it.

Everything here reads one tidy table, one row per (seed, run, checkpoint), with the columns
``seed``, ``run`` (a run's name within its seed), ``step``, a progress column (``time``: epochs,
or the fraction of one), ``exact_win_rate``, the truths (e.g. ``exact_mass_ood``,
``win_rate_change``) and one column per signal. A signal's orientation is +1 when a larger value
means "more over-optimized", −1 when a smaller one does. Seeds are the independent units: every
interval resamples seeds (``treemdp.claims.evidence``), never checkpoints or runs, which share a
seed's problem.

* ``tracking``: does a signal move with the truth? Spearman over every checkpoint after step 0
  of every run (pooled: across runs and settings), and within runs (a run's checkpoints only,
  what one practitioner watching one run sees), each with a 95% interval over seeds.
* ``warning``: a signal as an early-warning detector of the exact win-rate peak. A run
  *degrades* when its last checkpoint's win rate is at least ``margin`` below its peak; the
  detector "oriented signal > τ" fires at the first checkpoint where that holds. τ is chosen on
  one half of the seeds (``split_seeds``: the largest TPR − FPR there) and scored on the other
  half only: true-positive rate (degrading runs where it fires), the share of degrading runs
  where it fires no later than the peak, false-positive rate (other runs where it fires),
  Youden's J = TPR − FPR with a bootstrap interval over the scoring seeds, and the median lead
  time (peak − firing, in ``time`` units; > 0 warns before the peak).
* ``setting_prior``: the baseline that knows less: each run's setting (e.g. objective and β)
  replaced by the share of degrading runs of that setting on the selection seeds. A signal that
  does not beat it adds nothing to knowing the configuration.
* ``with_rises``: causal "upturn" signals: how far a signal has risen above its lowest value so
  far in the run (a run that turns around, not one that sits high).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from treemdp.claims.evidence import Estimate, bootstrap_ci, mean_ci, split_seeds
from treemdp.claims.statistics import spearman

__all__ = [
    "degradation",
    "detector_scores",
    "recommend",
    "report",
    "setting_prior",
    "tracking",
    "warning",
    "with_rises",
]

RUN = ["seed", "run"]


def _est(prefix: str, e: Estimate) -> dict[str, float]:
    return {prefix: e.value, f"{prefix}_low": e.low, f"{prefix}_high": e.high}


def _within_run(later: pd.DataFrame, name: str, truth: str) -> Estimate:
    """Per run, Spearman of the signal with the truth over its checkpoints; averaged within a
    seed, then a t interval over seeds (runs with a constant signal or truth are left out)."""
    per_run = later.groupby(RUN).apply(
        lambda g: spearman(g[name].to_numpy(), g[truth].to_numpy()), include_groups=False
    )
    per_seed = per_run.groupby(level="seed").mean()
    return mean_ci(per_seed.to_numpy())


def tracking(
    signals: pd.DataFrame,
    orientation: Mapping[str, int],
    truths: Sequence[str],
    *,
    n_resamples: int = 1000,
    seed: int = 0,
) -> pd.DataFrame:
    """Per signal and truth: the pooled Spearman over every checkpoint after step 0 (95%
    percentile interval from resampling seeds, ``bootstrap_ci``) and the within-run Spearman
    (mean over seeds of the seed's mean per-run Spearman, t interval over seeds).

    Returns:
        Columns signal, truth, orientation, spearman, spearman_low, spearman_high,
        within_run, within_run_low, within_run_high, seeds.
    """
    later = signals[signals["step"] > 0]
    rows = []
    for name, sign in orientation.items():
        for truth in truths:

            def stat(frame: pd.DataFrame, name: str = name, truth: str = truth) -> float:
                return spearman(frame[name].to_numpy(), frame[truth].to_numpy())

            pooled = bootstrap_ci(later, stat, unit="seed", n_resamples=n_resamples, seed=seed)
            rows.append({
                "signal": name, "truth": truth, "orientation": sign,
                **_est("spearman", pooled), **_est("within_run", _within_run(later, name, truth)),
                "seeds": pooled.n,
            })  # fmt: skip
    return pd.DataFrame(rows)


def degradation(signals: pd.DataFrame, margin: float, *, time: str) -> pd.DataFrame:
    """Per run: the progress (``time``) at its exact win-rate peak (the first checkpoint with the
    largest win rate) and whether it degrades (its last checkpoint at least ``margin`` below).

    Returns:
        Columns seed, run, peak_time, degrades; one row per run.
    """
    if not margin >= 0:
        raise ValueError(f"margin must be >= 0; got {margin}")
    out = []
    for (seed, run_name), g in signals.groupby(RUN):
        g = g.sort_values("step")
        peak = g.loc[g["exact_win_rate"].idxmax()]
        end = g.iloc[-1]["exact_win_rate"]
        out.append({"seed": seed, "run": run_name, "peak_time": float(peak[time]),
                    "degrades": bool(end <= peak["exact_win_rate"] - margin)})  # fmt: skip
    return pd.DataFrame(out)


def _first_firing(signals: pd.DataFrame, name: str, sign: int, tau: float, time: str) -> pd.Series:
    """Per run (index seed, run): the progress at which ``sign · signal > tau`` first holds
    after step 0; NaN where it never does."""
    later = signals[signals["step"] > 0].sort_values("step")
    hit = later[sign * later[name] > tau]
    first = hit.groupby(RUN)[time].first()
    index = pd.MultiIndex.from_frame(signals[RUN].drop_duplicates())
    return first.reindex(index)


def _rates(t: pd.DataFrame) -> dict[str, float]:
    bad, good = t[t["degrades"]], t[~t["degrades"]]
    tpr = float(bad["fire"].notna().mean()) if len(bad) else math.nan
    fpr = float(good["fire"].notna().mean()) if len(good) else math.nan
    early = (bad["fire"] <= bad["peak_time"]).mean() if len(bad) else math.nan
    return {"tpr": tpr, "tpr_before_peak": float(early), "fpr": fpr, "j": tpr - fpr}


def detector_scores(
    signals: pd.DataFrame,
    runs: pd.DataFrame,
    name: str,
    sign: int,
    tau: float,
    *,
    time: str,
    n_resamples: int = 1000,
) -> dict[str, float]:
    """Rates of the detector "``sign`` · signal > ``tau``" on these runs (``degradation``):
    ``tpr``, ``tpr_before_peak``, ``fpr`` and ``j`` = TPR − FPR, each with a 95% percentile
    interval from resampling seeds, the median lead time (peak − firing over the degrading runs
    where it fires) and the run counts."""
    fire = _first_firing(signals, name, sign, tau, time)
    t = runs.assign(fire=fire.reindex(pd.MultiIndex.from_frame(runs[RUN])).to_numpy())
    out: dict[str, float] = dict(_rates(t))
    if t["seed"].nunique() >= 2 and n_resamples > 0:
        for key in ("tpr", "fpr", "j"):
            e = bootstrap_ci(t, lambda f, k=key: _rates(f)[k], unit="seed",
                             n_resamples=n_resamples)  # fmt: skip
            out[f"{key}_low"], out[f"{key}_high"] = e.low, e.high
    bad = t[t["degrades"]]
    lead = (bad["peak_time"] - bad["fire"]).dropna()
    out["lead_median"] = float(lead.median()) if len(lead) else math.nan
    out["degrading_runs"] = int(t["degrades"].sum())
    out["other_runs"] = int((~t["degrades"]).sum())
    return out


def _best_threshold(signals: pd.DataFrame, runs: pd.DataFrame, name: str, sign: int):
    """The τ with the largest TPR − FPR on these runs, and that J. A run fires at some
    checkpoint iff its largest oriented value after step 0 exceeds τ, so every candidate is
    scored at once from the runs' maxima."""
    later = signals[signals["step"] > 0]
    peak = (sign * later[name]).groupby([later["seed"], later["run"]]).max().dropna()
    bad = runs.set_index(RUN)["degrades"].reindex(peak.index).to_numpy(dtype=bool)
    taus = np.unique(peak.to_numpy()) - 1e-12
    fires = peak.to_numpy()[None, :] > taus[:, None]
    tpr = fires[:, bad].mean(1) if bad.any() else np.zeros(len(taus))
    fpr = fires[:, ~bad].mean(1) if (~bad).any() else np.zeros(len(taus))
    k = int(np.argmax(tpr - fpr))
    return float(taus[k]), float(tpr[k] - fpr[k])


def setting_prior(
    signals: pd.DataFrame, runs: pd.DataFrame, setting: Sequence[str], select: Sequence
) -> pd.Series:
    """The baseline signal that knows only the configuration: for each row, the share of
    degrading runs among the selection seeds' runs of its setting (NaN for a setting those seeds
    never ran). Constant within a run."""
    per_run = signals.drop_duplicates(RUN)[[*RUN, *setting]].merge(runs, on=RUN)
    rate = per_run[per_run["seed"].isin(select)].groupby(list(setting))["degrades"].mean()
    keyed = signals[list(setting)].merge(
        rate.rename("prior").reset_index(), on=list(setting), how="left"
    )
    return pd.Series(keyed["prior"].to_numpy(), index=signals.index, name="setting_prior")


def with_rises(signals: pd.DataFrame, orientation: Mapping[str, int]) -> tuple[pd.DataFrame, dict]:
    """The table with one causal "rise" column per signal: ``<name>_rise`` = the oriented
    signal minus its smallest oriented value so far in the run (step 0 included), so ≥ 0; and
    the orientation map with the rises added (+1)."""
    out = signals.sort_values([*RUN, "step"]).copy()
    added = {}
    for name, sign in orientation.items():
        oriented = sign * out[name]
        low = oriented.groupby([out["seed"], out["run"]]).cummin()
        out[f"{name}_rise"] = oriented - low
        added[f"{name}_rise"] = +1
    return out.sort_index(), {**orientation, **added}


def warning(
    signals: pd.DataFrame,
    orientation: Mapping[str, int],
    margin: float,
    *,
    time: str,
    setting: Sequence[str] = (),
    seed: int = 0,
    n_resamples: int = 1000,
) -> pd.DataFrame:
    """Each signal as an early-warning detector: τ chosen on one half of the seeds, scored on
    the other (``detector_scores``). With ``setting`` columns, one more row,
    ``setting_prior``: the baseline that knows only the configuration (``setting_prior``).

    Returns:
        One row per signal: signal, threshold (in the signal's own units and direction: fires
        when above it for orientation +1, below it for −1), orientation, selection_j,
        selection_seeds, scored_seeds, then ``detector_scores``' columns.
    """
    runs = degradation(signals, margin, time=time)
    select, score = split_seeds(sorted(signals["seed"].unique()), seed=seed)
    orientation = dict(orientation)
    if setting:
        signals = signals.assign(setting_prior=setting_prior(signals, runs, setting, select))
        orientation["setting_prior"] = +1
    sel_rows, score_rows = signals["seed"].isin(select), signals["seed"].isin(score)
    sel_runs, score_runs = runs[runs["seed"].isin(select)], runs[runs["seed"].isin(score)]
    rows = []
    for name, sign in orientation.items():
        tau, j = _best_threshold(signals[sel_rows], sel_runs, name, sign)
        held = detector_scores(signals[score_rows], score_runs, name, sign, tau, time=time,
                               n_resamples=n_resamples)  # fmt: skip
        rows.append({"signal": name, "threshold": sign * tau, "orientation": sign,
                     "selection_j": j, "selection_seeds": len(select),
                     "scored_seeds": len(score), **held})  # fmt: skip
    return pd.DataFrame(rows)


def recommend(warn: pd.DataFrame, *, exclude: Sequence[str] = ("setting_prior",)) -> pd.Series:
    """The detector to recommend, chosen on the selection seeds only (the largest
    ``selection_j`` among the signals not in ``exclude``, the baselines; ties: the earlier
    row), with its held-out scores."""
    candidates = warn[~warn["signal"].isin(exclude)]
    if candidates.empty:
        raise ValueError("warn must hold at least one detector besides the baselines")
    return candidates.loc[candidates["selection_j"].idxmax()]


def report(track: pd.DataFrame, warn: pd.DataFrame) -> str:
    """The tracking and warning tables as printed text, and the recommended detector."""
    track_cols = ["signal", "truth", "spearman", "spearman_low", "spearman_high", "within_run",
                  "within_run_low", "within_run_high"]  # fmt: skip
    warn_cols = ["signal", "threshold", "selection_j", "tpr", "tpr_before_peak", "fpr", "j",
                 "j_low", "j_high", "lead_median"]  # fmt: skip
    best = recommend(warn)
    direction = ">" if best["orientation"] > 0 else "<"
    j_low, j_high = best.get("j_low", math.nan), best.get("j_high", math.nan)
    with pd.option_context("display.width", 200):
        return "\n".join([
            track[track_cols].to_string(index=False, float_format="%.3g"),
            warn[[c for c in warn_cols if c in warn]].to_string(index=False, float_format="%.3g"),
            f"recommended (largest J on the selection seeds): {best['signal']} {direction} "
            f"{best['threshold']:.4g}; on the held-out seeds J = {best['j']:.2f} "
            f"[{j_low:.2f}, {j_high:.2f}], TPR {best['tpr']:.2f}, FPR {best['fpr']:.2f}",
        ])  # fmt: skip
