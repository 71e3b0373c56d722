"""treemdp.claims.early_warning on planted tables: a signal equal to the truth tracks it with
Spearman 1 (pooled and within runs); a detector that fires exactly at the peak of the degrading
runs only has TPR 1, FPR 0 and lead 0; a constant signal cannot separate runs; the
configuration-only baseline knows what the settings know; rises are causal."""

from __future__ import annotations

import pandas as pd
import pytest

from treemdp.claims import early_warning as ew

ORIENTATION = {
    "ood_proxy": +1, "ood_proxy_per_token": +1, "kl": +1, "chosen_logp_change": -1,
    "both_fall_share": +1,
}  # fmt: skip


def planted(seeds: int = 6) -> pd.DataFrame:
    """Per seed two runs of 5 checkpoints: "up" (objective a) rises to a peak at step 2 then
    falls by 0.1 (degrades); "flat" (objective b) rises and stays. ``kl`` jumps exactly at the
    peak of the degrading run."""
    rows = []
    for seed in range(seeds):
        for run, objective, wins in (
            ("up", "a", [0.5, 0.6, 0.7, 0.65, 0.6]),
            ("flat", "b", [0.5, 0.55, 0.6, 0.6, 0.6]),
        ):
            for step, w in enumerate(wins):
                ood = 0.1 * step + 0.01 * seed
                rows.append({
                    "seed": seed, "run": run, "objective": objective, "step": step,
                    "time": step / 4, "exact_win_rate": w, "win_rate_change": w - 0.5,
                    "exact_mass_ood": ood, "ood_proxy": ood, "ood_proxy_per_token": 0.0,
                    "kl": 1.0 if (run == "up" and step >= 2) else 0.0,
                    "chosen_logp_change": -ood, "both_fall_share": 0.5,
                })  # fmt: skip
    return pd.DataFrame(rows)


def test_a_signal_equal_to_the_truth_tracks_it_exactly():
    t = ew.tracking(planted(), ORIENTATION, ["exact_mass_ood"], n_resamples=50)
    t = t.set_index(["signal", "truth"])
    row = t.loc[("ood_proxy", "exact_mass_ood")]
    assert [row["spearman"], row["spearman_low"], row["spearman_high"]] == pytest.approx([1, 1, 1])
    assert [row["within_run"], row["within_run_low"], row["within_run_high"]] == pytest.approx(
        [1, 1, 1]
    )
    assert t.loc[("chosen_logp_change", "exact_mass_ood"), "spearman"] == pytest.approx(-1.0)
    assert pd.isna(t.loc[("ood_proxy_per_token", "exact_mass_ood"), "spearman"])  # constant
    assert row["seeds"] == 6


def test_within_run_tracking_differs_from_pooled():
    """A signal that ranks runs right but moves against the truth inside each run: pooled
    Spearman positive, within-run Spearman −1."""
    rows = []
    for seed in range(4):
        for run, level in (("low", 0.0), ("high", 10.0)):
            for step in range(1, 5):
                rows.append({"seed": seed, "run": run, "step": step, "truth": level + step,
                             "signal": level - 0.1 * step})  # fmt: skip
    t = ew.tracking(pd.DataFrame(rows), {"signal": +1}, ["truth"], n_resamples=20).iloc[0]
    assert t["spearman"] > 0.5
    assert t["within_run"] == pytest.approx(-1.0)


def test_detector_scores_and_the_held_out_warning_table():
    signals = planted()
    runs = ew.degradation(signals, 0.02, time="time")
    assert runs.groupby("run")["degrades"].all().to_dict() == {"flat": False, "up": True}
    assert (runs.loc[runs["run"] == "up", "peak_time"] == 0.5).all()
    s = ew.detector_scores(signals, runs, "kl", +1, 0.5, time="time", n_resamples=50)
    assert {k: s[k] for k in ("tpr", "tpr_before_peak", "fpr", "j", "lead_median",
                               "degrading_runs", "other_runs")} == {
        "tpr": 1.0, "tpr_before_peak": 1.0, "fpr": 0.0, "j": 1.0, "lead_median": 0.0,
        "degrading_runs": 6, "other_runs": 6,
    }  # fmt: skip
    assert (s["j_low"], s["j_high"]) == (1.0, 1.0)
    # a detector that fires one checkpoint after the peak: still a positive, not before the peak
    late = ew.detector_scores(signals, runs, "ood_proxy", +1, 0.295, time="time", n_resamples=0)
    assert late["tpr_before_peak"] < late["tpr"]
    w = ew.warning(signals, ORIENTATION, 0.02, time="time", n_resamples=50).set_index("signal")
    assert w.loc["kl", "tpr"] == 1.0 and w.loc["kl", "fpr"] == 0.0
    assert w.loc["kl", "scored_seeds"] + w.loc["kl", "selection_seeds"] == 6
    assert w.loc["kl", "threshold"] < 1.0  # fires at kl = 1, in the signal's own units
    # a constant signal cannot separate degrading from other runs
    assert w.loc["both_fall_share", "tpr"] == w.loc["both_fall_share", "fpr"]
    with pytest.raises(ValueError, match="margin must be >= 0"):
        ew.degradation(signals, -1, time="time")


