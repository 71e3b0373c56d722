"""Minimiser sets of DPO, IPO and SLiC on a dataset, the distance of margins to them, and two
minimisers of equal loss with OOD mass near 0 and near 1 (with the paper's three-response example).
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
from treemdp.data import Pairs, validate_pairs
from treemdp.policy import (
    logits_from_response_logprobs,
)
from treemdp.theory.identifiability import ood_mass, query_matrix, single_run_pairs
from treemdp.tree import Tree

D = torch.float64


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
    _check_minimiser_arguments(name, beta, tol)
    pairs = single_run_pairs(tree, pairs)
    a = query_matrix(tree, pairs)
    bounded, scc, cond = _sccs(pairs)
    if name in ("ipo", "ipo_paper"):
        sol = _ipo_solution(name, a, beta)
    elif name == "dpo":
        sol = _dpo_solution(tree, a, bounded, scc, cond, beta=beta, tol=tol)
    else:
        sol = _slic_solution(a, bounded, beta)
    ell = _zero_unconstrained(tree, pairs, sol.logratio)
    margins = a @ ell
    return MinimiserSet(
        objective=name,
        beta=float(beta),
        infimum=_infimum(name, sol, margins, bounded, beta),
        attained=sol.attained,
        description=sol.description,
        witness_margins=margins,
        witness_logratio=ell,
        target_margins=sol.target,
        query=a,
        bounded_pairs=bounded,
    )


@dataclass(frozen=True)
class _Solution:
    """One objective's (near-)minimiser before the unconstrained responses are zeroed.

    Attributes:
        logratio: ℓ of a (near-)minimiser. Shape (L,).
        attained: whether the infimum is reached.
        description: the minimiser set in words.
        target: the unique minimising margins, or None. Shape (P,).
        value: the infimum when the solver computes it directly (SLiC's linear program).
    """

    logratio: Tensor
    attained: bool
    description: str
    target: Tensor | None = None
    value: float | None = None


def _check_minimiser_arguments(name: str, beta: float, tol: float) -> None:
    if name not in MINIMISER_OBJECTIVES:
        raise ValueError(f"name must be one of {', '.join(MINIMISER_OBJECTIVES)}; got {name!r}")
    objectives.check_beta(beta)
    if not tol > 0:
        raise ValueError(f"tol must be > 0; got {tol}")


def _ipo_solution(name: str, a: Tensor, beta: float) -> _Solution:
    """IPO: the margins are the projection h* = A A⁺ c·1 of the target c onto range(A)."""
    c = 1.0 / (2.0 * beta) if name == "ipo" else 1.0 / beta
    ell = torch.linalg.pinv(a) @ torch.full((a.shape[0],), c, dtype=D)
    target = a @ ell
    consistent = bool(torch.allclose(target, torch.full_like(target, c), atol=1e-12))
    desc = (
        f"margins fixed at h* = A A⁺ ({c:.6g}·1): "
        + ("the target on every pair" if consistent else "the target is inconsistent")
        + "; minimisers ℓ* + null(A)"
    )
    return _Solution(ell, attained=True, description=desc, target=target)


def _dpo_solution(
    tree: Tree,
    a: Tensor,
    bounded: Tensor,
    scc: dict[int, int],
    cond: nx.DiGraph,
    *,
    beta: float,
    tol: float,
) -> _Solution:
    """DPO: the finite optimum of the pairs on preference cycles; when other pairs exist, their
    margins pushed up along the condensation until the loss is within ``tol`` of the infimum."""
    ell = torch.zeros(tree.n_responses, dtype=D)
    if bool(bounded.any()):
        ell = _dpo_bounded_part(a[bounded], beta)
    if bool(bounded.all()):
        desc = "every pair lies on a preference cycle: unique margins h*; minimisers ℓ* + null(A)"
        return _Solution(ell, attained=True, description=desc, target=a @ ell)
    potential = _condensation_potential(scc, cond, tree.n_responses)
    inf_value = _dpo_bounded_infimum(a @ ell, bounded, beta)
    s = 1.0
    while float(_mean_loss("dpo", a @ (ell + s * potential), beta)) - inf_value > tol:
        s *= 2.0
    desc = (
        f"infimum not attained: {int((~bounded).sum())} of {a.shape[0]} pairs need margins → +∞"
        + (", the pairs on preference cycles have fixed margins" if bool(bounded.any()) else "")
    )
    return _Solution(ell + s * potential, attained=False, description=desc)


def _condensation_potential(scc: dict[int, int], cond: nx.DiGraph, n_responses: int) -> Tensor:
    """Potential rising along the condensation (sources highest): every cross-component pair
    gains ≥ 1 per unit of scale, pairs inside a component gain nothing. Shape (L,)."""
    depth = {}
    for node in reversed(list(nx.topological_sort(cond))):
        depth[node] = 1 + max((depth[k] for k in cond.successors(node)), default=-1)
    potential = torch.zeros(n_responses, dtype=D)
    for y, comp in scc.items():
        potential[y] = float(depth[comp])
    return potential


def _slic_solution(a: Tensor, bounded: Tensor, beta: float) -> _Solution:
    """SLiC: a vertex of the polyhedron of minimisers, from the linear program."""
    value, ell = _slic_lp(a, beta)
    acyclic = not bool(bounded.any())
    desc = (
        "{ℓ : A ℓ ≥ 1/β} (all margins ≥ 1/β)"
        if acyclic and value < 1e-12
        else "{ℓ : mean max(0, 1 − β A ℓ) = infimum} (a polyhedron)"
    )
    return _Solution(ell, attained=True, description=desc, value=value)


def _zero_unconstrained(tree: Tree, pairs: Pairs, ell: Tensor) -> Tensor:
    """ℓ with 0 on the responses no pair mentions (no loss term sees them). Shape (L,)."""
    free = torch.ones(tree.n_responses, dtype=torch.bool)
    free[pairs.responses()] = False
    return ell.masked_fill(free, 0.0)


def _infimum(name: str, sol: _Solution, margins: Tensor, bounded: Tensor, beta: float) -> float:
    """The infimum of the mean loss, from the witness's margins where the solver gave none."""
    if sol.value is not None:
        return sol.value
    if not sol.attained:  # DPO: the unbounded pairs' loss tends to 0
        return _dpo_bounded_infimum(margins, bounded, beta)
    return float(_mean_loss(name, margins, beta))


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
    pairs = single_run_pairs(tree, pairs)
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
