"""treemdp.diagnostics (diagnose.py's signals, exact on the toy) and train.implicit_margin,
against loops over runs and pairs, hand-worked values and the first-order meaning of CHES."""

from __future__ import annotations

import math

import pytest
import torch

from treemdp.data import Pairs
from treemdp.diagnostics import (
    SIGNAL_ORIENTATION,
    exact_signals,
    gradient_ches,
    ood_masks,
    pair_changes,
)
from treemdp.objectives import Margins
from treemdp.policy import LogLinear, Policy, conditional_logprobs, gaussian_features
from treemdp.problem import ProblemSpec, build_problem
from treemdp.train import RunSpec, implicit_margin
from treemdp.tree import Tree


def _problem(policy: str = "loglinear", seeds=(0, 1, 2)):
    tree = Tree.with_stop(3, 3, n_prompts=2)
    spec = ProblemSpec(policy=policy, pairs=6, sft_steps=5, width=4)
    return tree, build_problem(tree, seeds, spec)


def _perturbed(problem, scale: float = 0.7, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    theta = problem.policy.theta0 + scale * torch.randn(
        problem.policy.theta0.shape, generator=g, dtype=torch.float64
    )
    with torch.no_grad():
        return problem.policy.response_logprobs(theta)


def test_signals_equal_loops_over_runs_and_pairs():
    tree, problem = _problem()
    ref, pairs = problem.ref_logp, problem.pairs
    logp = torch.stack([_perturbed(problem, seed=s) for s in (1, 2)])  # (T=2, R, L)
    margin = torch.randn(2, problem.n_runs, pairs.n_pairs, dtype=torch.float64)
    got = exact_signals(tree, logp, ref, pairs, margin)
    assert set(got) == set(SIGNAL_ORIENTATION)
    for t in range(2):
        for r in range(problem.n_runs):
            c, rj = pairs.chosen[r].tolist(), pairs.rejected[r].tolist()
            dc = [float(logp[t, r, y] - ref[r, y]) for y in c]
            dr = [float(logp[t, r, y] - ref[r, y]) for y in rj]
            p = logp[t, r].exp()
            lengths = tree.response_length.double()
            q = torch.quantile(ref[r, c], 0.05)
            q_tok = torch.quantile(ref[r, c] / lengths[c], 0.05)
            expect = {
                "chosen_logp_change": sum(dc) / len(dc),
                "rejected_logp_change": sum(dr) / len(dr),
                "chosen_falls_share": sum(x < 0 for x in dc) / len(dc),
                "both_fall_share": sum(a < 0 and b < 0 for a, b in zip(dc, dr, strict=True))
                / len(dc),
                "margin": float(margin[t, r].mean()),
                "accuracy": float((margin[t, r] > 0).double().mean()),
                "kl": float((p * (logp[t, r] - ref[r])).sum()) / tree.n_prompts,
                "ood_proxy": float(p[ref[r] < q].sum()) / tree.n_prompts,
                "ood_proxy_per_token": float(p[ref[r] / lengths < q_tok].sum()) / tree.n_prompts,
                "argmax_mass": sum(
                    float(p[tree.leaf_prompt == k].max()) for k in range(tree.n_prompts)
                ) / tree.n_prompts,
            }  # fmt: skip
            for name, value in expect.items():
                assert float(got[name][t, r]) == pytest.approx(value, abs=1e-12), name


def test_at_the_reference_every_change_is_exactly_zero():
    tree, problem = _problem()
    ref, pairs = problem.ref_logp, problem.pairs
    zero = torch.zeros(problem.n_runs, pairs.n_pairs, dtype=torch.float64)
    got = exact_signals(tree, ref, ref, pairs, zero)
    for name in ("chosen_logp_change", "rejected_logp_change", "kl", "margin", "accuracy"):
        assert torch.equal(got[name], torch.zeros(problem.n_runs, dtype=torch.float64)), name
    assert torch.equal(got["both_fall_share"], torch.zeros(problem.n_runs, dtype=torch.float64))
    dc, dr = pair_changes(ref, ref, pairs)
    assert not dc.any() and not dr.any()


def test_ood_masks_by_hand():
    tree = Tree.complete(2, 2)  # 4 responses, each of 2 actions
    ref = torch.log(torch.tensor([[0.4, 0.3, 0.2, 0.1]], dtype=torch.float64))
    pairs = Pairs(torch.tensor([[0, 1, 1]]), torch.tensor([[3, 3, 2]]))
    low, low_tok = ood_masks(tree, ref, pairs, quantile=0.0)  # below the least likely chosen
    assert low.tolist() == [[False, False, True, True]]
    assert torch.equal(low, low_tok)  # equal lengths: per token changes nothing
    with pytest.raises(ValueError, match="quantile must lie in"):
        ood_masks(tree, ref, pairs, quantile=1.5)


def _loglinear_gradient(tree: Tree, features: torch.Tensor, theta: torch.Tensor, y: int):
    """∇_θ log π(y) of a log-linear policy by hand: Σ over the path of φ(s, a) − E_π φ(s, ·)."""
    cond = conditional_logprobs(tree, torch.einsum("mak,k->ma", features, theta)[None])[0]
    node, g = int(tree.leaves[y]), torch.zeros(features.shape[-1], dtype=torch.float64)
    while int(tree.parent[node]) >= 0:
        row = int(tree.internal_index[tree.parent[node]])
        pi = cond[row].exp()
        g += features[row, int(tree.action[node])] - (pi[:, None] * features[row]).sum(0)
        node = int(tree.parent[node])
    return g


def test_gradient_ches_in_feature_space_equals_the_centred_path_features():
    tree = Tree.with_stop(3, 3)
    g = torch.Generator().manual_seed(0)
    features = torch.stack([gaussian_features(tree, 5, g) for _ in range(2)])
    theta0 = torch.randn(2, 5, generator=g, dtype=torch.float64)
    policy = Policy(tree, LogLinear(features), theta0)
    pairs = Pairs(torch.tensor([[0, 4, 7], [2, 2, 9]]), torch.tensor([[3, 1, 5], [11, 0, 6]]))
    ches, ches_n = gradient_ches(policy, pairs, tree)
    lengths = tree.response_length
    for r in range(2):
        for p in range(3):
            c, j = int(pairs.chosen[r, p]), int(pairs.rejected[r, p])
            gc = _loglinear_gradient(tree, features[r], theta0[r], c)
            gr = _loglinear_gradient(tree, features[r], theta0[r], j)
            expect = float(gc @ gr - gc @ gc)
            assert float(ches[r, p]) == pytest.approx(expect, rel=1e-10, abs=1e-12)
            nc, nr = int(lengths[c]), int(lengths[j])
            expect_n = float(gc @ gr) / (nc * nr) - float(gc @ gc) / nc**2
            assert float(ches_n[r, p]) == pytest.approx(expect_n, rel=1e-10, abs=1e-12)


@pytest.mark.parametrize("policy", ["loglinear", "mlp"])
def test_ches_is_the_first_order_fall_of_the_chosen_log_prob(policy):
    """One small SGD step on one pair's DPO loss changes log π(y⁺) by −lr·β/2·CHES + O(lr²):
    what CHES means (Razin et al.), checked on the exact policy."""
    tree, problem = _problem(policy, seeds=(0,))
    pol = problem.policy
    single = Pairs(problem.pairs.chosen[:, :1], problem.pairs.rejected[:, :1])
    ches, _ = gradient_ches(pol, single, tree)
    beta, lr = 0.5, 1e-6
    theta = pol.theta0.clone().requires_grad_(True)
    logp = pol.response_logprobs(theta)
    c, r = int(single.chosen[0, 0]), int(single.rejected[0, 0])
    h = (logp[0, c] - problem.ref_logp[0, c]) - (logp[0, r] - problem.ref_logp[0, r])
    loss = -torch.nn.functional.logsigmoid(beta * h)
    (grad,) = torch.autograd.grad(loss, theta)
    with torch.no_grad():
        after = pol.response_logprobs(pol.theta0 - lr * grad)
    change = float(after[0, c] - problem.ref_logp[0, c])
    assert change == pytest.approx(-lr * beta / 2 * float(ches[0, 0]), rel=1e-4)


def test_implicit_margin_binds_each_run_to_its_own_objective():
    R, P = 4, 3
    g = torch.Generator().manual_seed(0)
    m = Margins(*(torch.randn(R, P, generator=g, dtype=torch.float64) for _ in range(4)))
    lengths = torch.randint(1, 5, (2, R, P), generator=g).double()
    specs = [RunSpec("dpo", 0.1, 1.0), RunSpec("ipo", 0.5, 1.0), RunSpec("dpo", 0.3, 1.0),
             RunSpec("simpo", 2.0, 1.0, (("gamma", 0.5),))]  # fmt: skip
    got = implicit_margin(specs, m, lengths[0], lengths[1])
    h = m.h
    torch.testing.assert_close(got[0], 0.1 * h[0], rtol=0, atol=1e-15)
    torch.testing.assert_close(got[1], 0.5 * h[1], rtol=0, atol=1e-15)
    torch.testing.assert_close(got[2], 0.3 * h[2], rtol=0, atol=1e-15)
    # SimPO: reference-free, per-token means
    simpo = 2.0 * (m.logp_chosen[3] / lengths[0, 3] - m.logp_rejected[3] / lengths[1, 3])
    torch.testing.assert_close(got[3], simpo, rtol=0, atol=1e-14)
    assert not math.isnan(float(got.sum()))
