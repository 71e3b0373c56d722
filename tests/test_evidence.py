"""treemdp.claims.evidence: hand-computed values, planted effects that must be found, and nulls
that must not be mistaken for effects."""

import itertools
import math

import numpy as np
import pandas as pd
import pytest
from hypothesis import given
from hypothesis import strategies as st

from treemdp.claims import evidence as ev


def test_mean_ci_hand_value():
    # (1, 2, 3): mean 2, sd 1, half-width t_{2, 0.975} / √3 = 4.3027 / 1.7321 = 2.4841
    est = ev.mean_ci([1.0, 2.0, 3.0, math.nan])
    assert est.n == 3 and est.value == 2.0
    assert est.low == pytest.approx(2 - 2.4841, abs=1e-4)
    assert est.high == pytest.approx(2 + 2.4841, abs=1e-4)


def test_mde_hand_value_and_monotone():
    # sd 1, n 20: t_{19, 0.975} = 2.0930, t_{19, 0.8} = 0.8610; (2.0930 + 0.8610) / √20 = 0.6605
    assert ev.mde(1.0, 20) == pytest.approx(0.6605, abs=1e-3)
    assert ev.mde(1.0, 1) == math.inf
    assert math.isnan(ev.mde(math.nan, 10))
    values = [ev.mde(0.3, n) for n in range(2, 60)]
    assert all(a > b for a, b in itertools.pairwise(values))
    with pytest.raises(ValueError, match="power"):
        ev.mde(1.0, 10, power=1.0)


@given(
    effect=st.floats(0.01, 2.0),
    sd=st.floats(0.01, 2.0),
)
def test_seeds_needed_is_the_first_n_that_reaches_the_effect(effect, sd):
    n = ev.seeds_needed(effect, sd, max_n=5000)
    if n <= 5000:
        assert ev.mde(sd, n) <= effect
        if n > 2:
            assert ev.mde(sd, n - 1) > effect
    else:
        assert ev.mde(sd, 5000) > effect


def test_mde_is_what_a_t_test_detects_with_the_stated_power():
    # simulate: a true mean of exactly mde(sd, n) is detected (interval excludes 0) ~80% of the time
    rng = np.random.default_rng(0)
    n, sd = 12, 1.0
    effect = ev.mde(sd, n)
    hits = 0
    trials = 2000
    for _ in range(trials):
        est = ev.mean_ci(rng.normal(effect, sd, size=n))
        hits += est.low > 0
    assert 0.75 < hits / trials < 0.85


def _trajectories(n_runs: int, *, planted: bool, seed: int = 0) -> pd.DataFrame:
    """Win-rate trajectories over 10 checkpoints: planted = rise to checkpoint 4 then fall by 0.1,
    plus small noise; otherwise pure noise around a constant."""
    rng = np.random.default_rng(seed)
    steps = np.arange(1, 11)
    shape = np.where(steps <= 4, 0.5 + 0.05 * steps, 0.7 - 0.03 * (steps - 4))
    rows = []
    for run in range(n_runs):
        base = shape if planted else np.full(10, 0.6)
        noise = rng.normal(0, 0.01 if planted else 0.05, size=10)
        rows += [
            {"run": run, "step": int(s), "win_rate": float(w)}
            for s, w in zip(steps, base + noise, strict=True)
        ]
    return pd.DataFrame(rows)


def _rises_then_falls(view) -> bool:
    w = view["win_rate"]
    peak = int(np.argmax(w))
    return 0 < peak < len(w) - 1 and w[peak] - w[-1] > 0.02 and w[peak] - w[0] > 0.02


def test_shuffle_within_keeps_each_runs_values_and_steps():
    table = _trajectories(5, planted=True)
    shuffled = ev.shuffle_within(table, unit="run", order="step", columns=["win_rate"], seed=3)
    assert shuffled["step"].tolist() == table["step"].tolist()
    for run in range(5):
        a = sorted(table.loc[table.run == run, "win_rate"])
        b = sorted(shuffled.loc[shuffled.run == run, "win_rate"])
        assert a == b
    assert not np.array_equal(shuffled["win_rate"], table["win_rate"])


def test_a_label_that_reads_noise_sits_on_its_null():
    null = ev.label_null(
        _trajectories(60, planted=False),
        _rises_then_falls,
        columns=["win_rate"],
        n_permutations=100,
    )
    assert null.rate > 0.3  # the label fires often on pure noise ...
    assert null.null_low <= null.rate <= null.null_high  # ... exactly as often as shuffles do
    assert null.p_value > 0.05


