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
* ``stopping``: a detector used as a stopping rule, what a practitioner would do with it: stop
  at the checkpoint where it first fires (or at the end). Its held-out *gain* is the win rate at
  the stop minus the win rate at the end, its *regret* the peak minus the win rate at the stop
  (mean over runs, interval over seeds). ``time`` itself is a signal here: "stop at a fixed
  point of training" is the baseline that reads nothing from the run.
* ``selection``: which checkpoint to keep, when every checkpoint was saved: the last one, the
  one with the best judged win rate (``n`` samples), or the one whose point of training had the
  best mean win rate in the same setting on the selection seeds (knows the configuration);
  held-out regret = the run's peak win rate minus the kept checkpoint's.
* ``with_judge``: what a judge sees: the exact win rate plus the binomial noise of ``n``
  judged samples per checkpoint, as the causal signal ``judged_drop_<n>``, the fall of that
  estimate below its best value so far.
* ``with_rises``: causal "upturn" signals: how far a signal has risen above its lowest value so
  far in the run (a run that turns around, not one that sits high).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from treemdp.claims.evidence import Estimate, bootstrap_ci, mde, mean_ci, seeds_needed, split_seeds
from treemdp.claims.statistics import spearman

__all__ = [
    "JUDGE_SAMPLES",
    "analyse",
    "degradation",
    "detector_scores",
    "paired_power",
    "recommend",
    "report",
    "selection",
    "setting_prior",
    "stopping",
    "tracking",
    "warning",
    "with_judge",
    "with_rises",
]

RUN = ["seed", "run"]


def _kind(name: str, time: str) -> str:
    """What a rule reads: "baseline" (the configuration or the clock), "judge" (a simulated
    judged win rate) or "signal" (a monitored signal or its rise)."""
    if name in ("setting_prior", time):
        return "baseline"
    return "judge" if name.startswith("judged_") else "signal"


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
        rows.append({"signal": name, "kind": _kind(name, time), "threshold": sign * tau,
                     "orientation": sign, "selection_j": j, "selection_seeds": len(select),
                     "scored_seeds": len(score), **held})  # fmt: skip
    return pd.DataFrame(rows)


def recommend(table: pd.DataFrame, *, by: str = "selection_j") -> pd.Series:
    """The rule to recommend among the signals (``kind`` "signal": not the baselines, not the
    judges), chosen on the selection seeds only (the largest ``by``; ties: the earlier row),
    with its held-out scores."""
    candidates = table[table["kind"] == "signal"]
    if candidates.empty:
        raise ValueError("the table must hold at least one signal besides the baselines")
    return candidates.loc[candidates[by].idxmax()]


JUDGE_SAMPLES = (64, 256, 1024)
"""Judged samples per checkpoint simulated by ``analyse`` (``with_judge``, ``selection``)."""


def analyse(
    signals: pd.DataFrame,
    orientation: Mapping[str, int],
    truths: Sequence[str],
    *,
    time: str,
    setting: Sequence[str],
    margin: float = 0.02,
    samples: Sequence[int] = JUDGE_SAMPLES,
    n_resamples: int = 1000,
) -> dict[str, pd.DataFrame]:
    """Every table of this module for one signals table: ``tracking`` (the signals against
    ``truths``), ``warning`` and ``stopping`` (the signals, their rises, the simulated judges
    and the baselines) and ``selection``."""
    track = tracking(signals, orientation, truths, n_resamples=n_resamples)
    extended, rules = with_rises(signals, orientation)
    extended, judges = with_judge(extended, samples)
    rules = {**rules, **judges}
    return {
        "tracking": track,
        "warning": warning(extended, rules, margin, time=time, setting=setting,
                           n_resamples=n_resamples),
        "stopping": stopping(extended, rules, time=time, setting=setting, margin=margin,
                             n_resamples=n_resamples),
        "selection": selection(signals, samples, time=time, setting=setting,
                               n_resamples=n_resamples),
    }  # fmt: skip


