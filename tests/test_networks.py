"""The MLP policy family: Family protocol, exact distributions, gradients, batching, seeding."""

from dataclasses import replace

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from tests.oracles import path_logprobs
from tests.strategies import mlp_shapes, trees
from treemdp.networks import MLP, edge_inputs, prefix_one_hot
from treemdp.policy import LogLinear, Policy, gaussian_features, response_logprobs
from treemdp.problem import ProblemSpec, build_problem
from treemdp.tree import Tree


def random_net(tree, shape, n_runs, seed, per_run=False):
    gen = torch.Generator().manual_seed(seed)
    lead = (n_runs,) if per_run else ()
    z = torch.randn(*lead, tree.n_internal, tree.branching, shape["input_dim"], generator=gen)
    net = MLP(z.double(), width=shape["width"], layers=shape["layers"], output_scale=1.0)
    return net, net.init_params(n_runs, gen)


def prompt_sums(tree, logp):
    p = torch.exp(logp)
    return torch.zeros(p.shape[0], tree.n_prompts, dtype=p.dtype).index_add_(1, tree.leaf_prompt, p)


@given(trees(), mlp_shapes(), st.integers(0, 2**31), st.booleans())
def test_response_probabilities_sum_to_one(tree, shape, seed, per_run):
    net, theta = random_net(tree, shape, 3, seed, per_run)
    logp = Policy(tree, net, theta).response_logprobs(theta)
    ones = torch.ones(3, tree.n_prompts, dtype=torch.float64)
    torch.testing.assert_close(prompt_sums(tree, logp), ones, rtol=0, atol=1e-12)
    torch.testing.assert_close(logp, path_logprobs(tree, net.logits(theta)), rtol=0, atol=1e-12)


@given(trees(), mlp_shapes(), st.integers(0, 2**31), st.booleans())
def test_batch_of_runs_equals_single_runs(tree, shape, seed, per_run):
    net, theta = random_net(tree, shape, 4, seed, per_run)
    batch = net.logits(theta)
    for r in range(4):
        single = net.select(torch.tensor([r])).logits(theta[r : r + 1])
        torch.testing.assert_close(batch[r : r + 1], single, rtol=0, atol=1e-12)


@pytest.mark.parametrize("layers", [1, 2])
def test_gradcheck_float64_tiny_net(layers):
    tree = Tree.from_sequences([(0, 0), (0, 1), (1,), (2, 1, 0), (2, 1, 1)])
    gen = torch.Generator().manual_seed(0)
    net = MLP(gaussian_features(tree, 2, gen), width=3, layers=layers, output_scale=1.0)
    theta = net.init_params(2, gen).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda t: response_logprobs(tree, net.logits(t)), (theta,))


def test_zero_output_layer_gives_exactly_uniform_policy():
    tree = Tree.complete(3, 2)
    net = MLP(prefix_one_hot(tree), width=8, layers=2)
    theta = net.init_params(2, torch.Generator().manual_seed(1))
    assert torch.equal(net.logits(theta), torch.zeros(2, tree.n_internal, 3, dtype=torch.float64))
    assert bool((theta != 0).any())  # the hidden weights are random all the same


def test_init_is_seeded_and_shaped():
    tree = Tree.complete(2, 3)
    net = MLP(prefix_one_hot(tree), width=5, layers=2)
    # n_params: (6·5 + 5) + (5·5 + 5) + 5 (output weights, no bias), input dim D·b = 6
    assert net.n_params == 35 + 30 + 5 and net.param_shape() == (70,)
    a = net.init_params(3, torch.Generator().manual_seed(7))
    b = net.init_params(3, torch.Generator().manual_seed(7))
    c = net.init_params(3, torch.Generator().manual_seed(8))
    assert a.shape == (3, 70) and torch.equal(a, b) and not torch.equal(a, c)


