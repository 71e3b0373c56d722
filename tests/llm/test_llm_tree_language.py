"""The tree language: a treemdp problem as token sequences, one token per action."""

from __future__ import annotations

from collections import Counter

import pytest
import torch

from llm.data import BadRowError
from llm.tree_language import TreeLanguage
from treemdp.tree import Tree


def pairs_of(tree, chosen, rejected):
    return Counter(
        (int(tree.leaf_prompt[c]), tree.response_actions(c), tree.response_actions(r))
        for c, r in zip(chosen.tolist(), rejected.tolist(), strict=True)
    )


@pytest.mark.parametrize(
    "tree",
    [
        Tree.complete(3, 3),
        Tree.forest([Tree.complete(2, 2), Tree.from_sequences([(0,), (1, 0), (1, 1, 2)])]),
    ],
    ids=["complete-3x3", "irregular-forest"],
)
def test_tree_language_covers_exactly_the_datasets_pairs(tree):
    g = torch.Generator().manual_seed(0)
    pairs = []
    for k in range(tree.n_prompts):
        leaves = (tree.leaf_prompt == k).nonzero().flatten()
        for _ in range(6):  # repeats allowed: a dataset may hold a pair twice
            i, j = leaves[torch.randperm(len(leaves), generator=g)[:2]].tolist()
            pairs.append((i, j))
    chosen = torch.tensor([p[0] for p in pairs])
    rejected = torch.tensor([p[1] for p in pairs])
    language = TreeLanguage(tree)
    examples, skipped = language.examples(chosen, rejected)
    assert not skipped and [e.row for e in examples] == list(range(1, len(pairs) + 1))
    assert Counter(language.decode_example(e) for e in examples) == pairs_of(tree, chosen, rejected)
    tok = language.tokenizer()
    for e in examples:
        # one token per action, the prompt is the root state
        k, c, r = language.decode_example(e)
        assert len(e.prompt) == 1 and tok.decode(list(e.prompt)) == f"<s{k}>"
        assert tok.decode(list(e.chosen)) == " ".join(f"a{a}" for a in c)
        assert tok(" ".join(f"a{a}" for a in r))["input_ids"] == list(e.rejected)
    assert len(tok) == 1 + tree.n_prompts + tree.branching


def test_bad_pairs_are_reported_by_row():
    tree = Tree.forest([Tree.complete(2, 2), Tree.complete(2, 2)])  # responses 0-3, 4-7
    cases = [((0, 0), "chosen == rejected"), ((0, 9), "out of"), ((0, 5), "different prompts")]
    for (c, r), msg in cases:
        chosen, rejected = torch.tensor([1, c]), torch.tensor([2, r])
        with pytest.raises(BadRowError, match=f"row 2: .*{msg}"):
            TreeLanguage(tree).examples(chosen, rejected)
        examples, skipped = TreeLanguage(tree).examples(chosen, rejected, on_bad_row="skip")
        assert len(examples) == 1 and len(skipped) == 1
    with pytest.raises(ValueError, match="1-D tensors of one length"):
        TreeLanguage(tree).examples(torch.tensor([1, 2]), torch.tensor([3]))


def test_encode_and_decode_are_inverse_on_every_leaf():
    tree = Tree.forest([Tree.complete(2, 2), Tree.from_sequences([(0,), (1, 0), (1, 1, 2)])])
    language = TreeLanguage(tree)
    # vocabulary: <pad>, <s0>, <s1>, a0, a1, a2 (b = 3: the irregular tree's widest node)
    assert language.vocabulary() == {"<pad>": 0, "<s0>": 1, "<s1>": 2, "a0": 3, "a1": 4, "a2": 5}
    assert language.vocab_size == len(language.tokenizer()) == 6
    assert list(range(6))[language.actions] == [3, 4, 5]
    for leaf in range(tree.n_responses):
        k = int(tree.leaf_prompt[leaf])
        ids = (*language.prompt(k), *language.response(leaf))
        assert language.decode(ids) == leaf and language.root(language.prompt(k)) == k
        assert language.node_tokens(int(tree.leaves[leaf])) == ids
        assert [language.action(t) for t in ids[1:]] == list(tree.response_actions(leaf))
    assert language.decode((1, 4)) == -1  # a1 at prompt 0 reaches an internal node
    assert language.decode((1, 3, 3, 3)) == -1  # past a leaf
    assert language.prompts(5) == [(1,), (2,), (1,), (2,), (1,)]
    with pytest.raises(ValueError, match="root tokens"):
        language.root((3,))  # a0 is no prompt
