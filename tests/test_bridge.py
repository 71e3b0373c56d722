"""The bridge (``treemdp.bridge``, issue 24): tests that can fail both ways. A planted synthetic
grid in which the toy's quantities do predict the "LLM" gives "yes"; the same grid with the
predictions shuffled across settings gives "no" or "undecided"; a label that reads pure
checkpoint noise sits on its shuffled-checkpoint null; the capacity is chosen on held-out seeds;
runs of different configurations are not pooled."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest

import treemdp.bridge as br

REGIMES, OBJECTIVES, BETAS, LRS = ("1pref", "bt"), ("dpo", "ipo", "slic"), (0.1, 0.3), (1e-3, 3e-3)
LLM_AT = np.linspace(0, 1, 5)  # the LLM's checkpoints
TOY_AT = np.linspace(0, 1, 11)  # the toy logs more often


def _effect(regime: str, objective: str, beta: float) -> float:
    """The planted per-setting growth of every quantity: it differs by regime inside each
    (objective, β), which an objective-β baseline cannot know and the toy can."""
    base = {"dpo": 0.2, "ipo": 0.5, "slic": 0.35}[objective] - beta
    return base + (1.2 if regime == "bt" else 0.0) * (1 + OBJECTIVES.index(objective))


def _rows(side, regime, objective, beta, lr, seed, size, at, growth, rng, noise) -> pd.DataFrame:
    n = len(at)
    values = {
        q: 0.1 + growth * at + noise * rng.standard_normal(n) * (at > 0) for q in br.QUANTITIES
    }
    return pd.DataFrame({
        "regime": regime, "objective": objective, "beta": beta, "lr": lr, "seed": seed,
        "size": size, "side": side, "step": np.arange(n), "fraction": at, **values,
    })  # fmt: skip


def _grid(seeds: range, *, shuffle_toy: bool = False, noise: float = 0.05) -> pd.DataFrame:
    """LLM runs whose quantities grow by the setting's effect (lr adds a little), a toy
    ``good`` whose growth is the effect, and ``flat`` that predicts the same everywhere;
    ``shuffle_toy`` permutes the good toy's effect across (regime, objective, β)."""
    rng = np.random.default_rng(0)
    keys = list(itertools.product(REGIMES, OBJECTIVES, BETAS))
    toy_of = dict(zip(keys, rng.permutation(len(keys)), strict=True))
    frames = []
    for seed in seeds:
        for regime, objective, beta in keys:
            effect = _effect(regime, objective, beta)
            toy_key = keys[toy_of[(regime, objective, beta)]] if shuffle_toy else None
            toy_effect = _effect(*toy_key) if toy_key else effect
            frames.append(_rows("good", regime, objective, beta, np.nan, seed, "", TOY_AT,
                                toy_effect, rng, 0.01))  # fmt: skip
            frames.append(_rows("flat", regime, objective, beta, np.nan, seed, "", TOY_AT,
                                0.5, rng, 0.0))  # fmt: skip
            for lr in LRS:
                growth = effect + (0.05 if lr == LRS[1] else 0.0) + 0.1 * rng.standard_normal()
                frames.append(_rows("llm", regime, objective, beta, lr, seed, "tiny", LLM_AT,
                                    growth, rng, noise))  # fmt: skip
    return pd.concat(frames, ignore_index=True)


def _score(grid: pd.DataFrame, quantity: str = "mass_ood:final", toy: str = "good") -> dict:
    values = br.summaries(br.aligned(grid))
    pairs = br.paired(values[values["quantity"] == quantity], toy)
    rows = br.score_quantity(pairs, quantity, n_resamples=300, n_splits=50)
    return {r["statistic"]: r for r in rows}


def test_a_planted_prediction_is_yes_and_beats_the_objective_beta_baseline():
    rows = _score(_grid(range(6)))
    spearman = rows["spearman"]
    assert spearman["verdict"] == "yes", spearman
    assert spearman["ci_low"] > spearman["baseline"] and spearman["value"] > 0.8
    assert spearman["value"] <= spearman["noise_ceiling"] + 0.05  # no predictor beats the LLM
    assert spearman["n_seeds"] == 6 and 0 < spearman["mde"] < 1
    assert rows["calibration_slope"]["ci_low"] > 0.5  # the toy's scale carries over


