"""Gold rewards: seeded, standardised, the documented explained share and shapes."""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from tests.strategies import explained_shares, stop_trees
from treemdp.data import normal_rewards
from treemdp.policy import gaussian_features
from treemdp.problem import ProblemSpec, build_problem
from treemdp.rewards import (
    REWARDS,
    concave_rewards,
    gold_rewards,
    length_rewards,
    linear_rewards,
    saturating_rewards,
    sequence_features,
)
from treemdp.tree import Tree


def setup(seed, tree=None, k=3):
    tree = tree or Tree.with_stop(3, 4)
    gen = torch.Generator().manual_seed(seed)
    return tree, gaussian_features(tree, k, gen), gen


def r_squared(y, x):
    design = torch.cat([torch.ones(len(y), 1, dtype=y.dtype), x], dim=1)
    coef = torch.linalg.lstsq(design, y.unsqueeze(1)).solution
    resid = y - (design @ coef).squeeze(1)
    return 1 - resid.pow(2).sum() / (y - y.mean()).pow(2).sum()


def test_sequence_features_sum_edge_features_along_paths():
    tree, phi, _ = setup(0, Tree.from_sequences([(0, 0), (0, 1), (1,), (2, 1, 0), (2, 1, 1)]))
    psi = sequence_features(tree, phi)
    for y in range(tree.n_responses):
        node, want = int(tree.leaves[y]), torch.zeros(3, dtype=torch.float64)
        while int(tree.parent[node]) >= 0:
            parent = int(tree.parent[node])
            want += phi[int(tree.internal_index[parent]), int(tree.action[node])]
            node = parent
        torch.testing.assert_close(psi[y], want, rtol=0, atol=1e-12)


@pytest.mark.parametrize("name", sorted(REWARDS))
def test_every_reward_is_seeded_with_one_value_per_response(name):
    tree, phi, _ = setup(1)
    draw = [
        gold_rewards(name, tree, torch.Generator().manual_seed(s), features=phi) for s in (5, 5, 6)
    ]
    assert draw[0].shape == (tree.n_responses,) and draw[0].dtype == torch.float64
    assert torch.equal(draw[0], draw[1]) and not torch.equal(draw[0], draw[2])


@pytest.mark.parametrize("name", ["linear", "concave", "saturating", "length"])
def test_shaped_rewards_are_standardised(name):
    tree, phi, gen = setup(2)
    r = gold_rewards(name, tree, gen, features=phi, explained=0.6)
    assert abs(float(r.mean())) < 1e-12 and abs(float(r.var(correction=0)) - 1) < 1e-12


@given(stop_trees, explained_shares, st.integers(0, 2**31))
def test_linear_reward_explained_share_is_the_r_squared_on_features(tree, rho, seed):
    _, phi, gen = setup(seed, tree, k=2)
    if tree.n_responses <= 3 and rho < 1:  # [1, Ψ] has rank 3: no room for noise
        with pytest.raises(ValueError, match="more responses"):
            linear_rewards(tree, gen, features=phi, explained=rho)
        return
    r = linear_rewards(tree, gen, features=phi, explained=rho)
    assert abs(float(r_squared(r, sequence_features(tree, phi))) - rho) < 1e-9


def test_normal_reward_is_data_normal_rewards():
    tree, phi, _ = setup(3)
    a = gold_rewards("normal", tree, torch.Generator().manual_seed(9), features=phi)
    assert torch.equal(a, normal_rewards(tree, torch.Generator().manual_seed(9)))


def test_concave_reward_peaks_at_kappa_along_u():
    """With ρ = 1, r is an increasing affine map of g(u) = u − u²/(2κ): order r like g."""
    tree, phi, _ = setup(4, k=4)
    kappa = 0.7
    r = concave_rewards(tree, torch.Generator().manual_seed(0), features=phi, peak=kappa)
    psi = sequence_features(tree, phi)
    w = torch.randn(4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    u = psi @ w
    u = (u - u.mean()) / (u - u.mean()).pow(2).mean().sqrt()
    g = u - u.square() / (2 * kappa)
    slope = ((r - r.mean()) * (g - g.mean())).sum() / (g - g.mean()).pow(2).sum()
    assert float(slope) > 0
    torch.testing.assert_close(r - r.mean(), slope * (g - g.mean()), rtol=0, atol=1e-10)
    best = int(torch.argmax(r))  # the best response sits near u = κ, not at the largest u
    assert abs(float(u[best]) - kappa) < abs(float(u.max()) - kappa) or float(u.max()) <= kappa


def test_saturating_reward_is_monotone_in_u():
    tree, phi, _ = setup(5, k=4)
    r = saturating_rewards(tree, torch.Generator().manual_seed(0), features=phi, peak=0.5)
    psi = sequence_features(tree, phi)
    w = torch.randn(4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    order = torch.argsort(psi @ w)
    assert bool((torch.diff(r[order]) >= -1e-12).all())


def test_length_reward_with_full_share_depends_on_length_only():
    tree = Tree.with_stop(3, 5)
    r = length_rewards(tree, torch.Generator().manual_seed(0), peak=3.0, explained=1.0)
    length = tree.response_length
    by_length = {int(v): r[length == v] for v in length.unique()}
    assert all(float(v.max() - v.min()) < 1e-12 for v in by_length.values())
    assert max(by_length, key=lambda v: float(by_length[v][0])) == 3


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda t, p, g: gold_rewards("gauss", t, g, features=p), "reward must be one of"),
        (lambda t, p, g: gold_rewards("linear", t, g), "needs features"),
        (lambda t, p, g: gold_rewards("linear", t, g, features=p, peak=1.0), "unknown"),
        (lambda t, p, g: linear_rewards(t, g, features=p, explained=1.5), "explained"),
        (lambda t, p, g: concave_rewards(t, g, features=p, peak=0.0), "peak"),
        (lambda t, p, g: length_rewards(Tree.complete(2, 2), g), "different lengths"),
        (lambda t, p, g: sequence_features(t, p[:1]), "features must have shape"),
    ],
)
def test_bad_arguments_raise(call, match):
    tree, phi, gen = setup(6)
    with pytest.raises(ValueError, match=match):
        call(tree, phi, gen)


def test_build_problem_default_reward_is_unchanged():
    """reward="normal" (default) draws exactly what build_problem drew before rewards.py."""
    tree = Tree.complete(3, 2)
    for policy in ("tabular", "loglinear"):
        old = build_problem(tree, [0, 1], ProblemSpec(policy=policy, pairs=2, sft_steps=3))
        new = build_problem(
            tree, [0, 1], ProblemSpec(policy=policy, pairs=2, sft_steps=3, reward="normal")
        )
        assert torch.equal(old.rewards, new.rewards)
        gen = torch.Generator().manual_seed(1)
        if policy == "loglinear":
            gaussian_features(tree, 8, gen)
        assert torch.equal(new.rewards[1], normal_rewards(tree, gen))


def test_build_problem_passes_reward_options():
    tree = Tree.with_stop(3, 3)
    a = build_problem(
        tree, [0], ProblemSpec(policy="tabular", reward="concave", peak=0.5, sft_steps=0)
    )
    b = build_problem(
        tree, [0], ProblemSpec(policy="tabular", reward="concave", peak=2.0, sft_steps=0)
    )
    assert not torch.equal(a.rewards, b.rewards)
    with pytest.raises(ValueError, match="reward must be one of"):
        build_problem(tree, [0], ProblemSpec(reward="bogus"))
