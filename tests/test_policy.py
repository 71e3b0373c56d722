"""Policies: exact response log-probabilities against a path-walking oracle, and invariants."""

import torch
from hypothesis import given
from hypothesis import strategies as st

from tests.oracles import path_logprobs
from tests.strategies import logits, trees
from treemdp.policy import (
    LogLinear,
    Tabular,
    logits_from_response_logprobs,
    one_hot_features,
    response_logprobs,
)
from treemdp.tree import Tree


def prompt_sums(tree, logp):
    """Σ_y π(y|x) per prompt. Shape (R, n_prompts)."""
    p = torch.exp(logp)
    return torch.zeros(p.shape[0], tree.n_prompts, dtype=p.dtype).index_add_(1, tree.leaf_prompt, p)


@given(trees(), st.integers(0, 2**31))
def test_response_probabilities_sum_to_one_per_prompt(tree, seed):
    logp = response_logprobs(tree, logits(tree, 3, seed, scale=5.0))
    torch.testing.assert_close(
        prompt_sums(tree, logp),
        torch.ones(3, tree.n_prompts, dtype=torch.float64),
        rtol=0,
        atol=1e-12,
    )


@given(trees(), st.integers(0, 2**31))
def test_levelwise_logprobs_equal_path_sums(tree, seed):
    z = logits(tree, 2, seed)
    torch.testing.assert_close(
        response_logprobs(tree, z), path_logprobs(tree, z), rtol=0, atol=1e-12
    )


@given(trees(), st.integers(0, 2**31), st.floats(-50, 50))
def test_shifting_one_nodes_logits_changes_nothing(tree, seed, shift):
    z = logits(tree, 2, seed)
    node = seed % tree.n_internal
    shifted = z.clone()
    shifted[:, node, :] += shift
    torch.testing.assert_close(
        response_logprobs(tree, shifted), response_logprobs(tree, z), rtol=0, atol=1e-10
    )


@given(trees(), st.integers(0, 2**31), st.booleans())
def test_distribution_to_tabular_logits_and_back_is_exact(tree, seed, with_zeros):
    logp = response_logprobs(tree, logits(tree, 2, seed, scale=3.0))
    if with_zeros:  # remove some responses, then renormalise per prompt: a distribution with zeros
        keep = torch.rand(logp.shape, generator=torch.Generator().manual_seed(seed)) < 0.6
        for x in range(tree.n_prompts):  # keep at least one response per prompt
            keep[:, int(torch.nonzero(tree.leaf_prompt == x)[0])] = True
        logp = torch.where(keep, logp, float("-inf"))
        log_z = torch.log(prompt_sums(tree, logp))
        logp = logp - log_z[:, tree.leaf_prompt]
    back = response_logprobs(tree, logits_from_response_logprobs(tree, logp))
    finite = torch.isfinite(logp)
    assert bool((torch.isneginf(back) == ~finite).all())
    torch.testing.assert_close(back[finite], logp[finite], rtol=0, atol=1e-12)


def test_one_hot_loglinear_equals_tabular():
    tree = Tree.from_sequences([(0, 0), (0, 1), (1,), (2, 1, 0), (2, 1, 1)])
    theta = logits(tree, 2, seed=4)
    family = LogLinear(one_hot_features(tree))
    flat = theta.reshape(2, -1)
    torch.testing.assert_close(family.logits(flat), Tabular(tree).logits(theta), rtol=0, atol=0)


def test_exact_probabilities_match_sampling():
    """Paths sampled action by action: frequencies within 4 standard errors of the exact π."""
    tree = Tree.complete(3, 2)
    z = logits(tree, 1, seed=11)
    exact = torch.exp(response_logprobs(tree, z))[0]
    gen = torch.Generator().manual_seed(0)
    n = 40_000
    node = torch.zeros(n, dtype=torch.long)
    for _ in range(tree.max_depth):
        row = tree.internal_index[node]
        action = torch.multinomial(torch.softmax(z[0, row], -1), 1, generator=gen).squeeze(1)
        node = tree.children[row, action]
    freq = torch.bincount(tree.leaf_index[node], minlength=tree.n_responses).double() / n
    se = torch.sqrt(exact * (1 - exact) / n)
    assert bool((torch.abs(freq - exact) <= 4 * se + 1e-12).all())
