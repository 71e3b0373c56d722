"""The KL-regularised optimum π*(y|x) ∝ π_ref(y|x) exp(r(x, y)/β), directly and through the soft
value recursion V(s) = β log Σ_a π_ref(a|s) exp(V(s·a)/β), V(leaf) = r(leaf) (Rafailov et al.
2024b, "From r to Q*", Eq. 5–6), level by level bottom-up with a leading run axis.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from treemdp import objectives
from treemdp.metrics import kl_divergence
from treemdp.policy import (
    bottom_up_logsumexp,
    check_logits,
    conditional_logprobs,
)
from treemdp.tree import Tree

D = torch.float64


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
    # V/β from the leaves up: V(s)/β = log Σ_a π_ref(a|s) exp(V(s·a)/β).
    w = bottom_up_logsumexp(tree, _rewards(tree, rewards, R) / b, cond)
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
