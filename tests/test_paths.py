"""The engine's fast paths equal the straightforward math: path-only log-probs of a few
responses (training), the broadcast level sum of full trees, gradients, and a plain one-run
trainer (benchmarks/reference.py) on a small grid."""

import torch
from hypothesis import given
from hypothesis import strategies as st

from tests.oracles import path_logprobs
from tests.scripts import load_script
from tests.strategies import logits, response_indices, trees
from treemdp.policy import (
    LogLinear,
    Policy,
    Tabular,
    conditional_logprobs,
    gaussian_features,
    node_logprobs,
    response_logprobs,
)
from treemdp.problem import ProblemSpec, build_problem
from treemdp.threads import threads_for
from treemdp.train import RunSpec, train
from treemdp.tree import Tree


def policies(tree, seed, n_runs=2):
    """The same kinds of policy the engine builds: tabular, log-linear with shared and per-run
    features, each with and without a fixed offset."""
    gen = torch.Generator().manual_seed(seed)
    feats = gaussian_features(tree, 3, gen)
    base = logits(tree, n_runs, seed + 1)
    theta_k = torch.randn(n_runs, 3, generator=gen, dtype=torch.float64)
    per_run = torch.stack([gaussian_features(tree, 3, gen) for _ in range(n_runs)])
    return [
        Policy(tree, Tabular(tree), logits(tree, n_runs, seed)),
        Policy(tree, Tabular(tree), logits(tree, n_runs, seed), base),
        Policy(tree, LogLinear(feats), theta_k),
        Policy(tree, LogLinear(per_run), theta_k, base),
    ]


@given(st.data(), trees(), st.integers(0, 2**31))
def test_path_logprobs_and_gradients_equal_the_full_distributions(data, tree, seed):
    with threads_for(tree.n_nodes):  # tiny tensors: one thread (see treemdp.threads)
        check_path_logprobs(data, tree, seed)


def check_path_logprobs(data, tree, seed):
    responses = data.draw(response_indices(tree))
    weights = torch.randn(responses.shape, dtype=torch.float64)
    for policy in policies(tree, seed):
        theta_full = policy.theta0.clone().requires_grad_(True)
        theta_fast = policy.theta0.clone().requires_grad_(True)
        full = policy.response_logprobs(theta_full).gather(1, responses)
        fast = policy.bind(responses)(theta_fast)
        torch.testing.assert_close(fast, full, rtol=0, atol=1e-12)
        (grad_full,) = torch.autograd.grad((full * weights).sum(), theta_full)
        (grad_fast,) = torch.autograd.grad((fast * weights).sum(), theta_fast)
        torch.testing.assert_close(grad_fast, grad_full, rtol=0, atol=1e-12)
    oracle = path_logprobs(tree, policy.logits(policy.theta0)).gather(1, responses)
    torch.testing.assert_close(fast.detach(), oracle, rtol=0, atol=1e-12)


@given(st.integers(2, 4), st.integers(1, 5), st.integers(1, 3), st.integers(0, 2**31))
def test_broadcast_level_sum_equals_the_gathered_one_exactly(b, depth, n_prompts, seed):
    tree = Tree.complete(b, depth, n_prompts=n_prompts)
    cond = conditional_logprobs(tree, logits(tree, 3, seed))
    flat = cond.reshape(3, -1)
    levels = [flat.new_zeros(3, n_prompts)]
    for _, _, parent_pos, edge in tree.levels:  # the general (gather) recursion, written out
        levels.append(levels[-1][:, parent_pos] + flat[:, edge])
    assert torch.equal(node_logprobs(tree, cond), torch.cat(levels, dim=1))


def test_complete_but_ragged_tree_uses_the_general_path():
    # every internal node has all b children, yet leaves lie on two levels
    tree = Tree.from_sequences([(0,), (1,), (2, 0), (2, 1), (2, 2)])
    assert tree.is_complete
    lg = logits(tree, 2, 0)
    torch.testing.assert_close(
        response_logprobs(tree, lg), path_logprobs(tree, lg), rtol=0, atol=1e-12
    )


def test_engine_equals_the_plain_one_run_reference_trainer():
    reference = load_script("benchmarks/reference.py")
    tree = Tree.complete(3, 2)
    layout = [("dpo", 0.05, 0.02), ("dpo", 0.5, 0.02), ("ipo", 0.1, 0.02), ("slic", 0.1, 0.02)]
    problem = build_problem(tree, [5], ProblemSpec(sft_steps=50)).select([0] * len(layout))
    engine = train(problem, [RunSpec(*run) for run in layout], steps=100, log_every=20).frame
    engine = engine.sort_values(["run", "step"]).reset_index(drop=True)
    plain = reference.train_reference(problem, layout, steps=100, log_every=20)
    assert (engine["objective"] == plain["objective"]).all()
    numeric = plain.select_dtypes("number").columns
    assert (engine[numeric] - plain[numeric]).abs().to_numpy().max() <= 1e-9