def report(tables: Mapping[str, pd.DataFrame]) -> str:
    """``analyse``'s tables as printed text, with the recommended detector and stopping rule
    (chosen on the selection seeds among the signals; the judges and baselines are shown for
    comparison)."""
    track_cols = ["signal", "truth", "spearman", "spearman_low", "spearman_high", "within_run",
                  "within_run_low", "within_run_high"]  # fmt: skip
    warn_cols = ["signal", "kind", "threshold", "selection_j", "tpr", "tpr_before_peak", "fpr", "j",
                 "j_low", "j_high", "lead_median"]  # fmt: skip
    stop_cols = ["signal", "kind", "threshold", "selection_gain", "gain", "gain_low", "gain_high",
                 "regret", "stopped"]  # fmt: skip
    warn, stop = tables["warning"], tables["stopping"]
    best = recommend(warn)
    direction = ">" if best["orientation"] > 0 else "<"
    j_low, j_high = best.get("j_low", math.nan), best.get("j_high", math.nan)
    best_stop = recommend(stop, by="selection_gain")
    float_format = "%.3g"
    with pd.option_context("display.width", 200):
        return "\n".join([
            tables["tracking"][track_cols].to_string(index=False, float_format=float_format),
            warn[[c for c in warn_cols if c in warn]].to_string(index=False,
                                                                float_format=float_format),
            f"recommended detector among the signals (largest J on the selection seeds): "
            f"{best['signal']} {direction} {best['threshold']:.4g}; held out: J = "
            f"{best['j']:.2f} [{j_low:.2f}, {j_high:.2f}], TPR {best['tpr']:.2f}, FPR "
            f"{best['fpr']:.2f}",
            stop[stop_cols].to_string(index=False, float_format=float_format),
            f"best stopping rule among the signals: {best_stop['signal']}; held-out gain over "
            f"training to the end {best_stop['gain']:.4f} [{best_stop['gain_low']:.4f}, "
            f"{best_stop['gain_high']:.4f}]",
            tables["selection"].to_string(index=False, float_format=float_format),
        ])  # fmt: skip


def _grid(
    signals: pd.DataFrame, name: str, sign: int
) -> tuple[pd.MultiIndex, np.ndarray, np.ndarray, np.ndarray]:
    """Runs × checkpoints (after step 0) matrices of the oriented signal (−inf where a run has
    fewer checkpoints or no value) and of the win rate (the run's last value carried forward),
    and each run's number of checkpoints."""
    later = signals[signals["step"] > 0].sort_values([*RUN, "step"])
    position = later.groupby(RUN).cumcount().to_numpy()
    keys = pd.MultiIndex.from_frame(later[RUN])
    runs = keys.unique()
    row = runs.get_indexer(keys)
    k = int(position.max()) + 1 if len(position) else 0
    s = np.full((len(runs), k), -np.inf)
    w = np.full((len(runs), k), np.nan)
    s[row, position] = sign * later[name].to_numpy(dtype=float)
    w[row, position] = later["exact_win_rate"].to_numpy(dtype=float)
    w = pd.DataFrame(w).ffill(axis=1).to_numpy()
    counts = np.bincount(row, minlength=len(runs))
    return runs, np.nan_to_num(s, nan=-np.inf), w, counts


def _first(s: np.ndarray, tau: float) -> np.ndarray:
    """Each run's first checkpoint with s > τ (K: never). Shape (n, K) → (n,)."""
    fires = s > tau
    return np.where(fires.any(1), fires.argmax(1), s.shape[1])


def _stops(s: np.ndarray, w: np.ndarray, taus: np.ndarray) -> np.ndarray:
    """The win rate at the stop of each run for each τ (first checkpoint with s > τ, else the
    last). Shapes (n, K), (n, K), (T,) → (n, T)."""
    fires = s[:, :, None] > taus[None, None, :]
    first = np.where(fires.any(1), fires.argmax(1), s.shape[1] - 1)
    return np.take_along_axis(w, first, axis=1)


