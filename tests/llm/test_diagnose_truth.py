"""experiments/diagnose_truth.py's analysis on planted tables: a signal equal to the truth tracks
it with Spearman 1; a detector that fires exactly at the peak of the degrading runs only has
TPR 1, FPR 0 and lead time 0; a constant signal fires everywhere or nowhere."""

from __future__ import annotations

import pandas as pd
import pytest

from tests.scripts import load_script


@pytest.fixture(scope="module")
def truth():
    return load_script("experiments/diagnose_truth.py")


def planted(seeds: int = 6) -> pd.DataFrame:
    """Per seed two runs of 5 checkpoints: "up" rises to a peak at step 2 then falls by 0.1
    (degrades); "flat" rises and stays. ``kl`` jumps exactly at the peak of the degrading run."""
    rows = []
    for seed in range(seeds):
        for run, wins in (("up", [0.5, 0.6, 0.7, 0.65, 0.6]), ("flat", [0.5, 0.55, 0.6, 0.6, 0.6])):
            for step, w in enumerate(wins):
                ood = 0.1 * step + 0.01 * seed
                rows.append({
                    "seed": seed, "run": run, "step": step, "fraction_of_epoch": step / 4,
                    "exact_win_rate": w, "win_rate_change": w - 0.5, "exact_mass_ood": ood,
                    "ood_proxy": ood, "ood_proxy_per_token": 0.0,
                    "kl": 1.0 if (run == "up" and step >= 2) else 0.0,
                    "chosen_logp_change": -ood, "rejected_logp_change": -2 * ood,
                    "both_fall_share": 0.5, "margin": ood, "accuracy": 0.5,
                })  # fmt: skip
    return pd.DataFrame(rows)


def test_a_signal_equal_to_the_truth_tracks_it_exactly(truth):
    t = truth.tracking(planted(), n_resamples=50).set_index(["signal", "truth"])
    row = t.loc[("ood_proxy", "exact_mass_ood")]
    assert [row["spearman"], row["low"], row["high"]] == pytest.approx([1.0, 1.0, 1.0])
    assert t.loc[("chosen_logp_change", "exact_mass_ood"), "spearman"] == pytest.approx(-1.0)
    assert pd.isna(t.loc[("ood_proxy_per_token", "exact_mass_ood"), "spearman"])  # constant


def test_detector_scores_and_the_held_out_warning_table(truth):
    signals = planted()
    runs = truth.degradation(signals, 0.02)
    assert runs.groupby("run")["degrades"].all().to_dict() == {"flat": False, "up": True}
    assert (runs.loc[runs["run"] == "up", "peak_fraction"] == 0.5).all()
    s = truth.detector_scores(signals, runs, "kl", +1, 0.5)
    assert {k: s[k] for k in ("tpr", "fpr", "lead_median", "degrading_runs", "other_runs")} == {
        "tpr": 1.0, "fpr": 0.0, "lead_median": 0.0, "degrading_runs": 6, "other_runs": 6
    }  # fmt: skip
    # Wilson interval of 6/6: (1 / (1 + z²/6), 1); of 0/6: (0, z²/6 / (1 + z²/6))
    z2 = 1.959964**2
    assert s["tpr_low"] == pytest.approx(1 / (1 + z2 / 6)) and s["tpr_high"] == pytest.approx(1)
    assert s["fpr_low"] == pytest.approx(0, abs=1e-12)
    assert s["fpr_high"] == pytest.approx((z2 / 6) / (1 + z2 / 6))
    w = truth.warning(signals, 0.02).set_index("signal")
    assert w.loc["kl", "tpr"] == 1.0 and w.loc["kl", "fpr"] == 0.0
    assert w.loc["kl", "scored_seeds"] + w.loc["kl", "selection_seeds"] == 6
    # a constant signal cannot separate degrading from other runs
    assert w.loc["both_fall_share", "tpr"] == w.loc["both_fall_share", "fpr"]