def test_unflatten_round_trips_every_parameter_once():
    net = MLP(torch.zeros(4, 2, 3, dtype=torch.float64), width=4, layers=2)
    theta = torch.arange(2 * net.n_params, dtype=torch.float64).view(2, -1)
    pieces = [t for w, b in net.unflatten(theta) for t in (w, b) if t is not None]
    flat = torch.cat([p.reshape(2, -1) for p in pieces], dim=1)
    assert torch.equal(flat, theta)


def test_prefix_one_hot_encodes_the_childs_path():
    tree = Tree.from_sequences([(0, 0), (0, 1), (1,), (2, 1, 0), (2, 1, 1)])
    enc = prefix_one_hot(tree)  # (M, b, D·b) with D = 3, b = 3
    b = 3
    for row, node in enumerate(tree.internal.tolist()):
        path, n = [], node
        while int(tree.parent[n]) >= 0:
            path.append(int(tree.action[n]))
            n = int(tree.parent[n])
        path = path[::-1]
        for a in range(b):
            want = torch.zeros(3 * b, dtype=torch.float64)
            for t, act in enumerate([*path, a]):
                want[t * b + act] = 1
            assert torch.equal(enc[row, a], want)


def test_distinct_nodes_get_distinct_inputs_in_a_forest():
    tree = Tree.forest([Tree.complete(2, 2), Tree.complete(2, 2)])
    enc = prefix_one_hot(tree).reshape(-1, prefix_one_hot(tree).shape[-1])
    assert torch.unique(enc, dim=0).shape[0] == enc.shape[0]


def test_edge_inputs_choices_and_errors():
    tree = Tree.complete(2, 2)
    phi = gaussian_features(tree, 3, torch.Generator().manual_seed(0))
    assert torch.equal(edge_inputs(tree, "features", phi), phi)
    assert edge_inputs(tree, "both", phi).shape == (3, 2, 3 + 4)
    assert edge_inputs(tree, "both", phi.expand(2, -1, -1, -1)).shape == (2, 3, 2, 7)
    with pytest.raises(ValueError, match="network_inputs"):
        edge_inputs(tree, "pixels", phi)
    with pytest.raises(ValueError, match="needs features"):
        edge_inputs(tree, "features", None)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"width": 0}, "width"), ({"layers": 0}, "layers"), ({"output_scale": -1.0}, "output_scale")],
)
def test_bad_sizes_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        MLP(torch.zeros(2, 2, 1, dtype=torch.float64), **kwargs)


def test_wrong_theta_shape_raises():
    net = MLP(torch.zeros(2, 2, 1, dtype=torch.float64), width=2)
    with pytest.raises(ValueError, match="theta must have shape"):
        net.logits(torch.zeros(1, net.n_params + 1, dtype=torch.float64))


def test_build_problem_mlp_batch_equals_single_problems():
    tree = Tree.with_stop(3, 3)
    spec = ProblemSpec(policy="mlp", width=4, reward="concave", pairs=4, sft_steps=5)
    both = build_problem(tree, [3, 9], spec)
    for i, s in enumerate([3, 9]):
        one = build_problem(tree, [s], spec)
        assert torch.equal(one.rewards, both.rewards[i : i + 1])
        assert torch.equal(one.pairs.chosen, both.pairs.chosen[i : i + 1])
        torch.testing.assert_close(one.ref_logp, both.select([i]).ref_logp, rtol=0, atol=1e-10)


def test_mlp_and_tabular_share_the_seeds_rewards_and_pairs():
    tree = Tree.with_stop(3, 3)
    spec = ProblemSpec(reward="concave", pairs=5, sft_steps=0)
    nets = build_problem(tree, [4], replace(spec, policy="mlp"))
    table = build_problem(tree, [4], replace(spec, policy="tabular"))
    loglin = build_problem(tree, [4], replace(spec, policy="loglinear"))
    for other in (table, loglin):
        assert torch.equal(nets.rewards, other.rewards)
        assert torch.equal(nets.pairs.rejected, other.pairs.rejected)
    # the network on φ with one linear unit per feature could express log-linear logits
    assert isinstance(loglin.policy.family, LogLinear)
    assert torch.equal(nets.policy.family.inputs, loglin.policy.family.features)