def test_a_label_that_reads_the_trajectory_clears_its_null():
    null = ev.label_null(
        _trajectories(60, planted=True),
        _rises_then_falls,
        columns=["win_rate"],
        n_permutations=100,
    )
    assert null.rate > null.null_high
    assert null.p_value < 0.02


def test_cohen_kappa_and_majority_hand_values():
    assert ev.cohen_kappa([1, 1, 0, 0], [1, 0, 0, 0]) == pytest.approx(0.5)
    assert ev.cohen_kappa([1, 0, 1, 0], [1, 0, 1, 0]) == pytest.approx(1.0)
    # a constant predictor that matches the majority has high raw agreement and κ = 0
    truth = [0] * 8 + [1] * 2
    assert ev.majority_rate(truth) == 0.8
    assert ev.cohen_kappa(truth, [0] * 10) == pytest.approx(0.0)
    assert math.isnan(ev.cohen_kappa([1, 1], [1, 1]))


def test_split_seeds_halves_are_disjoint_and_cover():
    select, score = ev.split_seeds(range(9), seed=1)
    assert len(select) == 4 and len(score) == 5
    assert set(select) | set(score) == set(range(9)) and not set(select) & set(score)
    with pytest.raises(ValueError, match="2 distinct"):
        ev.split_seeds([3, 3])


def _settings_table(n_settings: int, n_seeds: int, *, signal: float, seed: int = 0):
    rng = np.random.default_rng(seed)
    truth = rng.normal(0, 1, size=n_settings)
    rows = [
        {
            "setting": s,
            "seed": k,
            "truth": truth[s],
            "observed": signal * truth[s] + rng.normal(0, 1),
        }
        for s in range(n_settings)
        for k in range(n_seeds)
    ]
    return pd.DataFrame(rows)


def test_split_half_ceiling_high_with_signal_and_low_without():
    strong = ev.split_half_ceiling(
        _settings_table(12, 16, signal=3.0), setting=["setting"], value="observed", n_splits=50
    )
    noise = ev.split_half_ceiling(
        _settings_table(12, 16, signal=0.0), setting=["setting"], value="observed", n_splits=50
    )
    assert strong.value > 0.9 and strong.n == 16
    assert noise.value < 0.6


def test_rank_correlation_ci_planted_yes_and_shuffled_not_yes():
    table = _settings_table(12, 16, signal=2.0)
    planted = ev.rank_correlation_ci(
        table, setting=["setting"], predicted="truth", observed="observed", n_resamples=200
    )
    assert ev.verdict(planted, bar=0.0) == "yes"
    rng = np.random.default_rng(5)
    truths = rng.permutation(table.groupby("setting")["truth"].first())
    mapping = dict(zip(range(12), truths, strict=True))
    shuffled = table.assign(truth=table["setting"].map(mapping))
    est = ev.rank_correlation_ci(
        shuffled, setting=["setting"], predicted="truth", observed="observed", n_resamples=200
    )
    assert ev.verdict(est, bar=0.0) in ("no", "undecided")


def test_bootstrap_ci_over_a_unit_other_than_seed():
    frame = pd.DataFrame({"run": [0, 1, 2, 3], "x": [1.0, 2.0, 3.0, 4.0]})
    est = ev.bootstrap_ci(frame, lambda f: f["x"].mean(), unit="run", n_resamples=500)
    assert est.value == 2.5 and est.n == 4
    assert 1.0 <= est.low < 2.5 < est.high <= 4.0


def test_leave_one_out_baseline_hand_values():
    means = pd.DataFrame(
        {"objective": ["dpo", "dpo", "dpo", "ipo"], "beta": [0.1] * 4, "v": [1.0, 2.0, 6.0, 5.0]}
    )
    base = ev.leave_one_out_baseline(means, value="v", group=["objective", "beta"])
    assert base.iloc[:3].tolist() == [4.0, 3.5, 1.5]
    assert math.isnan(base.iloc[3])


def test_verdict_cases():
    assert ev.verdict(ev.Estimate(0.5, 0.2, 0.8, 10), bar=0.1) == "yes"
    assert ev.verdict(ev.Estimate(0.0, -0.3, 0.05, 10), bar=0.1) == "no"
    assert ev.verdict(ev.Estimate(0.1, -0.2, 0.4, 10), bar=0.1) == "undecided"
    assert ev.verdict(ev.Estimate(0.1, math.nan, math.nan, 1), bar=0.0) == "undecided"
    assert ev.verdict(ev.Estimate(math.nan, math.nan, math.nan, 0), bar=0.0) == "no data"