def stopping(
    signals: pd.DataFrame,
    orientation: Mapping[str, int],
    *,
    time: str,
    setting: Sequence[str] = (),
    margin: float = 0.02,
    seed: int = 0,
    n_resamples: int = 1000,
    n_thresholds: int = 200,
) -> pd.DataFrame:
    """Each signal as a stopping rule (module docstring): τ chosen on one half of the seeds
    (the largest mean gain there, among ``n_thresholds`` quantiles of the oriented signal),
    scored on the other half. ``time`` (stop at a fixed point) and, with ``setting`` columns,
    ``setting_prior`` (stop at the first checkpoint in settings that degraded on the selection
    seeds) are added as baselines.

    Returns:
        One row per rule: signal, threshold (in the signal's own units and direction),
        orientation, selection_gain, then on the held-out seeds gain (with gain_low,
        gain_high), regret, stopped (share of runs stopped before the end), runs, scored_seeds.
    """
    runs_table = degradation(signals, margin, time=time)
    select, score = split_seeds(sorted(signals["seed"].unique()), seed=seed)
    orientation = {**orientation, time: +1}
    if setting:
        signals = signals.assign(setting_prior=setting_prior(signals, runs_table, setting, select))
        orientation["setting_prior"] = +1
    rows = []
    for name, sign in orientation.items():
        runs, s, w, counts = _grid(signals, name, sign)
        is_score = runs.get_level_values("seed").isin(score)
        finite = s[~is_score][np.isfinite(s[~is_score])]
        if finite.size == 0:
            continue
        taus = np.unique(np.quantile(finite, np.linspace(0, 1, n_thresholds))) - 1e-12
        taus = np.append(taus, np.inf)  # never stop early
        gain_sel = (_stops(s[~is_score], w[~is_score], taus) - w[~is_score, -1:]).mean(0)
        best = int(np.argmax(gain_sel))
        tau = taus[best]
        at_stop = _stops(s[is_score], w[is_score], np.array([tau]))[:, 0]
        held = pd.DataFrame({
            "seed": runs.get_level_values("seed")[is_score],
            "gain": at_stop - w[is_score, -1], "regret": np.nanmax(w[is_score], 1) - at_stop,
            "stopped": _first(s[is_score], tau) < counts[is_score] - 1,
        })  # fmt: skip
        e = bootstrap_ci(held, lambda f: float(f["gain"].mean()), n_resamples=n_resamples)
        rows.append({
            "signal": name, "kind": _kind(name, time), "threshold": sign * tau,
            "orientation": sign, "selection_gain": float(gain_sel[best]), "gain": e.value,
            "gain_low": e.low, "gain_high": e.high, "regret": float(held["regret"].mean()),
            "stopped": float(held["stopped"].mean()), "runs": len(held),
            "scored_seeds": len(score),
        })  # fmt: skip
    return pd.DataFrame(rows)


def with_judge(
    signals: pd.DataFrame, samples: Sequence[int], *, seed: int = 0
) -> tuple[pd.DataFrame, dict[str, int]]:
    """The table with one ``judged_drop_<n>`` column per sample count ``n``: a judged win rate
    (``exact_win_rate`` plus Gaussian noise of the binomial standard deviation
    √(w(1 − w)/n), drawn once per row from ``seed``) and, per run, its best value so far minus
    its current value (≥ 0; causal). Returns the table and those columns' orientations (+1)."""
    if any(n < 1 for n in samples):
        raise ValueError(f"samples must be >= 1; got {list(samples)}")
    out = signals.sort_values([*RUN, "step"]).copy()
    w = out["exact_win_rate"].to_numpy(dtype=float)
    rng = np.random.default_rng(seed)
    added = {}
    for n in samples:
        judged = pd.Series(_judged(w, n, rng), index=out.index)
        best = judged.groupby([out["seed"], out["run"]]).cummax()
        out[f"judged_drop_{n}"] = best - judged
        added[f"judged_drop_{n}"] = +1
    return out.sort_index(), added


