"""Gold rewards, preference pairs, the comparison graph, problem assembly and its checks."""

import math

import pytest
import torch

from treemdp.data import (
    bradley_terry_pairs,
    comparison_graph,
    normal_rewards,
    pairs_from_nodes,
    random_pairs,
    validate_pairs,
)
from treemdp.problem import ProblemSpec, build_problem
from treemdp.tree import Tree

TREE = Tree.complete(3, 2)


def test_random_pairs_choose_the_higher_reward_and_cover_every_prompt():
    forest = Tree.forest([Tree.complete(2, 2)] * 3)
    gen = torch.Generator().manual_seed(0)
    r = normal_rewards(forest, gen)
    pairs = random_pairs(forest, r, 6, gen)
    assert bool((r[pairs.chosen] >= r[pairs.rejected]).all())
    assert forest.leaf_prompt[pairs.chosen].tolist() == [0, 1, 2, 0, 1, 2]
    assert bool((pairs.chosen != pairs.rejected).all())


def test_random_pairs_are_seeded():
    def draw(seed):
        gen = torch.Generator().manual_seed(seed)
        return random_pairs(TREE, normal_rewards(TREE, gen), 4, gen)

    a, b, c = draw(1), draw(1), draw(2)
    assert torch.equal(a.chosen, b.chosen) and torch.equal(a.rejected, b.rejected)
    assert not (torch.equal(a.chosen, c.chosen) and torch.equal(a.rejected, c.rejected))


def test_bradley_terry_labels_follow_the_reward_gap():
    tree = Tree.from_sequences([(0,), (1,)])
    rewards = torch.tensor([0.0, 2.0], dtype=torch.float64)
    gen = torch.Generator().manual_seed(0)
    uniform = torch.log(torch.full((2,), 0.5, dtype=torch.float64))
    pairs = bradley_terry_pairs(tree, rewards, uniform, 4000, gen)
    share = (pairs.chosen == 1).double().mean().item()
    expected = torch.sigmoid(torch.tensor(2.0)).item()  # P[y1 ≻ y0] = σ(2) ≈ 0.881
    assert abs(share - expected) < 4 * (expected * (1 - expected) / 4000) ** 0.5


def test_bradley_terry_pairs_refuse_what_sampled_bt_pairs_refuses():
    # the two samplers share one argument check (sampled_bt_pairs's is in test_bt_sampler.py)
    rewards = torch.zeros(TREE.n_responses, dtype=torch.float64)
    uniform = torch.full((TREE.n_responses,), -math.log(TREE.n_responses), dtype=torch.float64)
    gen = torch.Generator().manual_seed(0)
    with pytest.raises(ValueError, match="must have shape"):
        bradley_terry_pairs(TREE, rewards[:-1], uniform, 3, gen)
    with pytest.raises(ValueError, match="temperature"):
        bradley_terry_pairs(TREE, rewards, uniform, 3, gen, temperature=0.0)
    with pytest.raises(ValueError, match="fewer than 2 responses of prompt 0"):
        one = torch.log(torch.tensor([1.0] + [0.0] * (TREE.n_responses - 1), dtype=torch.float64))
        bradley_terry_pairs(TREE, rewards, one, 3, gen)


def test_comparison_graph_counts_comparisons_and_wins():
    pairs = validate_pairs(TREE, torch.tensor([0, 0, 3]), torch.tensor([1, 1, 0]))
    g = comparison_graph(TREE, pairs)
    assert g.edges[0, 1]["weight"] == 2 and g.edges[0, 1]["wins"] == {0: 2, 1: 0}
    assert g.edges[0, 3]["wins"] == {3: 1, 0: 0}
    assert g.nodes[3]["actions"] == (1, 0)


@pytest.mark.parametrize(
    ("chosen", "rejected", "message"),
    [
        ([0], [0], "chosen == rejected"),
        ([0], [9], r"in \[0, 8\]"),
        ([-1], [2], r"in \[0, 8\]"),
        ([0, 1], [2], "one shape"),
        ([0.0], [1.0], "integer"),
    ],
)
def test_bad_pairs_are_refused(chosen, rejected, message):
    with pytest.raises(ValueError, match=message):
        validate_pairs(TREE, torch.tensor(chosen), torch.tensor(rejected))


def test_pairs_must_name_leaves_and_share_a_prompt():
    with pytest.raises(ValueError, match="node 1 is not a leaf"):
        pairs_from_nodes(TREE, [(1, 5)])
    forest = Tree.forest([Tree.complete(2, 1), Tree.complete(2, 1)])
    with pytest.raises(ValueError, match="same prompt"):
        validate_pairs(forest, torch.tensor([0]), torch.tensor([3]))
    ok = pairs_from_nodes(TREE, [(int(TREE.leaves[2]), int(TREE.leaves[5]))])
    assert ok.chosen.tolist() == [2] and ok.rejected.tolist() == [5]


def test_sft_reference_concentrates_on_the_pair_and_is_reported():
    problem = build_problem(Tree.complete(3, 3), [0, 1], ProblemSpec(sft_steps=300))
    assert problem.sft is not None
    uniform_mass = 2 / 27
    assert bool((problem.sft["mass_on_data"] > 5 * uniform_mass).all())
    assert problem.sft["mass_on_data"][0] > 0.85  # the default problem (seed 0): about 0.9
    p = torch.exp(problem.ref_logp)
    on_pair = p.gather(1, problem.pairs.responses()).sum(-1)
    torch.testing.assert_close(on_pair, problem.sft["mass_on_data"])


def test_uniform_reference_is_uniform_and_policy_starts_there():
    problem = build_problem(TREE, [0], ProblemSpec(reference="uniform"))
    torch.testing.assert_close(
        torch.exp(problem.ref_logp), torch.full((1, 9), 1 / 9, dtype=torch.float64)
    )


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"policy": "transformer"}, "policy must be one of"),
        ({"reference": "oracle"}, "reference must be one of"),
        ({"pair_source": "human"}, "pair_source must be one of"),
        ({"features": 0}, "features"),
        ({"pairs": 0}, "n_pairs"),
        ({"reference": "random", "reference_temperature": 0.0}, "reference_temperature"),
        ({"reference": "given"}, "reference_logits"),
        ({"reference": "given", "reference_logits": torch.full((4, 3), float("nan"))}, "NaN"),
        ({"sft_steps": -1}, "sft_steps"),
    ],
)
def test_bad_problem_arguments_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        spec = {k: v for k, v in kwargs.items() if k != "reference_logits"}
        build_problem(
            TREE, [0], ProblemSpec(**spec), reference_logits=kwargs.get("reference_logits")
        )