def test_the_configuration_baseline_and_the_recommendation():
    signals = planted()
    w = ew.warning(signals, ORIENTATION, 0.02, time="time", setting=["objective"], n_resamples=20)
    base = w.set_index("signal").loc["setting_prior"]
    # here the objective alone decides which runs degrade: the baseline is perfect ...
    assert (base["tpr"], base["fpr"]) == (1.0, 0.0)
    # ... and the recommendation is a signal, never the baseline
    best = ew.recommend(w)
    assert best["signal"] != "setting_prior" and best["signal"] == "kl"
    with pytest.raises(ValueError, match="besides the baselines"):
        ew.recommend(w[w["signal"] == "setting_prior"])


def test_rises_are_causal_and_never_negative():
    signals = planted()
    signals.loc[signals["step"] == 1, "kl"] = 3.0  # a spike that comes back down
    out, orientation = ew.with_rises(signals, {"kl": +1, "chosen_logp_change": -1})
    assert orientation["kl_rise"] == +1 and orientation["chosen_logp_change_rise"] == +1
    assert (out["kl_rise"] >= 0).all()
    up = out[(out["seed"] == 0) & (out["run"] == "up")].sort_values("step")
    # kl: 0, 3, 1, 1, 1 → rise above the running minimum 0: 0, 3, 1, 1, 1
    assert up["kl_rise"].tolist() == [0.0, 3.0, 1.0, 1.0, 1.0]
    # −chosen change rises with ood: 0.1 per step above the first value
    assert up["chosen_logp_change_rise"].tolist() == pytest.approx([0, 0.1, 0.2, 0.3, 0.4])
    # changing a later checkpoint never changes an earlier rise
    later = signals.copy()
    later.loc[later["step"] == 4, "kl"] = -5.0
    out2, _ = ew.with_rises(later, {"kl": +1})
    early = out2["step"] < 4
    assert out2.loc[early, "kl_rise"].tolist() == out.loc[early, "kl_rise"].tolist()


def test_stopping_gains_what_a_stop_at_the_peak_keeps():
    signals = planted()
    st = ew.stopping(signals, ORIENTATION, time="time", setting=["objective"], n_resamples=20)
    st = st.set_index("signal")
    # kl fires exactly at the degrading runs' peak: they keep 0.7 instead of 0.6, the others
    # never stop; mean gain (0.1 + 0) / 2, no regret
    assert st.loc["kl", "gain"] == pytest.approx(0.05)
    assert st.loc["kl", "regret"] == pytest.approx(0.0, abs=1e-12)
    assert st.loc["kl", "stopped"] == pytest.approx(0.5)
    # a constant signal can only stop every run at once: the selection keeps training instead
    assert st.loc["both_fall_share", "gain"] == 0 and st.loc["both_fall_share", "stopped"] == 0
    assert st.loc["time", "kind"] == "baseline" and st.loc["setting_prior", "kind"] == "baseline"
    assert st.loc["kl", "kind"] == "signal"


def test_selection_of_the_kept_checkpoint():
    signals = planted()
    sel = ew.selection(signals, [10**9], time="time", setting=["objective"], n_resamples=20)
    sel = sel.set_index("rule")
    assert sel.loc["last", "regret"] == pytest.approx(0.05)  # the degrading half loses 0.1
    assert sel.loc["judge_1000000000", "regret"] == pytest.approx(0.0, abs=1e-4)
    assert sel.loc["setting_best", "regret"] == pytest.approx(0.0, abs=1e-12)
    assert sel.loc["judge_1000000000", "gain_over_last"] == pytest.approx(0.05, abs=1e-4)


def test_a_judge_is_the_win_rate_plus_binomial_noise():
    signals = planted(seeds=40)
    exact, _ = ew.with_judge(signals, [10**12])
    best = signals.sort_values("step").groupby(["seed", "run"])["exact_win_rate"].cummax()
    assert exact["judged_drop_1000000000000"].to_numpy() == pytest.approx(
        (best - signals["exact_win_rate"]).sort_index().to_numpy(), abs=1e-5
    )
    noisy, orientation = ew.with_judge(signals, [100])
    again, _ = ew.with_judge(signals, [100])
    assert orientation == {"judged_drop_100": +1}
    pd.testing.assert_series_equal(noisy["judged_drop_100"], again["judged_drop_100"])
    assert (noisy["judged_drop_100"] >= 0).all() and noisy["judged_drop_100"].std() > 0.01
    with pytest.raises(ValueError, match="samples must be >= 1"):
        ew.with_judge(signals, [0])


def test_analyse_and_report():
    truths = ["exact_mass_ood", "win_rate_change"]
    tables = ew.analyse(planted(), ORIENTATION, truths, time="time", setting=["objective"],
                        samples=[100], n_resamples=20)  # fmt: skip
    assert set(tables) == {"tracking", "warning", "stopping", "selection"}
    assert {"kl_rise", "judged_drop_100", "setting_prior"} <= set(tables["warning"]["signal"])
    text = ew.report(tables)
    assert "recommended detector among the signals" in text and "best stopping rule" in text


def test_paired_power_against_the_configuration_baseline():
    signals = planted(seeds=8)
    warn = ew.warning(signals, ORIENTATION, 0.02, time="time", setting=["objective"],
                      n_resamples=0)  # fmt: skip
    # kl and the baseline are both perfect on every scoring seed: no difference, no spread
    p = ew.paired_power(signals, warn, "kl", time="time", setting=["objective"])
    assert (p["mean_difference"], p["sd"], p["seeds"]) == (0.0, 0.0, 4)
    # a constant signal is J 0 on every seed, the baseline J 1: a difference of exactly −1
    c = ew.paired_power(signals, warn, "both_fall_share", time="time", setting=["objective"])
    assert (c["mean_difference"], c["sd"]) == (-1.0, 0.0)
