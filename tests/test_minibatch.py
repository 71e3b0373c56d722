"""Minibatch training in epochs: full batch when batch_size >= P, epochs cover every pair once."""

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from treemdp.batching import EpochSchedule
from treemdp.problem import ProblemSpec, build_problem
from treemdp.train import RunSpec, train
from treemdp.tree import Tree


def small_problem(n_pairs=5, policy="loglinear"):
    return build_problem(
        Tree.complete(3, 2), [0, 1], ProblemSpec(policy=policy, pairs=n_pairs, sft_steps=5)
    )


SPECS = [RunSpec("dpo", 0.1, 0.05), RunSpec("ipo", 0.3, 0.05)]


@pytest.mark.parametrize("batch_size", [5, 6, 100])
def test_batch_size_at_least_p_equals_full_batch(batch_size):
    problem = small_problem(n_pairs=5)
    full = train(problem, SPECS, steps=12, log_every=3).frame
    mini = train(problem, SPECS, steps=12, log_every=3, batch_size=batch_size).frame
    assert mini.drop(columns=["epoch", "fraction_of_epoch"]).equals(full)
    assert mini["fraction_of_epoch"].tolist() == mini["step"].astype(float).tolist()


def test_default_history_has_no_epoch_columns():
    frame = train(small_problem(), SPECS, steps=2).frame
    assert "epoch" not in frame and "fraction_of_epoch" not in frame


@given(st.integers(1, 40), st.integers(1, 12), st.integers(0, 2**31))
def test_every_epoch_visits_every_pair_once(n_pairs, batch_size, seed):
    s = EpochSchedule(n_pairs, batch_size, seed=seed)
    for epoch in range(3):
        steps = range(epoch * s.steps_per_epoch, (epoch + 1) * s.steps_per_epoch)
        seen = torch.cat([s.batch(t) for t in steps])
        assert sorted(seen.tolist()) == list(range(n_pairs))
        assert all(len(s.batch(t)) <= batch_size for t in steps)


def test_schedule_is_seeded_and_reshuffles_each_epoch():
    a, b, c = (
        EpochSchedule(20, 4, seed=1),
        EpochSchedule(20, 4, seed=1),
        EpochSchedule(20, 4, seed=2),
    )
    first = torch.cat([a.batch(t) for t in range(5)])
    assert torch.equal(first, torch.cat([b.batch(t) for t in range(5)]))
    assert not torch.equal(first, torch.cat([c.batch(t) for t in range(5)]))
    assert not torch.equal(first, torch.cat([a.batch(t) for t in range(5, 10)]))


def test_epoch_columns_count_pairs_seen():
    # P = 10, B = 4: steps per epoch 3 (4 + 4 + 2 pairs)
    cols = EpochSchedule(10, 4).epoch_columns(np.array([0, 1, 2, 3, 4, 6]))
    assert cols["epoch"].tolist() == [0, 0, 0, 1, 1, 2]
    np.testing.assert_allclose(cols["fraction_of_epoch"], [0, 0.4, 0.8, 1.0, 1.4, 2.0])


def test_minibatch_step_is_the_gradient_of_the_batch_mean():
    """SGD, one step: θ1 = θ0 − lr·∇ mean over the first batch's pairs only."""
    problem = small_problem(n_pairs=6)
    spec = [RunSpec("dpo", 0.1, 0.5)] * 2
    mini = train(problem, spec, steps=1, optimizer="sgd", batch_size=2, batch_seed=3).frame
    batch = EpochSchedule(6, 2, seed=3).batch(0)
    sub = build_problem(
        Tree.complete(3, 2), [0, 1], ProblemSpec(policy="loglinear", pairs=6, sft_steps=5)
    )
    from treemdp.data import Pairs

    sub = type(sub)(
        sub.tree,
        sub.policy,
        sub.rewards,
        Pairs(sub.pairs.chosen[:, batch], sub.pairs.rejected[:, batch]),
        sub.seeds,
        sub.sft,
    )
    one = train(sub, spec, steps=1, optimizer="sgd").frame
    # same parameters after the step ⇒ same distribution ⇒ same KL to the shared reference
    got = mini[mini["step"] == 1]["kl_reverse"].to_numpy()
    want = one[one["step"] == 1]["kl_reverse"].to_numpy()
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-14)


def test_batch_of_runs_equals_single_runs_with_minibatches():
    problem = small_problem(n_pairs=7)
    both = train(problem, SPECS, steps=9, log_every=3, batch_size=3).frame
    for r in range(2):
        one = train(problem.select([r]), [SPECS[r]], steps=9, log_every=3, batch_size=3).frame
        got = both[both["run"] == r].drop(columns="run").reset_index(drop=True)
        np.testing.assert_allclose(
            got["win_rate"].to_numpy(), one["win_rate"].to_numpy(), rtol=0, atol=1e-12
        )


def test_bad_batch_size_raises():
    with pytest.raises(ValueError, match="batch_size"):
        train(small_problem(), SPECS, steps=1, batch_size=0)


def test_extra_metrics_become_columns():
    tree = Tree.complete(3, 2)
    frame = train(
        small_problem(),
        SPECS,
        steps=2,
        log_every=1,
        extra_metrics=lambda logp: {"top": logp.max(-1).values},
    ).frame
    assert list(frame.columns)[-1] == "top" and frame["top"].le(0).all()
    assert len(frame) == 6 and tree.n_responses == 9
