"""Trees: level order, constructors, forests, networkx round trips, the memory budget."""

import pytest
import torch
from hypothesis import given

from tests.strategies import action_sequences, trees
from treemdp.tree import Tree


def test_complete_tree_sizes_and_level_order():
    t = Tree.complete(3, 3)
    assert (t.n_nodes, t.n_internal, t.n_responses, t.max_depth) == (40, 13, 27, 3)
    assert t.level_offsets == (0, 1, 4, 13, 40)
    assert bool((t.depth[1:] >= t.depth[:-1]).all())
    # Leaf i of a complete tree is i written in base b, most significant action first.
    for i in range(t.n_responses):
        assert t.response_actions(i) == (i // 9, (i // 3) % 3, i % 3)


@given(action_sequences())
def test_from_sequences_has_exactly_those_responses(seqs):
    t = Tree.from_sequences(seqs, branching=3)
    assert sorted(t.response_actions(i) for i in range(t.n_responses)) == sorted(seqs)
    assert t.response_length.tolist() == [len(t.response_actions(i)) for i in range(t.n_responses)]


@given(trees())
def test_networkx_round_trip_keeps_every_prompts_responses(tree):
    back = Tree.from_networkx(tree.to_networkx(), branching=tree.branching)

    def responses(t):
        return sorted((int(t.leaf_prompt[i]), t.response_actions(i)) for i in range(t.n_responses))

    assert back.n_prompts == tree.n_prompts
    assert responses(back) == responses(tree)


def test_forest_assigns_prompts_and_keeps_level_order():
    f = Tree.forest([Tree.complete(2, 2), Tree.from_sequences([(0,), (1, 0), (1, 2, 1)])])
    assert f.n_prompts == 2 and f.n_responses == 7
    assert sorted(f.leaf_prompt.tolist()) == [0, 0, 0, 0, 1, 1, 1]
    assert bool((f.depth[1:] >= f.depth[:-1]).all())
    assert not f.is_complete


def test_terminal_state_receives_every_leaf():
    g = Tree.complete(3, 2).to_networkx(terminal=True)
    assert g.in_degree("s∞") == 9


@pytest.mark.parametrize(
    ("sequences", "message"),
    [
        ([], "at least one"),
        ([(0,), ()], "non-empty"),
        ([(0, 1), (0, 1)], "distinct"),
        ([(0,), (0, 1)], "prefix"),
        ([(0, -1)], ">= 0"),
    ],
)
def test_bad_sequences_are_refused(sequences, message):
    with pytest.raises(ValueError, match=message):
        Tree.from_sequences(sequences)


@pytest.mark.parametrize(("b", "d", "message"), [(1, 3, "branching"), (3, 0, "depth")])
def test_bad_complete_tree_arguments(b, d, message):
    with pytest.raises(ValueError, match=message):
        Tree.complete(b, d)


def test_memory_budget_refuses_before_allocating():
    # 3^31 nodes would need ~10^16 bytes: the check must fire without trying to allocate.
    with pytest.raises(ValueError, match=r"GiB.*max_bytes"):
        Tree.complete(3, 30)
    with pytest.raises(ValueError, match="budget"):
        Tree.complete(3, 4, max_bytes=1000)


def test_inconsistent_arrays_are_refused():
    with pytest.raises(ValueError, match="level order"):
        Tree(torch.tensor([-1, 2, 0]), torch.tensor([-1, 0, 1]), torch.tensor([0, 1, 1]), 2)
    with pytest.raises(ValueError, match="distinct"):
        Tree(torch.tensor([-1, 0, 0]), torch.tensor([-1, 1, 1]), torch.tensor([0, 1, 1]), 2)
