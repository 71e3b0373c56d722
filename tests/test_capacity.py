"""``treemdp.capacity``: every toy capacity starts at π_ref, and zero padding is exact."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from treemdp.capacity import capacity_batches, capacity_names
from treemdp.networks import MLP, edge_inputs
from treemdp.policy import LogLinear, Policy
from treemdp.problem import ProblemSpec, _init_generator, build_problem
from treemdp.train import grid, train
from treemdp.tree import Tree

TREE = Tree.complete(2, 3)
PROBLEM = build_problem(TREE, [0, 1], ProblemSpec(features=4, pairs=2, sft_steps=20))


def _final_logp(problem, steps=25):
    batch, specs = grid(problem, ["dpo"], [0.1], 0.05)
    hist = train(batch, specs, steps=steps, log_every=steps, record_responses=True)
    return hist.response_logp[-1]


def test_every_capacity_starts_at_the_reference():
    batches = capacity_batches(PROBLEM, ks=(2, 6), widths=(3,))
    labels = [label for _, ls in batches for label in ls]
    assert list(dict.fromkeys(labels)) == capacity_names((2, 6), (3,))
    for problem, _ in batches:
        reps = problem.n_runs // PROBLEM.n_runs
        expected = PROBLEM.ref_logp.repeat(reps, 1)
        torch.testing.assert_close(problem.ref_logp, expected, rtol=0, atol=1e-12)
        assert torch.equal(problem.pairs.chosen, PROBLEM.pairs.chosen.repeat(reps, 1))


def test_padded_loglinear_runs_equal_unpadded_ones():
    (_, _), (padded, labels), _ = capacity_batches(PROBLEM, ks=(2, 6), widths=(3,))
    got = _final_logp(padded)[:2]  # k = 2 on seeds 0, 1 (padded to 6 features)
    phi = PROBLEM.policy.family.features[..., :2]
    ref = PROBLEM.policy.logits(PROBLEM.policy.theta0).detach()
    alone = replace(
        PROBLEM, policy=Policy(TREE, LogLinear(phi), torch.zeros(2, 2, dtype=phi.dtype), ref)
    )
    assert labels[:2] == ["loglinear-k2"] * 2
    torch.testing.assert_close(got, _final_logp(alone), rtol=0, atol=1e-10)
    assert not torch.allclose(got, PROBLEM.ref_logp, atol=1e-3)  # training moved it


@pytest.mark.parametrize("index", [0, 1])  # width 3 (padded to 5) and width 5
def test_padded_mlp_runs_equal_unpadded_ones(index):
    widths = (3, 5)
    *_, (padded, labels) = capacity_batches(PROBLEM, ks=(), widths=widths)
    got = _final_logp(padded)[index * 2 : index * 2 + 2]
    w = widths[index]
    inputs = edge_inputs(TREE, "features", PROBLEM.policy.family.features)
    family = MLP(inputs, width=w)
    theta0 = torch.cat([family.init_params(1, _init_generator(s)) for s in (0, 1)])
    ref = PROBLEM.policy.logits(PROBLEM.policy.theta0).detach()
    alone = replace(PROBLEM, policy=Policy(TREE, family, theta0, ref))
    assert labels[index * 2] == f"mlp-w{w}"
    torch.testing.assert_close(got, _final_logp(alone), rtol=0, atol=1e-10)
