"""Exact metrics: invariants, the pairwise win-rate oracle, Monte-Carlo agreement, hand values."""

import math

import torch
from hypothesis import given
from hypothesis import strategies as st

from tests.oracles import pairwise_win_rate
from tests.strategies import logits, trees_with_pairs
from treemdp.data import Pairs, random_pairs
from treemdp.metrics import MetricContext, kl_divergence, metrics, win_rate
from treemdp.policy import response_logprobs
from treemdp.tree import Tree


def context(tree, seed, n_runs=2, ties=False):
    gen = torch.Generator().manual_seed(seed)
    rewards = torch.randn(n_runs, tree.n_responses, generator=gen, dtype=torch.float64)
    if ties:  # few distinct values, so many responses tie
        rewards = torch.round(rewards)
    pairs = [random_pairs(tree, rewards[r], 1, gen) for r in range(n_runs)]
    chosen = torch.stack([p.chosen for p in pairs])
    rejected = torch.stack([p.rejected for p in pairs])
    return MetricContext.build(tree, rewards, Pairs(chosen, rejected))


@given(trees_with_pairs(), st.integers(0, 2**31))
def test_kl_is_nonnegative_and_zero_at_the_reference(tree, seed):
    logp = response_logprobs(tree, logits(tree, 2, seed))
    logq = response_logprobs(tree, logits(tree, 2, seed + 1))
    assert bool((kl_divergence(tree, logp, logq) >= -1e-12).all())
    assert bool((kl_divergence(tree, logp, logp) == 0).all())


@given(trees_with_pairs(), st.integers(0, 2**31), st.booleans())
def test_win_rate_is_half_against_itself(tree, seed, ties):
    ctx = context(tree, seed, ties=ties)
    logp = response_logprobs(tree, logits(tree, 2, seed))
    torch.testing.assert_close(
        win_rate(ctx, logp, logp), torch.full((2,), 0.5, dtype=torch.float64)
    )


@given(trees_with_pairs(), st.integers(0, 2**31), st.booleans())
def test_sorting_win_rate_equals_pairwise_definition(tree, seed, ties):
    ctx = context(tree, seed, ties=ties)
    logp = response_logprobs(tree, logits(tree, 2, seed))
    ref = response_logprobs(tree, logits(tree, 2, seed + 7))
    fast = win_rate(ctx, logp, ref)
    for r in range(2):
        slow = pairwise_win_rate(tree, torch.exp(logp[r]), torch.exp(ref[r]), ctx.rewards[r])
        assert math.isclose(float(fast[r]), slow, abs_tol=1e-12)


@given(trees_with_pairs(), st.integers(0, 2**31))
def test_masses_partition_and_match_their_definitions(tree, seed):
    ctx = context(tree, seed)
    logp = response_logprobs(tree, logits(tree, 2, seed))
    zeros = torch.zeros(2, 1, dtype=torch.float64)
    m = metrics(ctx, logp, logp, zeros, zeros)
    torch.testing.assert_close(
        m["mass_in_dist"] + m["mass_ood"], torch.ones(2, dtype=torch.float64)
    )
    p = torch.exp(logp)
    for r in range(2):
        in_dist = set(ctx.in_dist[r].nonzero().flatten().tolist())
        ood = [y for y in range(tree.n_responses) if y not in in_dist]
        best = max(ood, key=lambda y: float(p[r, y])) if ood else -1
        assert int(m["max_ood_response"][r]) == best
        expected_max = float(p[r, best]) if ood else 0.0
        assert math.isclose(float(m["max_ood"][r]), expected_max, abs_tol=1e-15)


def test_hand_computed_metrics_on_three_responses():
    # Responses y0, y1, y2 with rewards (1, 0, 2); data: y0 ≻ y1; π = (½, ¼, ¼), π_ref uniform.
    tree = Tree.from_sequences([(0,), (1,), (2,)])
    rewards = torch.tensor([[1.0, 0.0, 2.0]], dtype=torch.float64)
    ctx = MetricContext.build(tree, rewards, Pairs(torch.tensor([[0]]), torch.tensor([[1]])))
    p = torch.tensor([[0.5, 0.25, 0.25]], dtype=torch.float64)
    q = torch.full((1, 3), 1 / 3, dtype=torch.float64)
    zeros = torch.zeros(1, 1, dtype=torch.float64)
    m = metrics(ctx, p.log(), q.log(), zeros, zeros)
    assert math.isclose(m["p_chosen"].item(), 0.5) and math.isclose(m["p_rejected"].item(), 0.25)
    assert math.isclose(m["mass_ood"].item(), 0.25) and int(m["max_ood_response"]) == 2
    # KL(π‖u) = Σ π log(3π) = ½ log 1.5 + ½ log 0.75
    assert math.isclose(m["kl_reverse"].item(), 0.5 * math.log(1.5) + 0.5 * math.log(0.75))
    # KL(u‖π) = ⅓ (log(2/3) + 2 log(4/3))
    assert math.isclose(m["kl_forward"].item(), (math.log(2 / 3) + 2 * math.log(4 / 3)) / 3)
    assert math.isclose(m["gold_reward"].item(), 0.5 * 1 + 0.25 * 2)
    # y0 beats y1 (⅓), y1 beats nothing, y2 beats y0 and y1 (⅔); ties with itself ½ each:
    # ½(⅓ + ⅙) + ¼(0 + ⅙) + ¼(⅔ + ⅙) = 0.25 + 1/24 + 5/24 = 0.5
    assert math.isclose(m["win_rate"].item(), 0.5)
    assert m["reward_accuracy"].item() == 0.0  # h = 0 is not a positive margin


def test_exact_metrics_match_monte_carlo():
    tree = Tree.forest([Tree.complete(3, 2), Tree.from_sequences([(0,), (1, 0), (1, 1)])])
    ctx = context(tree, seed=3, n_runs=1)
    logp = response_logprobs(tree, logits(tree, 1, 5))
    ref = response_logprobs(tree, logits(tree, 1, 6))
    gen = torch.Generator().manual_seed(0)
    n, total_win, total_r = 20_000, 0.0, 0.0
    wins, rewards_seen = [], []
    for x in range(tree.n_prompts):
        mask = tree.leaf_prompt == x
        p = torch.exp(logp[0]) * mask
        q = torch.exp(ref[0]) * mask
        y = torch.multinomial(p, n, replacement=True, generator=gen)
        y2 = torch.multinomial(q, n, replacement=True, generator=gen)
        r = ctx.rewards[0]
        w = (r[y] > r[y2]).double() + 0.5 * (r[y] == r[y2]).double()
        wins.append(w)
        rewards_seen.append(r[y])
    total_win = torch.cat(wins)
    total_r = torch.cat(rewards_seen)
    zeros = torch.zeros(1, 1, dtype=torch.float64)
    m = metrics(ctx, logp, ref, zeros, zeros)
    for name, samples in (("win_rate", total_win), ("gold_reward", total_r)):
        se = samples.std() / math.sqrt(samples.numel())
        assert abs(samples.mean() - m[name].item()) < 4 * se, name
