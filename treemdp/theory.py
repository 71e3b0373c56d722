"""Optima and solution sets of direct alignment objectives: Proposition 1 made computable.

Three parts (Rafailov et al. 2024, §2 "Theory"; see docs/theory.md):

1. The KL-regularised optimum π*(y|x) ∝ π_ref(y|x) exp(r(x, y)/β), computed twice: directly over
   all responses, and as per-node logits through the soft value recursion
   V(s) = β log Σ_a π_ref(a|s) exp(V(s·a)/β), V(leaf) = r(leaf) (Rafailov et al. 2024b, "From r to
   Q*", Eq. 5–6), level by level bottom-up with a leading run axis. ``kl_to_optimum`` measures a
   policy's distance to it.
2. Identifiability: a dataset's query matrix A (pairs × responses, +1 at y_w, −1 at y_l). Every
   objective of the family sees an implicit log-ratio vector ℓ = log π/π_ref only through the
   margins h = A ℓ, so the minimisers form ℓ* + null(A): a set of dimension L − rank(A) (the
   per-prompt normalising constants take n_prompts of those directions, so the set of minimising
   *policies* has dimension L − rank(A) − n_prompts). rank(A) = (#responses compared) −
   (#components of the comparison graph): rewards are identified up to one constant per
   component, and not at all on responses no pair mentions.
3. Minimiser sets of DPO, IPO and SLiC on a dataset (``minimiser_set``), the distance of a
   margin vector to them, and two minimisers of equal loss whose OOD mass is near 0 and near 1
   (``extreme_minimisers``), including the three-response example of the paper.

Everything is float64 and exact up to rounding, except the DPO infimum on datasets with
preference cycles (Newton's method, to ~1e-12) and SLiC (a linear program via scipy).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import networkx as nx
import numpy as np
import torch
from scipy.optimize import linprog, minimize
from torch import Tensor

from treemdp import objectives
from treemdp.data import Pairs, comparison_graph, validate_pairs
from treemdp.metrics import kl_divergence
from treemdp.policy import (
    check_logits,
    conditional_logprobs,
    logits_from_response_logprobs,
)
from treemdp.tree import Tree

__all__ = [
    "MINIMISER_OBJECTIVES",
    "Identifiability",
    "Minimiser",
    "MinimiserSet",
    "ThreeResponseExample",
    "extreme_minimisers",
    "identifiability",
    "kl_to_optimum",
    "margin_distance",
    "minimiser_set",
    "ood_mass",
    "ood_mass_range",
    "optimal_logits",
    "optimal_response_logprobs",
    "query_matrix",
    "soft_values",
    "three_response_example",
]

D = torch.float64


# ============================================================================ 1. the optimum


def _betas(beta: float | Tensor, R: int) -> Tensor:
    """β as a (R, 1) float64 column (one per run), after checking it is finite and > 0."""
    b = objectives.check_beta(beta).to(D).reshape(-1)
    if b.numel() not in (1, R):
        raise ValueError(f"beta must be a float or hold one value per run ({R}); got {b.numel()}")
    return b.expand(R).unsqueeze(1)


def _rewards(tree: Tree, rewards: Tensor, R: int) -> Tensor:
    r = torch.as_tensor(rewards, dtype=D)
    r = r.unsqueeze(0) if r.dim() == 1 else r
    if r.dim() != 2 or r.shape[1] != tree.n_responses or r.shape[0] not in (1, R):
        raise ValueError(
            f"rewards must have shape (L,) or ({R}, L) with L = {tree.n_responses}; "
            f"got {tuple(r.shape)}"
        )
    if not bool(torch.isfinite(r).all()):
        raise ValueError("rewards must be finite")
    return r.expand(R, -1)


def optimal_response_logprobs(
    tree: Tree, ref_logp: Tensor, rewards: Tensor, *, beta: float | Tensor
) -> Tensor:
    """log π*(y|x) of the KL-regularised optimum, normalised over each prompt's responses.

    π*(y|x) = π_ref(y|x) exp(r(x, y)/β) / Z(x) (Rafailov et al. 2023, Eq. 4): the maximiser of
    E_π[r] − β KL(π ‖ π_ref). Computed over all responses at once (a per-prompt logsumexp by
    scatter), independently of the tree's node structure.

    Args:
        tree: the tree (for each response's prompt).
        ref_logp: log π_ref(y|x). Shape (R, L).
        rewards: r(x, y). Shape (L,) or (R, L).
        beta: β > 0, a float or one per run (R,).

    Returns:
        log π*(y|x). Shape (R, L).
    """
    ref_logp = torch.as_tensor(ref_logp, dtype=D)
    if ref_logp.dim() != 2 or ref_logp.shape[1] != tree.n_responses:
        raise ValueError(f"ref_logp must have shape (R, {tree.n_responses})")
    R = ref_logp.shape[0]
    scores = ref_logp + _rewards(tree, rewards, R) / _betas(beta, R)
    prompt = tree.leaf_prompt.expand(R, -1)
    top = scores.new_full((R, tree.n_prompts), float("-inf"))
    top = top.scatter_reduce(1, prompt, scores, reduce="amax")
    shifted = torch.exp(scores - top.gather(1, prompt))
    log_z = torch.log(scores.new_zeros(R, tree.n_prompts).scatter_add(1, prompt, shifted)) + top
    return scores - log_z.gather(1, prompt)


def soft_values(tree: Tree, ref_logits: Tensor, rewards: Tensor, *, beta: float | Tensor) -> Tensor:
    """The soft (KL-regularised) value of every node, bottom-up, one level at a time.

    V(leaf) = r(leaf); V(s) = β log Σ_a π_ref(a|s) exp(V(s·a)/β) (the soft Bellman equation of
    the token MDP with reward r at the leaf and a per-step KL penalty; Rafailov et al. 2024b,
    "From r to Q*", Eq. 5–6). V(root) = β log Z(x).

    Args:
        tree: the tree.
        ref_logits: logits of π_ref. Shape (R, M, b).
        rewards: r(x, y) per response. Shape (L,) or (R, L).
        beta: β > 0, a float or one per run (R,).

    Returns:
        V per node. Shape (R, N).
    """
    check_logits(tree, ref_logits, "ref_logits")
    ref_logits = ref_logits.to(D)
    R = ref_logits.shape[0]
    b = _betas(beta, R)
    cond = conditional_logprobs(tree, ref_logits)
    w = cond.new_zeros(R, tree.n_nodes)  # V/β, filled from the leaves up
    w[:, tree.leaves] = _rewards(tree, rewards, R) / b
    children = tree.children.clamp(min=0)
    for d in range(tree.max_depth - 1, -1, -1):
        lo, hi = tree.level_offsets[d], tree.level_offsets[d + 1]
        idx = tree.internal_index[lo:hi]
        rows = idx[idx >= 0]
        if rows.numel() == 0:
            continue
        terms = (cond[:, rows] + w[:, children[rows]]).masked_fill(~tree.valid[rows], -math.inf)
        w[:, tree.internal[rows]] = torch.logsumexp(terms, dim=-1)
    return w * b


def optimal_logits(
    tree: Tree, ref_logits: Tensor, rewards: Tensor, *, beta: float | Tensor
) -> Tensor:
    """The optimum as per-node log-conditionals: log π*(a|s) = log π_ref(a|s) + (V(s·a) − V(s))/β.

    ``response_logprobs(tree, optimal_logits(...))`` equals ``optimal_response_logprobs`` with
    ``ref_logp = response_logprobs(tree, ref_logits)``: the token-level optimum of the soft
    Bellman equation is the sequence-level optimum.

    Args:
        tree: the tree.
        ref_logits: logits of π_ref. Shape (R, M, b).
        rewards: r(x, y) per response. Shape (L,) or (R, L).
        beta: β > 0, a float or one per run (R,).

    Returns:
        Normalised log-conditionals, −inf where an action has no child. Shape (R, M, b).
    """
    R = ref_logits.shape[0]
    v = soft_values(tree, ref_logits, rewards, beta=beta) / _betas(beta, R)
    cond = conditional_logprobs(tree, ref_logits.to(D))
    kids = v[:, tree.children.clamp(min=0)]
    out = cond + kids - v[:, tree.internal].unsqueeze(-1)
    return out.masked_fill(~tree.valid, -math.inf)


def kl_to_optimum(
    tree: Tree,
    logp: Tensor,
    ref_logp: Tensor,
    rewards: Tensor,
    *,
    beta: float | Tensor,
    direction: str = "reverse",
) -> Tensor:
    """Distance of policies to the KL-regularised optimum: KL(π ‖ π*) ("reverse", default) or
    KL(π* ‖ π) ("forward"), averaged over prompts.

    Args:
        tree: the tree.
        logp: log π(y|x). Shape (R, L).
        ref_logp: log π_ref(y|x). Shape (R, L).
        rewards: r(x, y). Shape (L,) or (R, L).
        beta: β > 0, a float or one per run (R,).
        direction: "reverse" or "forward".

    Returns:
        Shape (R,).
    """
    star = optimal_response_logprobs(tree, ref_logp, rewards, beta=beta)
    if direction == "reverse":
        return kl_divergence(tree, logp, star)
    if direction == "forward":
        return kl_divergence(tree, star, logp)
    raise ValueError(f"direction must be 'reverse' or 'forward'; got {direction!r}")


# ============================================================================ 2. identifiability


def _one_run(tree: Tree, pairs: Pairs) -> Pairs:
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
    pairs = _one_run(tree, pairs)
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
    pairs = _one_run(tree, pairs)
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
    pairs = _one_run(tree, pairs)
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
    pairs = _one_run(tree, pairs)
    asked = torch.zeros(tree.n_prompts, dtype=torch.bool)
    asked[tree.leaf_prompt[pairs.chosen]] = True
    ood = torch.ones(tree.n_responses, dtype=torch.bool)
    ood[pairs.responses()] = False
    has_ood = torch.zeros(tree.n_prompts, dtype=torch.bool)
    has_ood[tree.leaf_prompt[ood]] = True
    lo = float((~asked).sum()) / tree.n_prompts
    hi = float(((~asked) | has_ood).sum()) / tree.n_prompts
    return lo, hi


# ============================================================================ 3. minimiser sets

MINIMISER_OBJECTIVES = ("dpo", "ipo", "ipo_paper", "slic")
"""Objectives whose minimiser sets ``minimiser_set`` describes."""


@dataclass(frozen=True)
class MinimiserSet:
    """The minimisers of one objective's mean loss on one dataset, over all policies.

    Attributes:
        objective: registry name.
        beta: β.
        infimum: inf over policies of the mean per-pair loss.
        attained: whether some policy reaches it (DPO on a dataset without preference cycles
            only approaches it as margins → ∞).
        description: the set in words.
        witness_margins: margins of one (near-)minimiser; for an unattained infimum, margins
            whose loss is within ``tol`` of it. Shape (P,).
        witness_logratio: ℓ with A ℓ = witness_margins, 0 on unconstrained responses.
            Shape (L,).
        target_margins: for IPO, and DPO where attained, the unique minimising margins h*
            (every minimiser has them). None otherwise. Shape (P,).
        query: the query matrix. Shape (P, L).
        bounded_pairs: for DPO, pairs whose margin stays bounded at the infimum (those inside
            a strongly connected component of the chosen → rejected graph). Shape (P,), bool.
    """

    objective: str
    beta: float
    infimum: float
    attained: bool
    description: str
    witness_margins: Tensor
    witness_logratio: Tensor
    target_margins: Tensor | None
    query: Tensor
    bounded_pairs: Tensor


def _dpo_bounded_infimum(h: Tensor, bounded: Tensor, beta: float) -> float:
    """Σ over bounded pairs of −log σ(βh) / P: the DPO infimum (the other pairs tend to 0)."""
    if not bool(bounded.any()):
        return 0.0
    return float(_mean_loss("dpo", h[bounded], beta)) * int(bounded.sum()) / bounded.numel()


def _mean_loss(name: str, h: Tensor, beta: float) -> Tensor:
    """Mean loss of margins h through the registry (log-ratio ℓ_w = h, ℓ_l = 0). Shape (..., P)."""
    z = torch.zeros_like(h)
    return objectives.loss(name, h, z, z, z, beta=beta).mean(-1)


def _sccs(pairs: Pairs) -> tuple[Tensor, dict[int, int], nx.DiGraph]:
    """Bounded-pair mask, SCC id per response, and the condensation of the w → l graph."""
    g = nx.DiGraph()
    g.add_edges_from(zip(pairs.chosen.tolist(), pairs.rejected.tolist(), strict=True))
    cond = nx.condensation(g)
    scc = cond.graph["mapping"]
    bounded = torch.tensor(
        [
            scc[w] == scc[lo]
            for w, lo in zip(pairs.chosen.tolist(), pairs.rejected.tolist(), strict=True)
        ],
        dtype=torch.bool,
    )
    return bounded, scc, cond


def _dpo_bounded_part(a: Tensor, beta: float, iters: int = 100) -> Tensor:
    """argmin_ℓ Σ_i softplus(−β (A ℓ)_i) for pairs that all lie on preference cycles (attained):
    damped Newton with the pseudo-inverse Hessian (singular along null(A)). Shape (L,)."""
    ell = torch.zeros(a.shape[1], dtype=D)

    def f(x: Tensor) -> Tensor:
        return torch.nn.functional.softplus(-beta * (a @ x)).sum()

    for _ in range(iters):
        z = beta * (a @ ell)
        grad = -beta * a.T @ torch.sigmoid(-z)
        if float(grad.norm()) < 1e-13:
            break
        hess = beta**2 * a.T @ (torch.sigmoid(z) * torch.sigmoid(-z)).unsqueeze(1) * a
        step = torch.linalg.pinv(hess, hermitian=True) @ grad
        t, f0 = 1.0, f(ell)
        while f(ell - t * step) > f0 - 1e-4 * t * float(grad @ step) and t > 1e-10:
            t /= 2
        ell = ell - t * step
    return ell


def _slic_lp(a: Tensor, beta: float) -> tuple[float, Tensor]:
    """min over ℓ of mean hinge max(0, 1 − β (A ℓ)_i) as a linear program. (value, ℓ)."""
    P, L = a.shape
    an = a.numpy()
    cost = np.concatenate([np.zeros(L), np.full(P, 1.0 / P)])
    a_ub = np.concatenate([-beta * an, -np.eye(P)], axis=1)  # −β A ℓ − s ≤ −1
    bounds = [(None, None)] * L + [(0, None)] * P
    res = linprog(cost, A_ub=a_ub, b_ub=-np.ones(P), bounds=bounds, method="highs")
    if res.status != 0:
        raise RuntimeError(f"the SLiC linear program failed: {res.message}")
    return float(res.fun), torch.as_tensor(res.x[:L], dtype=D)


def minimiser_set(
    name: str, tree: Tree, pairs: Pairs, *, beta: float, tol: float = 1e-10
) -> MinimiserSet:
    """The set of minimisers of ``name``'s mean loss on a dataset, over all policies.

    - IPO (``ipo``: (h − 1/(2β))²; ``ipo_paper``: (βh − 1)², target 1/β): strictly convex in
      h, so every minimiser has the same margins h* = the projection of the target vector onto
      range(A); h* is the target on every pair when the comparison graph is a forest (or the
      target is otherwise consistent). The minimisers are ℓ* + null(A).
    - DPO: −log σ(βh) decreases in h. Pairs between different strongly connected components of
      the chosen → rejected graph can all get margins → +∞ (order the components
      topologically), so their loss → 0 but never reaches it; pairs inside a component (on a
      preference cycle) have a unique finite optimum. The infimum is attained iff every pair
      lies on a cycle (e.g. {y1 ≻ y2, y2 ≻ y1}).
    - SLiC: max(0, 1 − βh): the minimisers are {ℓ : mean hinge(A ℓ) = infimum}, a polyhedron;
      without preference cycles the infimum is 0 and the set is {ℓ : A ℓ ≥ 1/β}.

    Args:
        name: one of ``MINIMISER_OBJECTIVES``.
        tree: the tree.
        pairs: one run's dataset, shape (P,).
        beta: β > 0.
        tol: for an unattained infimum, the witness's excess loss is at most ``tol``.

    Returns:
        A ``MinimiserSet``.
    """
    if name not in MINIMISER_OBJECTIVES:
        raise ValueError(f"name must be one of {', '.join(MINIMISER_OBJECTIVES)}; got {name!r}")
    objectives.check_beta(beta)
    if not tol > 0:
        raise ValueError(f"tol must be > 0; got {tol}")
    pairs = _one_run(tree, pairs)
    a = query_matrix(tree, pairs)
    P = a.shape[0]
    bounded, scc, cond = _sccs(pairs)
    pinv = torch.linalg.pinv(a)
    target = None
    if name in ("ipo", "ipo_paper"):
        c = 1.0 / (2.0 * beta) if name == "ipo" else 1.0 / beta
        ell = pinv @ torch.full((P,), c, dtype=D)
        target = a @ ell
        consistent = bool(torch.allclose(target, torch.full_like(target, c), atol=1e-12))
        desc = (
            f"margins fixed at h* = A A⁺ ({c:.6g}·1): "
            + ("the target on every pair" if consistent else "the target is inconsistent")
            + "; minimisers ℓ* + null(A)"
        )
        attained = True
    elif name == "dpo":
        ell = torch.zeros(tree.n_responses, dtype=D)
        if bool(bounded.any()):
            ell = _dpo_bounded_part(a[bounded], beta)
        attained = bool(bounded.all())
        if attained:
            target = a @ ell
            desc = (
                "every pair lies on a preference cycle: unique margins h*; minimisers ℓ* + null(A)"
            )
        else:
            # Potential rising along the condensation (sources highest): every cross-component
            # pair gains ≥ 1 per unit of scale s, pairs inside a component gain nothing.
            depth = {}
            for node in reversed(list(nx.topological_sort(cond))):
                depth[node] = 1 + max((depth[k] for k in cond.successors(node)), default=-1)
            potential = torch.zeros(tree.n_responses, dtype=D)
            for y, comp in scc.items():
                potential[y] = float(depth[comp])
            inf_value = _dpo_bounded_infimum(a @ ell, bounded, beta)
            s = 1.0
            while float(_mean_loss(name, a @ (ell + s * potential), beta)) - inf_value > tol:
                s *= 2.0
            ell = ell + s * potential
            desc = (
                f"infimum not attained: {int((~bounded).sum())} of {P} pairs need margins → +∞"
                + (
                    ", the pairs on preference cycles have fixed margins"
                    if bool(bounded.any())
                    else ""
                )
            )
    else:  # slic
        value, ell = _slic_lp(a, beta)
        acyclic = not bool(bounded.any())
        desc = (
            "{ℓ : A ℓ ≥ 1/β} (all margins ≥ 1/β)"
            if acyclic and value < 1e-12
            else "{ℓ : mean max(0, 1 − β A ℓ) = infimum} (a polyhedron)"
        )
        attained = True
    ident_free = torch.ones(tree.n_responses, dtype=torch.bool)
    ident_free[pairs.responses()] = False
    ell = ell.masked_fill(ident_free, 0.0)
    margins = a @ ell
    if name == "dpo" and not attained:
        infimum = _dpo_bounded_infimum(margins, bounded, beta)
    elif name == "slic":
        infimum = value
    else:
        infimum = float(_mean_loss(name, margins, beta))
    return MinimiserSet(
        objective=name,
        beta=float(beta),
        infimum=infimum,
        attained=attained,
        description=desc,
        witness_margins=margins,
        witness_logratio=ell,
        target_margins=target,
        query=a,
        bounded_pairs=bounded,
    )


def margin_distance(mset: MinimiserSet, margins: Tensor) -> Tensor:
    """RMS distance of margin vectors to the set of minimising margins {A ℓ : ℓ a minimiser}.

    Defined in margin space because the loss sees a policy only through its margins; the
    distance is 0 exactly for minimisers. IPO (and DPO where attained): RMS(h − h*). SLiC: the
    Euclidean projection onto the polyhedron {A ℓ : mean hinge(A ℓ) ≤ infimum}, by SLSQP.
    DPO with an unattained infimum: NaN (the set is empty; use the excess loss instead).

    Args:
        mset: the minimiser set.
        margins: margins of policies on the set's pairs (any h; policies give h ∈ range(A)).
            Shape (P,) or (R, P).

    Returns:
        Shape () or (R,).
    """
    h = torch.as_tensor(margins, dtype=D)
    if h.shape[-1] != mset.query.shape[0]:
        raise ValueError(f"margins must have {mset.query.shape[0]} pairs in the last axis")
    if mset.target_margins is not None:
        return ((h - mset.target_margins) ** 2).mean(-1).sqrt()
    if mset.objective == "dpo":
        return torch.full(h.shape[:-1], math.nan, dtype=D)
    flat = h.reshape(-1, h.shape[-1])
    return torch.stack([_slic_projection(mset, row) for row in flat]).reshape(h.shape[:-1])


def _slic_projection(mset: MinimiserSet, h: Tensor) -> Tensor:
    a = mset.query.numpy()
    P, L = a.shape
    beta, budget = mset.beta, P * mset.infimum + 1e-12
    target = h.numpy()
    x0 = np.concatenate(
        [mset.witness_logratio.numpy(), np.maximum(0, 1 - beta * a @ mset.witness_logratio.numpy())]
    )

    def obj(x: np.ndarray) -> tuple[float, np.ndarray]:
        r = a @ x[:L] - target
        return float(r @ r) / P, np.concatenate([2 * a.T @ r / P, np.zeros(P)])

    cons = [
        {  # β A ℓ + s − 1 ≥ 0
            "type": "ineq",
            "fun": lambda x: beta * a @ x[:L] + x[L:] - 1,
            "jac": lambda x: np.concatenate([beta * a, np.eye(P)], axis=1),
        },
        {  # budget − Σ s ≥ 0
            "type": "ineq",
            "fun": lambda x: np.array([budget - x[L:].sum()]),
            "jac": lambda x: np.concatenate([np.zeros(L), -np.ones(P)])[None, :],
        },
    ]
    bounds = [(None, None)] * L + [(0, None)] * P
    res = minimize(
        obj,
        x0,
        jac=True,
        bounds=bounds,
        constraints=cons,
        method="SLSQP",
        options={"ftol": 1e-14, "maxiter": 500},
    )
    return torch.tensor(math.sqrt(max(res.fun, 0.0)), dtype=D)


@dataclass(frozen=True)
class Minimiser:
    """One concrete policy in (or, for an unattained infimum, within tol of) a minimiser set.

    Attributes:
        logp: log π(y|x) per response. Shape (L,).
        logits: tabular logits of the same policy (``logits_from_response_logprobs``).
            Shape (1, M, b).
        loss: its mean loss, evaluated with ``treemdp.objectives.loss``.
        ood_mass: its mass on responses no pair mentions (averaged over prompts).
        margins: its margins. Shape (P,).
    """

    logp: Tensor
    logits: Tensor
    loss: float
    ood_mass: float
    margins: Tensor


def _policy_with_ood(
    tree: Tree, pairs: Pairs, ref_logp: Tensor, ell: Tensor, target: float
) -> Tensor:
    """log π ∝ π_ref e^ℓ on mentioned responses, with each asked prompt's OOD mass = target."""
    ood = torch.ones(tree.n_responses, dtype=torch.bool)
    ood[pairs.responses()] = False
    logw = ref_logp + ell
    for p in tree.leaf_prompt[pairs.chosen].unique().tolist():
        mine = tree.leaf_prompt == p
        inside, outside = mine & ~ood, mine & ood
        if not bool(outside.any()):
            continue
        # κ with logsumexp(ref_O + κ) − logsumexp(w_I) = log(target / (1 − target))
        kappa = (
            math.log(target)
            - math.log1p(-target)
            + torch.logsumexp(logw[inside], 0)
            - torch.logsumexp(ref_logp[outside], 0)
        )
        logw = torch.where(outside, ref_logp + kappa, logw)
    log_z = torch.zeros(tree.n_prompts, dtype=D)
    for p in range(tree.n_prompts):
        log_z[p] = torch.logsumexp(logw[tree.leaf_prompt == p], 0)
    return logw - log_z[tree.leaf_prompt]


def extreme_minimisers(
    mset: MinimiserSet,
    tree: Tree,
    pairs: Pairs,
    ref_logp: Tensor,
    *,
    ood_targets: Sequence[float] = (1e-6, 1 - 1e-6),
) -> list[Minimiser]:
    """Minimisers with equal loss and prescribed OOD mass (default near 0 and near 1).

    Construction: take the set's witness log-ratios ℓ on the responses the pairs mention, so
    π(y) ∝ π_ref(y) e^{ℓ(y)} there, and give every OOD response of a prompt the same log-ratio κ,
    chosen so that the prompt's OOD mass is the target. κ lies in null(A) (no pair sees an OOD
    response), so the margins, hence the loss, are the witness's for every target. The loss is
    then evaluated with ``treemdp.objectives.loss`` from the policy's own log-probs.

    Args:
        mset: a minimiser set of this dataset.
        tree: the tree.
        pairs: the dataset, shape (P,).
        ref_logp: log π_ref(y|x). Shape (L,).
        ood_targets: per-prompt OOD masses to build, each in (0, 1).

    Returns:
        One ``Minimiser`` per target.
    """
    pairs = _one_run(tree, pairs)
    ref_logp = torch.as_tensor(ref_logp, dtype=D)
    if ref_logp.shape != (tree.n_responses,):
        raise ValueError(f"ref_logp must have shape ({tree.n_responses},)")
    out = []
    for target in ood_targets:
        if not 0.0 < target < 1.0:
            raise ValueError(f"ood_targets must lie in (0, 1); got {target}")
        logp = _policy_with_ood(tree, pairs, ref_logp, mset.witness_logratio, target)
        lc, lr = logp[pairs.chosen], logp[pairs.rejected]
        rc, rr = ref_logp[pairs.chosen], ref_logp[pairs.rejected]
        value = objectives.loss(mset.objective, lc, lr, rc, rr, beta=mset.beta).mean()
        out.append(
            Minimiser(
                logp=logp,
                logits=logits_from_response_logprobs(tree, logp.unsqueeze(0)),
                loss=float(value),
                ood_mass=float(ood_mass(tree, pairs, logp.unsqueeze(0))[0]),
                margins=(lc - rc) - (lr - rr),
            )
        )
    return out


# ============================================================================ the paper's example


@dataclass(frozen=True)
class ThreeResponseExample:
    """Responses {y1, y2, y3}, data {y1 ≻ y2, y2 ≻ y1}, uniform reference (PAPER.md §2).

    Attributes:
        tree: three one-action responses.
        pairs: chosen (0, 1), rejected (1, 0).
        ref_logp: log ⅓ each. Shape (3,).
        beta: β.
        half: π = (½, ½, 0). Shape (3,) (log-probs, −inf on y3).
        half_loss: its DPO loss (margins 0 on both pairs: exactly log 2).
        epsilons: the ε of the family π_ε = (ε, ε, 1 − 2ε) → (0, 0, 1).
        family_losses: DPO loss of each π_ε (exactly log 2: both log-ratios are log 3ε, so
            both margins are exactly 0). Shape (len(epsilons),).
        family_ood: OOD mass of each π_ε (1 − 2ε). Shape (len(epsilons),).
        infimum: the DPO infimum on this dataset (log 2, attained at margins 0).
    """

    tree: Tree
    pairs: Pairs
    ref_logp: Tensor
    beta: float
    half: Tensor
    half_loss: float
    epsilons: tuple[float, ...]
    family_losses: Tensor
    family_ood: Tensor
    infimum: float


def three_response_example(
    *, beta: float = 0.1, epsilons: Sequence[float] = (1e-2, 1e-6, 1e-12, 1e-100)
) -> ThreeResponseExample:
    """The paper's minimal case: π = (½, ½, 0) and π = (0, 0, 1) reach the same DPO loss.

    π = (0, 0, 1) puts no mass on y1, y2, so its margins are (−∞) − (−∞): undefined. It is the
    limit of π_ε = (ε, ε, 1 − 2ε), whose margins are exactly 0 for every ε > 0 (both log-ratios
    equal log 3ε), so its loss is log 2 for every ε and in the limit: the same as (½, ½, 0),
    whose margins are 0 too. log 2 is the infimum: the two pairs have opposite margins h, −h and
    (g(βh) + g(−βh))/2 ≥ g(0) = log 2 by convexity.
    """
    tree = Tree.from_sequences([(0,), (1,), (2,)])
    pairs = validate_pairs(tree, torch.tensor([0, 1]), torch.tensor([1, 0]))
    ref = torch.full((3,), -math.log(3.0), dtype=D)

    def dpo(logp: Tensor) -> Tensor:
        lc, lr = logp[..., pairs.chosen], logp[..., pairs.rejected]
        return objectives.loss(
            "dpo", lc, lr, ref[pairs.chosen], ref[pairs.rejected], beta=beta
        ).mean(-1)

    half = torch.tensor([math.log(0.5), math.log(0.5), -math.inf], dtype=D)
    eps = torch.tensor(list(epsilons), dtype=D)
    if not bool(((eps > 0) & (eps < 0.5)).all()):
        raise ValueError("epsilons must lie in (0, 0.5)")
    family = torch.stack([eps.log(), eps.log(), torch.log1p(-2 * eps)], dim=1)
    return ThreeResponseExample(
        tree=tree,
        pairs=pairs,
        ref_logp=ref,
        beta=beta,
        half=half,
        half_loss=float(dpo(half)),
        epsilons=tuple(float(e) for e in epsilons),
        family_losses=dpo(family),
        family_ood=ood_mass(tree, pairs, family),
        infimum=minimiser_set("dpo", tree, pairs, beta=beta).infimum,
    )
