"""Proposition 1 made computable: what a preference dataset identifies.

A dataset's query matrix A (pairs × responses, +1 at y_w, −1 at y_l). Every objective of the
family sees the implicit log-ratios ℓ = log π/π_ref only through the margins h = A ℓ, so its
minimisers form ℓ* + null(A): a set of dimension L − rank(A); rank(A) = (#responses compared) −
(#components of the comparison graph).
"""

from __future__ import annotations

from dataclasses import dataclass

import networkx as nx
import torch
from torch import Tensor

from treemdp.data import Pairs, comparison_graph, validate_pairs
from treemdp.tree import Tree

D = torch.float64


def single_run_pairs(tree: Tree, pairs: Pairs) -> Pairs:
    if pairs.chosen.dim() != 1:
        raise ValueError("pairs must hold one run's dataset, shape (P,)")
    return validate_pairs(tree, pairs.chosen, pairs.rejected)


def query_matrix(tree: Tree, pairs: Pairs) -> Tensor:
    """The query matrix A of a dataset: A[i, y_w(i)] = +1, A[i, y_l(i)] = −1, else 0.

    The margins of every pair are h = A ℓ with ℓ = log π/π_ref per response (Prop. 1).

    Args:
        tree: the tree.
        pairs: one run's dataset, chosen/rejected of shape (P,).

    Returns:
        Shape (P, L), float64.
    """
    pairs = single_run_pairs(tree, pairs)
    P = pairs.n_pairs
    a = torch.zeros(P, tree.n_responses, dtype=D)
    rows = torch.arange(P)
    a[rows, pairs.chosen] = 1.0
    a[rows, pairs.rejected] = -1.0
    return a


@dataclass(frozen=True)
class Identifiability:
    """What a dataset pins down (Proposition 1).

    Attributes:
        query: the query matrix A. Shape (P, L).
        rank: rank(A).
        n_responses: L.
        n_prompts: number of prompts.
        dim_rewards: L − rank: dimension of the set of implicit rewards (log-ratios ℓ) with the
            same margins, hence the same loss, as any given one (for every objective).
        dim_policies: dim_rewards − n_prompts: the same for normalised policies.
        mentioned: responses that appear in some pair. Shape (m,).
        unconstrained: responses no pair mentions: their ℓ is free. Shape (L − m,).
        components: connected components of the comparison graph (sorted response indices);
            the data fixes ℓ within a component up to one additive constant.
        null_basis: a basis of null(A): one indicator per component, one unit vector per
            unconstrained response. Shape (L, L − rank).
    """

    query: Tensor
    rank: int
    n_responses: int
    n_prompts: int
    dim_rewards: int
    dim_policies: int
    mentioned: Tensor
    unconstrained: Tensor
    components: tuple[tuple[int, ...], ...]
    null_basis: Tensor


def identifiability(tree: Tree, pairs: Pairs) -> Identifiability:
    """The query matrix, its rank, the free directions and the comparison graph's components.

    Args:
        tree: the tree.
        pairs: one run's dataset, shape (P,).

    Returns:
        An ``Identifiability`` report.
    """
    pairs = single_run_pairs(tree, pairs)
    a = query_matrix(tree, pairs)
    rank = int(torch.linalg.matrix_rank(a))
    graph = comparison_graph(tree, pairs)
    components = tuple(sorted(tuple(sorted(c)) for c in nx.connected_components(graph)))
    L = tree.n_responses
    mentioned = torch.tensor(sorted(graph.nodes), dtype=torch.long)
    free = torch.ones(L, dtype=torch.bool)
    free[mentioned] = False
    unconstrained = torch.nonzero(free).flatten()
    basis = [torch.zeros(L, dtype=D).index_fill_(0, torch.tensor(c), 1.0) for c in components]
    basis += [torch.zeros(L, dtype=D).index_fill_(0, y.reshape(1), 1.0) for y in unconstrained]
    null_basis = torch.stack(basis, dim=1) if basis else torch.zeros(L, 0, dtype=D)
    return Identifiability(
        query=a,
        rank=rank,
        n_responses=L,
        n_prompts=tree.n_prompts,
        dim_rewards=L - rank,
        dim_policies=L - rank - tree.n_prompts,
        mentioned=mentioned,
        unconstrained=unconstrained,
        components=components,
        null_basis=null_basis,
    )


def ood_mass(tree: Tree, pairs: Pairs, logp: Tensor) -> Tensor:
    """Mass on responses no pair mentions, averaged over prompts (as ``metrics.mass_ood``).

    Args:
        tree: the tree.
        pairs: one run's dataset, shape (P,).
        logp: log π(y|x). Shape (R, L).

    Returns:
        Shape (R,).
    """
    pairs = single_run_pairs(tree, pairs)
    ood = torch.ones(tree.n_responses, dtype=torch.bool)
    ood[pairs.responses()] = False
    return (torch.exp(logp) * ood).sum(-1) / tree.n_prompts


def ood_mass_range(tree: Tree, pairs: Pairs) -> tuple[float, float]:
    """The closure [lo, hi] of the OOD masses over any set of minimisers (the same for every
    objective: the margins do not see the OOD responses, whose log-ratio is free).

    A prompt that some pair asks contributes anything in (0, 1) if it has a response no pair
    mentions, else exactly 0; a prompt no pair asks is OOD entirely (1). The ends are limits,
    not attained by full-support policies (except where a prompt has no OOD response).

    Returns:
        (lo, hi), each averaged over prompts.
    """
    pairs = single_run_pairs(tree, pairs)
    asked = torch.zeros(tree.n_prompts, dtype=torch.bool)
    asked[tree.leaf_prompt[pairs.chosen]] = True
    ood = torch.ones(tree.n_responses, dtype=torch.bool)
    ood[pairs.responses()] = False
    has_ood = torch.zeros(tree.n_prompts, dtype=torch.bool)
    has_ood[tree.leaf_prompt[ood]] = True
    lo = float((~asked).sum()) / tree.n_prompts
    hi = float(((~asked) | has_ood).sum()) / tree.n_prompts
    return lo, hi