def test_the_same_grid_with_shuffled_predictions_is_not_yes():
    rows = _score(_grid(range(6), shuffle_toy=True))
    assert rows["spearman"]["verdict"] in ("no", "undecided"), rows["spearman"]


def test_a_constant_prediction_is_no_data_not_yes():
    rows = _score(_grid(range(4)), toy="flat")
    assert rows["spearman"]["verdict"] == "no data"


def test_trajectory_summaries_align_the_toy_to_the_llm_checkpoints():
    grid = _grid(range(2))
    points = br.aligned(grid)
    toy = points[(points["side"] == "good") & (points["seed"] == 0)]
    assert sorted(toy["fraction"].unique()) == list(LLM_AT)  # interpolated at the LLM's points
    values = br.summaries(points)
    traj = values[values["quantity"] == "kl_reverse:trajectory"]
    assert sorted(traj["point"].unique()) == [1, 2, 3, 4]  # the start is not a prediction
    one = values[(values["side"] == "llm") & (values["quantity"] == "win_rate:peak_to_end")]
    assert (one["value"] <= 0).all()


def test_a_label_of_pure_checkpoint_noise_sits_on_its_null():
    rng = np.random.default_rng(1)
    grid = _grid(range(6))
    llm = grid["side"] == "llm"
    # the LLM's OOD mass and win rate are i.i.d. noise at every checkpoint: no trajectory
    for q in ("mass_ood", "win_rate"):
        grid.loc[llm, q] = rng.uniform(0, 1, int(llm.sum()))
    points = br.label_table(br.aligned(grid[llm | (grid["side"] == "good")]))
    labels = br.run_labels(points, 0.1)
    for label in br.LABELS:
        rows = br.score_label(
            labels, points, label, toy="good", margin=0.1, n_resamples=50, n_permutations=100
        )
        (row,) = [r for r in rows if r["statistic"] == "llm_rate_vs_shuffled"]
        assert row["verdict"] == "undecided", row
        assert abs(row["value"] - row["baseline"]) < 0.1
    # the planted trajectories (OOD mass grows steadily) are far from their null
    planted = br.label_table(br.aligned(_grid(range(6))))
    rows = br.score_label(
        br.run_labels(planted, 0.1), planted, "degrades", toy="good", margin=0.1,
        n_resamples=50, n_permutations=100,
    )  # fmt: skip
    (row,) = [r for r in rows if r["statistic"] == "llm_rate_vs_shuffled"]
    assert row["verdict"] == "yes" and row["ci_low"] > row["baseline"]


def test_bridge_table_schema_and_held_out_selection():
    grid = _grid(range(4))
    grid = grid[grid["objective"].isin(["dpo", "ipo"]) & (grid["beta"] == 0.1)]  # 8 settings
    table, selection = br.bridge(
        grid, ["flat", "good"], margin=0.1, n_resamples=30, n_permutations=20, n_splits=5
    )
    assert list(table.columns) == br.BRIDGE_COLUMNS
    assert set(table["verdict"]) <= {"yes", "no", "undecided", "no data"}
    assert len(table) == 2 * 3 * len(br.QUANTITIES) + 3 * len(br.LABELS)
    final = selection.set_index("quantity").loc["mass_ood:final"]
    assert final["toy"] == "good"  # chosen on the selection half, though listed second
    select, score = final["select_seeds"].split(), final["score_seeds"].split()
    assert not set(select) & set(score) and len(select) + len(score) == 4
    assert (table["n_seeds"] == len(score)).all()
    needed = selection["seeds_needed"]
    assert ((needed >= 2) | (needed == -1)).all() and (needed >= 2).any()


def test_runs_that_differ_in_more_than_the_seed_are_not_pooled():
    grid = _grid(range(2))
    grid["config"] = "a"
    br.check_poolable(grid)
    grid.loc[(grid["seed"] == 1) & (grid["side"] == "llm"), "config"] = "b"
    with pytest.raises(ValueError, match="different configurations"):
        br.check_poolable(grid)
    with pytest.raises(ValueError, match="two rows"):
        br.check_poolable(pd.concat([grid.assign(config="a"), grid.assign(config="a")]))