def _judged(w: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """``w`` plus Gaussian noise of the binomial standard deviation √(w(1 − w)/n)."""
    return w + rng.standard_normal(w.shape) * np.sqrt(np.clip(w * (1 - w), 0, None) / n)


def selection(
    signals: pd.DataFrame,
    samples: Sequence[int],
    *,
    time: str,
    setting: Sequence[str] = (),
    seed: int = 0,
    n_resamples: int = 1000,
) -> pd.DataFrame:
    """Checkpoint choices scored on the held-out seeds (module docstring): ``last``,
    ``judge_<n>`` for each sample count and, with ``setting`` columns, ``setting_best``.

    Returns:
        One row per rule: rule, regret (mean over held-out runs of peak − kept win rate, with
        regret_low, regret_high over seeds), gain_over_last (mean kept − last win rate),
        runs, scored_seeds.
    """
    select, score = split_seeds(sorted(signals["seed"].unique()), seed=seed)
    later = signals[signals["step"] > 0].sort_values([*RUN, "step"])
    later = later.assign(position=later.groupby(RUN).cumcount())
    rng = np.random.default_rng(seed)
    keep: dict[str, pd.Series] = {"last": later.groupby(RUN)["position"].transform("max")}
    for n in samples:
        judged = pd.Series(_judged(later["exact_win_rate"].to_numpy(float), n, rng), later.index)
        best = judged.groupby([later["seed"], later["run"]]).transform("idxmax")
        keep[f"judge_{n}"] = later.loc[best, "position"].set_axis(later.index)
    if setting:
        chosen = later[later["seed"].isin(select)]
        curve = chosen.groupby([*setting, "position"])["exact_win_rate"].mean().reset_index()
        top = curve.loc[curve.groupby(list(setting))["exact_win_rate"].idxmax()]
        top = top.rename(columns={"position": "kept"})[[*setting, "kept"]]
        kept = later[list(setting)].merge(top, on=list(setting), how="left")["kept"]
        last = keep["last"].to_numpy()
        keep["setting_best"] = pd.Series(np.where(kept.isna(), last, kept), later.index)
    scored = later["seed"].isin(score)
    rows = []
    for rule, position in keep.items():
        t = later[scored].assign(kept=position[scored])
        per_run = t.groupby(RUN).apply(
            lambda g: pd.Series({
                "regret": g["exact_win_rate"].max()
                - g.loc[g["position"] == g["kept"], "exact_win_rate"].iloc[0],
                "gain": g.loc[g["position"] == g["kept"], "exact_win_rate"].iloc[0]
                - g["exact_win_rate"].iloc[-1],
            }),
            include_groups=False,
        ).reset_index()  # fmt: skip
        e = bootstrap_ci(per_run, lambda f: float(f["regret"].mean()), n_resamples=n_resamples)
        rows.append({"rule": rule, "regret": e.value, "regret_low": e.low, "regret_high": e.high,
                     "gain_over_last": float(per_run["gain"].mean()), "runs": len(per_run),
                     "scored_seeds": len(score)})  # fmt: skip
    return pd.DataFrame(rows)


def paired_power(
    signals: pd.DataFrame,
    warn: pd.DataFrame,
    name: str,
    *,
    time: str,
    setting: Sequence[str],
    baseline: str = "setting_prior",
    margin: float = 0.02,
    effect: float = 0.05,
    seed: int = 0,
) -> dict[str, float]:
    """How well the scoring seeds resolve a detector against the configuration baseline: per
    scoring seed, J of ``name`` minus J of ``baseline``, each at its threshold in ``warn``
    (``warning``'s table, same ``seed`` split); the mean and spread of that difference over the
    seeds where both are defined, the minimal detectable difference at 80% power (``mde``), and
    the seeds ``seeds_needed`` to detect ``effect``."""
    runs = degradation(signals, margin, time=time)
    select, score = split_seeds(sorted(signals["seed"].unique()), seed=seed)
    signals = signals.assign(setting_prior=setting_prior(signals, runs, setting, select))
    rows = warn.set_index("signal")
    diffs = []
    for s in score:
        own, own_runs = signals[signals["seed"] == s], runs[runs["seed"] == s]
        j = [
            detector_scores(own, own_runs, r, int(rows.loc[r, "orientation"]),
                            rows.loc[r, "orientation"] * rows.loc[r, "threshold"], time=time,
                            n_resamples=0)["j"]
            for r in (name, baseline)
        ]  # fmt: skip
        diffs.append(j[0] - j[1])
    d = np.array(diffs, dtype=float)
    d = d[np.isfinite(d)]
    sd = float(d.std(ddof=1)) if len(d) > 1 else math.nan
    return {
        "mean_difference": float(d.mean()) if len(d) else math.nan,
        "sd": sd,
        "seeds": len(d),
        "mde": mde(sd, len(d)),
        "seeds_needed": seeds_needed(effect, sd) if sd > 0 else 2,
    }
