"""``treemdp.data.sampled_bt_pairs``: pairs of samples of a policy, labelled by Bradley–Terry."""

from __future__ import annotations

import math

import pytest
import torch

from treemdp.data import sampled_bt_pairs
from treemdp.tree import Tree

FOUR = Tree.from_sequences([(0,), (1,), (2,), (3,)])  # one prompt, four responses
PI = torch.tensor([0.5, 0.3, 0.15, 0.05], dtype=torch.float64)
REWARDS = torch.tensor([0.0, 1.0, -1.0, 2.0], dtype=torch.float64)


def _z(count: float, n: int, p: float) -> float:
    return (count - n * p) / math.sqrt(n * p * (1 - p))


@pytest.mark.parametrize("temperature", [1.0, 0.5])
def test_pairs_and_labels_follow_the_sampler_and_bradley_terry(temperature):
    n = 20_000
    pairs = sampled_bt_pairs(FOUR, REWARDS, torch.log(PI), n, seed=11, temperature=temperature)
    collision = float((PI**2).sum())
    w, l = pairs.chosen, pairs.rejected
    assert bool((w != l).all())
    for a in range(4):
        for b in range(a + 1, 4):
            hit = ((w == a) & (l == b)) | ((w == b) & (l == a))
            # {a, b} unordered: two i.i.d. samples conditioned on differing
            q = 2 * float(PI[a] * PI[b]) / (1 - collision)
            assert abs(_z(float(hit.sum()), n, q)) < 4.5, (a, b)
            m = int(hit.sum())
            if m >= 30:  # label share: P[a ≻ b] = σ((r_a − r_b) / T)
                p = float(torch.sigmoid((REWARDS[a] - REWARDS[b]) / temperature))
                assert abs(_z(float((hit & (w == a)).sum()), m, p)) < 4.5, (a, b)


def test_labels_at_another_temperature_are_detectably_different():
    # the statistical check above can fail: T = 1 labels tested against T = 0.5's law
    n = 20_000
    pairs = sampled_bt_pairs(FOUR, REWARDS, torch.log(PI), n, seed=11, temperature=1.0)
    hit = ((pairs.chosen == 0) & (pairs.rejected == 1)) | (
        (pairs.chosen == 1) & (pairs.rejected == 0)
    )
    m = int(hit.sum())
    p_wrong = float(torch.sigmoid(torch.tensor(-1.0 / 0.5)))
    assert abs(_z(float((hit & (pairs.chosen == 0)).sum()), m, p_wrong)) > 4.5


def test_seeded_pure_and_round_robin_over_prompts():
    forest = Tree.forest([Tree.complete(2, 2), Tree.complete(3, 1)])
    logp = torch.cat([torch.log(torch.full((4,), 0.25)), torch.log(torch.full((3,), 1 / 3))])
    rewards = torch.linspace(-1, 1, forest.n_responses, dtype=torch.float64)
    a = sampled_bt_pairs(forest, rewards, logp.double(), 50, seed=3)
    b = sampled_bt_pairs(forest, rewards, logp.double(), 50, seed=3)
    c = sampled_bt_pairs(forest, rewards, logp.double(), 50, seed=4)
    assert torch.equal(a.chosen, b.chosen) and torch.equal(a.rejected, b.rejected)
    assert not torch.equal(torch.stack([a.chosen, a.rejected]), torch.stack([c.chosen, c.rejected]))
    prompts = forest.leaf_prompt[a.chosen]
    assert torch.equal(prompts, torch.arange(50) % 2)
    assert torch.equal(prompts, forest.leaf_prompt[a.rejected])


def test_bad_arguments():
    logp = torch.log(PI)
    with pytest.raises(ValueError, match="n_pairs"):
        sampled_bt_pairs(FOUR, REWARDS, logp, 0, seed=0)
    with pytest.raises(ValueError, match="temperature"):
        sampled_bt_pairs(FOUR, REWARDS, logp, 5, seed=0, temperature=0.0)
    with pytest.raises(ValueError, match="fewer than 2"):
        one = torch.log(torch.tensor([1.0, 0.0, 0.0, 0.0], dtype=torch.float64))
        sampled_bt_pairs(FOUR, REWARDS, one, 5, seed=0)
