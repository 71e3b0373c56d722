"""Toy capacities around one reference: the policy families that "the toy" can mean, each
starting at the same π_ref, as batches the engine trains in one tensor program each.

Every family gets π_ref's logits as a fixed offset (``Policy.base_logits``) and parameters that
start at zero effect, so at step 0 every capacity *is* π_ref and they differ only in what
training can move:

* ``tabular``: one free logit per (state, action) (the most capacity; cannot generalise);
* ``loglinear-k{k}``: logits φ(s, a)·θ with the first k of the seed's Gaussian features (the
  reference's own k features first, then more drawn from a generator of the seed's own);
* ``mlp-w{w}``: a one-hidden-layer tanh network of width w on the reference's features
  (``treemdp.networks.MLP``; zero output weights at the start).

Capacities of one kind train together by zero padding, which is exact: a log-linear run with k
features is a run with K > k features whose extra columns are zero (their θ entries get zero
gradient, so Adam, RMSProp and SGD leave them at 0); an MLP of width w is one of width W > w
whose extra hidden units have zero input weights, bias and output weight (tanh(0) = 0 and every
gradient into them is a product with one of those zeros).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import replace

import torch

from treemdp.networks import MLP, edge_inputs
from treemdp.policy import Family, LogLinear, Policy, Tabular
from treemdp.problem import Problem
from treemdp.problem import _init_generator as init_generator  # MLP weights as build_problem's

__all__ = ["capacity_batches", "capacity_names"]


def capacity_names(ks: Sequence[int], widths: Sequence[int]) -> list[str]:
    """The capacity labels, in the order ``capacity_batches`` lays them out."""
    return ["tabular", *(f"loglinear-k{k}" for k in ks), *(f"mlp-w{w}" for w in widths)]


def _generator(tag: str, seed: int) -> torch.Generator:
    digest = hashlib.sha256(f"treemdp-capacity-{tag}-{seed}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") >> 1)


def capacity_batches(
    problem: Problem, *, ks: Sequence[int], widths: Sequence[int]
) -> list[tuple[Problem, list[str]]]:
    """Every capacity's runs around ``problem``'s references, one batch per kind.

    Args:
        problem: R runs (one per seed) with a log-linear reference (features of shape
            (R, M, b, F); its θ0 is π_ref's parameters).
        ks: log-linear feature counts (each >= 1).
        widths: MLP hidden widths (each >= 1).

    Returns:
        (problem, labels) per non-empty kind (tabular; log-linear; MLP): the batch's runs are
        capacity-major (run j·R + r is capacity j on seed r) and ``labels[i]`` names run i's
        capacity. Each run has the rewards, pairs and π_ref of its seed.
    """
    _check_capacity_arguments(problem, ks, widths)
    with torch.no_grad():
        ref_logits = problem.policy.logits(problem.policy.theta0)
    out = [_tabular_batch(problem, ref_logits)]
    if ks:
        out.append(_loglinear_batch(problem, ref_logits, ks))
    if widths:
        out.append(_mlp_batch(problem, ref_logits, widths))
    return out


def _check_capacity_arguments(problem: Problem, ks: Sequence[int], widths: Sequence[int]) -> None:
    family = problem.policy.family
    if not isinstance(family, LogLinear) or family.features.dim() != 4:
        raise ValueError("problem must hold a per-run log-linear reference (build_problem)")
    if any(k < 1 for k in ks):
        raise ValueError(f"ks must all be >= 1; got {list(ks)}")
    if any(w < 1 for w in widths):
        raise ValueError(f"widths must all be >= 1; got {list(widths)}")


def _repeated(
    problem: Problem, ref_logits: torch.Tensor, family: Family, theta0: torch.Tensor, n: int
) -> Problem:
    """n capacities × R seeds (capacity-major) of ``problem``'s runs, each on its seed's π_ref,
    with the given family and starting parameters (shape (n·R, ...))."""
    R = problem.n_runs
    idx = [r for _ in range(n) for r in range(R)]
    base = problem.select(idx)
    return replace(base, policy=Policy(problem.tree, family, theta0, ref_logits[idx]), sft=None)


def _tabular_batch(problem: Problem, ref_logits: torch.Tensor) -> tuple[Problem, list[str]]:
    """Tabular runs: one free logit per (state, action), starting at 0 on top of π_ref's."""
    tree, R = problem.tree, problem.n_runs
    zeros = torch.zeros(R, tree.n_internal, tree.branching, dtype=ref_logits.dtype)
    return _repeated(problem, ref_logits, Tabular(tree), zeros, 1), ["tabular"] * R


def _loglinear_batch(
    problem: Problem, ref_logits: torch.Tensor, ks: Sequence[int]
) -> tuple[Problem, list[str]]:
    """Log-linear runs on the first k features each, zero-padded to K = max(ks) columns."""
    phi = problem.policy.family.features  # (R, M, b, F)
    R, K = problem.n_runs, max(ks)
    full = _features_up_to(phi, K, [int(s) for s in problem.seeds])
    feats = torch.cat([full * (torch.arange(K) < k).to(phi.dtype) for k in ks])
    theta0 = torch.zeros(len(ks) * R, K, dtype=phi.dtype)
    labels = [f"loglinear-k{k}" for k in ks for _ in range(R)]
    return _repeated(problem, ref_logits, LogLinear(feats), theta0, len(ks)), labels


def _features_up_to(phi: torch.Tensor, K: int, seeds: Sequence[int]) -> torch.Tensor:
    """The reference's features, then (if K > F) Gaussian ones from each seed's own generator,
    cut to K columns. Shape (R, M, b, K)."""
    F = phi.shape[-1]
    if K <= F:
        return phi[..., :K]
    extra = [
        torch.randn(*phi.shape[1:-1], K - F, generator=_generator("features", s), dtype=phi.dtype)
        for s in seeds
    ]
    return torch.cat([phi, torch.stack(extra)], dim=-1)


def _mlp_batch(
    problem: Problem, ref_logits: torch.Tensor, widths: Sequence[int]
) -> tuple[Problem, list[str]]:
    """MLP runs of each width, as one network of width max(widths) whose extra units are zero."""
    phi = problem.policy.family.features  # (R, M, b, F)
    R, W = problem.n_runs, max(widths)
    inputs = edge_inputs(problem.tree, "features", phi)
    wide = MLP(inputs.repeat(len(widths), 1, 1, 1), width=W)
    theta0 = torch.zeros(len(widths) * R, wide.n_params, dtype=phi.dtype)
    (w_in, b_in), (w_out, _) = wide.unflatten(theta0)  # views into theta0
    for j, w in enumerate(widths):
        for r, s in enumerate(int(s) for s in problem.seeds):
            # each narrow network starts as build_problem's MLP of width w on that seed would
            narrow = MLP(inputs[r : r + 1], width=w)
            start = narrow.init_params(1, init_generator(s))
            (n_in, n_b), (n_out, _) = narrow.unflatten(start)
            i = j * R + r
            w_in[i, :, :w], b_in[i, :w], w_out[i, :w] = n_in[0], n_b[0], n_out[0]
    labels = [f"mlp-w{w}" for w in widths for _ in range(R)]
    return _repeated(problem, ref_logits, wide, theta0, len(widths)), labels
