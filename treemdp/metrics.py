"""Exact metrics of a batch of policies, from their log-probabilities over all responses.

With several prompts, prompts are weighted uniformly: every mass, expectation and KL below is
under μ(x, y) = π(y|x) / n_prompts, i.e. the per-prompt value averaged over prompts. Every
metric is O(L) per step (the win rate sorts the gold rewards once, O(L log L), when the
``MetricContext`` is built); no (L × L) matrix is ever formed.

Metric names (columns of every results table):
    p_chosen, p_rejected   mass on the responses the dataset ever calls chosen / rejected
    mass_in_dist           mass on responses that appear in any pair
    mass_ood               mass on responses no pair mentions (= 1 − mass_in_dist)
    max_ood                largest π(y|x) of a single OOD response (0 if there is none)
    max_ood_response       its response index (−1 if there is none)
    kl_reverse             KL(π ‖ π_ref)
    kl_forward             KL(π_ref ‖ π)
    gold_reward            E_π[r]
    win_rate               P[r(y) > r(y')] + ½ P[r(y) = r(y')], y ~ π, y' ~ π_ref, same prompt
    reward_accuracy        share of pairs with positive implicit margin h
    loss                   mean per-pair objective loss

Not in ``METRICS`` (computed on request, e.g. as a ``train(extra_metrics=...)`` hook):
    logratio_length_r2     R² of the π-weighted regression of log π(y)/π_ref(y) on |y|
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from treemdp.data import Pairs
from treemdp.tree import Tree

__all__ = [
    "METRICS",
    "MetricContext",
    "kl_divergence",
    "logratio_length_r2",
    "metrics",
    "weighted_r2",
    "win_rate",
    "win_weights",
]

METRICS = (
    "p_chosen",
    "p_rejected",
    "mass_in_dist",
    "mass_ood",
    "max_ood",
    "max_ood_response",
    "kl_reverse",
    "kl_forward",
    "gold_reward",
    "win_rate",
    "reward_accuracy",
    "loss",
)


@dataclass(frozen=True, eq=False)
class MetricContext:
    """What the metrics need besides the policy: fixed for a whole training run.

    Attributes:
        tree: the tree.
        rewards: gold reward per response. Shape (R, L).
        chosen_mask: 1/n_prompts where a response is ever chosen, else 0. Shape (R, L).
        rejected_mask: same for rejected. Shape (R, L).
        in_dist: whether a response appears in any pair. Shape (R, L), bool.
        order: responses sorted by (prompt, reward). Shape (R, L).
        group: tie-group id (same prompt and reward) of each sorted position. Shape (R, L).
        first_group: id of the first group of the sorted position's prompt. Shape (R, L).
    """

    tree: Tree
    rewards: Tensor
    chosen_mask: Tensor
    rejected_mask: Tensor
    in_dist: Tensor
    order: Tensor
    group: Tensor
    first_group: Tensor

    @classmethod
    def build(cls, tree: Tree, rewards: Tensor, pairs: Pairs) -> MetricContext:
        """Precompute masks and the reward ranking.

        Args:
            tree: the tree.
            rewards: gold rewards. Shape (R, L).
            pairs: the dataset of each run, chosen/rejected of shape (R, P).
        """
        R, L = rewards.shape
        w = 1.0 / tree.n_prompts
        chosen_mask = rewards.new_zeros(R, L).scatter_(1, pairs.chosen, w)
        rejected_mask = rewards.new_zeros(R, L).scatter_(1, pairs.rejected, w)
        in_dist = (chosen_mask > 0) | (rejected_mask > 0)
        by_reward = torch.sort(rewards, dim=1, stable=True).indices
        prompt_sorted = tree.leaf_prompt[by_reward]
        order = by_reward.gather(1, torch.sort(prompt_sorted, dim=1, stable=True).indices)
        prompt = tree.leaf_prompt[order]
        r = rewards.gather(1, order)
        new_prompt = torch.ones_like(prompt, dtype=torch.bool)
        new_prompt[:, 1:] = prompt[:, 1:] != prompt[:, :-1]
        new_group = new_prompt.clone()
        new_group[:, 1:] |= r[:, 1:] != r[:, :-1]
        group = torch.cumsum(new_group.long(), dim=1) - 1
        pos = torch.arange(L).expand(R, L)
        prompt_start = torch.cummax(torch.where(new_prompt, pos, 0), dim=1).values
        first_group = group.gather(1, prompt_start)
        return cls(tree, rewards, chosen_mask, rejected_mask, in_dist, order, group, first_group)


def kl_divergence(tree: Tree, logp: Tensor, logq: Tensor) -> Tensor:
    """KL(p ‖ q) per run, averaged over prompts; 0·log 0 = 0, +inf where q = 0 < p.

    Args:
        tree: the tree (for the number of prompts).
        logp: log p(y|x) per response. Shape (R, L).
        logq: log q(y|x) per response. Shape (R, L).

    Returns:
        Shape (R,).
    """
    return _kl(torch.exp(logp), logp, logq) / tree.n_prompts


def _kl(p: Tensor, logp: Tensor, logq: Tensor) -> Tensor:
    """Σ_y p (log p − log q) with 0·log 0 = 0, given p = exp(log p) already. Shape (R,)."""
    terms = p * (logp - logq)
    return torch.where(torch.isneginf(logp), 0.0, terms).sum(-1)


def win_weights(ctx: MetricContext, ref_logp: Tensor) -> Tensor:
    """Each response's chance to beat the reference: w(y) = P_{y'~π_ref}[r(y') < r(y)] +
    ½ P[r(y') = r(y)], y' answering y's prompt.

    The win rate of any π is then Σ_y π(y) w(y) (averaged over prompts). Uses the precomputed
    sort: the reference mass strictly below and tied with each response are differences of one
    cumulative sum over tie groups. O(L); no (L × L) matrix. Training computes it once per run,
    since π_ref does not change.

    Args:
        ctx: metric context (rewards and their ranking).
        ref_logp: log π_ref(y|x). Shape (R, L).

    Returns:
        Weights in [0, 1], in response order. Shape (R, L).
    """
    q = torch.exp(ref_logp).gather(1, ctx.order)
    tied = torch.zeros_like(q).scatter_add_(1, ctx.group, q)  # reference mass per tie group
    below = torch.cumsum(tied, dim=1) - tied  # mass of all earlier groups (across prompts)
    less = below.gather(1, ctx.group) - below.gather(1, ctx.first_group)
    sorted_weights = less + 0.5 * tied.gather(1, ctx.group)
    return torch.empty_like(sorted_weights).scatter_(1, ctx.order, sorted_weights)


def win_rate(
    ctx: MetricContext, logp: Tensor, ref_logp: Tensor, *, weights: Tensor | None = None
) -> Tensor:
    """P[y ~ π beats y' ~ π_ref] under the gold reward, ties ½, averaged over prompts.

    Σ_y π(y) w(y) with w from ``win_weights`` (sorting-based, O(L)).

    Args:
        ctx: metric context (rewards and their ranking).
        logp: log π(y|x). Shape (R, L).
        ref_logp: log π_ref(y|x). Shape (R, L).
        weights: ``win_weights(ctx, ref_logp)`` if already computed. Shape (R, L).

    Returns:
        Shape (R,).
    """
    w = win_weights(ctx, ref_logp) if weights is None else weights
    return (torch.exp(logp) * w).sum(-1) / ctx.tree.n_prompts


def metrics(
    ctx: MetricContext,
    logp: Tensor,
    ref_logp: Tensor,
    h: Tensor,
    loss: Tensor,
    *,
    ref_weights: Tensor | None = None,
) -> dict[str, Tensor]:
    """Every metric in ``METRICS`` for a batch of runs.

    Args:
        ctx: metric context.
        logp: log π(y|x) per response. Shape (R, L).
        ref_logp: log π_ref(y|x) per response. Shape (R, L).
        h: implicit margin of each pair. Shape (R, P).
        loss: per-pair loss. Shape (R, P).
        ref_weights: ``win_weights(ctx, ref_logp)``, to skip recomputing it each call (it
            depends on π_ref only). Shape (R, L).

    Returns:
        Name → tensor of shape (R,) (``max_ood_response`` is int64).
    """
    p, q = torch.exp(logp), torch.exp(ref_logp)  # each exponentiated once
    w = 1.0 / ctx.tree.n_prompts
    if ref_weights is None:
        ref_weights = win_weights(ctx, ref_logp)
    n = ctx.tree.n_prompts
    in_dist_mass = (p * ctx.in_dist).sum(-1) * w
    # Summed directly, not as 1 − in_dist_mass, so a tiny OOD mass keeps its digits.
    ood_mass = (p * ~ctx.in_dist).sum(-1) * w
    ood = torch.where(ctx.in_dist, torch.full_like(p, -1.0), p)
    max_ood, max_ood_response = ood.max(dim=-1)
    none = max_ood < 0  # every response is in distribution
    return {
        "p_chosen": (p * ctx.chosen_mask).sum(-1),
        "p_rejected": (p * ctx.rejected_mask).sum(-1),
        "mass_in_dist": in_dist_mass,
        "mass_ood": ood_mass,
        "max_ood": max_ood.clamp(min=0.0),
        "max_ood_response": torch.where(none, -1, max_ood_response),
        "kl_reverse": _kl(p, logp, ref_logp) / n,
        "kl_forward": _kl(q, ref_logp, logp) / n,
        "gold_reward": (p * ctx.rewards).sum(-1) * w,
        "win_rate": (p * ref_weights).sum(-1) / n,
        "reward_accuracy": (h > 0).to(logp.dtype).mean(-1),
        "loss": loss.mean(-1),
    }


def weighted_r2(y: Tensor, x: Tensor, weights: Tensor) -> Tensor:
    """R² of the weighted least-squares line y ≈ a + b x, per run.

    With weights normalised to w (Σw = 1), weighted means ȳ = Σ w y, x̄ = Σ w x, the fitted line's
    R² = 1 − Σ w (y − a − b x)² / Σ w (y − ȳ)² equals the squared weighted correlation
    cov_w(x, y)² / (var_w(x) var_w(y)) (simple regression with an intercept). Entries of weight 0
    are ignored even where y or x is ±inf or NaN (e.g. log π = −inf where π = 0).

    Args:
        y: response variable. Shape (R, N).
        x: regressor. Shape (R, N) or (N,) (broadcast over runs).
        weights: non-negative weights, any scale, at least one positive per run. Shape (R, N).

    Returns:
        R² in [0, 1]. Shape (R,). NaN for a run whose weighted variance of x or of y is zero
        (up to rounding, relative 1e-12): R² is undefined there (e.g. y ≡ 0 at π = π_ref).

    Raises:
        ValueError: shapes disagree, or a weight is negative or NaN, or a run's weights sum to 0.
    """
    if x.dim() == 1 and y.dim() == 2 and x.shape[0] == y.shape[1]:
        x = x.expand_as(y)
    if y.dim() != 2 or x.shape != y.shape or weights.shape != y.shape:
        raise ValueError(
            f"y, x and weights must have shape (R, N) (x may be (N,)); got {tuple(y.shape)}, "
            f"{tuple(x.shape)}, {tuple(weights.shape)}"
        )
    if bool((~(weights >= 0)).any()):
        raise ValueError("weights must be >= 0 and not NaN")
    # One dtype for all three: float32 weights would shift the means of float64 data by ~1e-8
    # and turn a constant x into a tiny but "defined" variance.
    dtype = torch.promote_types(torch.promote_types(y.dtype, x.dtype), weights.dtype)
    y, x, weights = y.to(dtype), x.to(dtype), weights.to(dtype)
    total = weights.sum(-1, keepdim=True)
    if bool((total <= 0).any()):
        raise ValueError("weights must have a positive sum in every run")
    w = weights / total
    support = w > 0
    y = torch.where(support, y, torch.zeros_like(y))
    x = torch.where(support, x, torch.zeros_like(x))
    dy = y - (w * y).sum(-1, keepdim=True)
    dx = x - (w * x).sum(-1, keepdim=True)
    var_y, var_x = (w * dy * dy).sum(-1), (w * dx * dx).sum(-1)
    cov = (w * dx * dy).sum(-1)
    r2 = (cov * cov / (var_x * var_y)).clamp(0.0, 1.0)
    # Relative zero tests: a variance is "zero" when below (1e-12 · largest |value|)².
    scale_y = torch.where(support, y.abs(), torch.zeros_like(y)).amax(-1)
    scale_x = torch.where(support, x.abs(), torch.zeros_like(x)).amax(-1)
    undefined = (var_y <= (1e-12 * scale_y) ** 2) | (var_x <= (1e-12 * scale_x) ** 2)
    return torch.where(undefined, torch.full_like(r2, float("nan")), r2)


def logratio_length_r2(tree: Tree, logp: Tensor, ref_logp: Tensor) -> Tensor:
    """R² of the regression of the implicit log-ratio log π(y|x)/π_ref(y|x) on length |y|, y ~ π.

    The exact, probability-weighted version of Rafailov et al. (2024)'s length analysis (there: an
    ordinary regression over sampled responses): weights π(y|x)/n_prompts, pooled over prompts
    (``weighted_r2``). NaN where the log-ratio is constant on π's support (at π = π_ref) or every
    response π reaches has the same length.

    Args:
        tree: the tree (response lengths, number of prompts).
        logp: log π(y|x). Shape (R, L).
        ref_logp: log π_ref(y|x). Shape (R, L).

    Returns:
        Shape (R,).
    """
    length = tree.response_length.to(logp.dtype)
    return weighted_r2(logp - ref_logp, length, torch.exp(logp) / tree.n_prompts)
