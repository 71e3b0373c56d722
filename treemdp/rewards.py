"""Gold rewards for the Tree MDP: from i.i.d. noise to Goodhart-shaped functions of features.

Each generator returns one gold reward per response, shape (L,), drawn from a
``torch.Generator``; ``REWARDS`` maps a name to its generator. The feature-based rewards read the
response's *sequence features* Ψ(y) = Σ_t φ(s_{t−1}, a_t), the sum of the edge features along
its path: the quantity a log-linear policy is linear in (log π(y) = θ·Ψ(y) − Σ_t log Z(s_t)).

    name         r(y)                                              knobs
    "normal"     N(0, 1), i.i.d.                                   —
    "linear"     √ρ·u + √(1−ρ)·e                                   explained ρ
    "concave"    √ρ·std(u − u²/(2κ)) + √(1−ρ)·e                    peak κ, explained ρ
    "saturating" √ρ·std(κ·tanh(u/κ)) + √(1−ρ)·e                    peak κ, explained ρ
    "length"     √ρ·std(ℓ − ℓ²/(2ℓ*)) + √(1−ρ)·e                   peak ℓ* (actions), explained ρ

u = std(w·Ψ(y)) with w ~ N(0, I_k) is "the good thing" along the features, in standard deviations
over the responses; ℓ is the response length; std(·) standardises over the responses (mean 0,
variance 1, population variance); e is standard-normal noise made orthogonal to the constant, to
every column of Ψ and to the signal, then standardised. Hence r has mean 0 and variance 1
exactly, and ρ is exactly the R² of regressing r on (1, Ψ) for "linear" (on (1, signal) for the
others): the share of the gold reward the policy's features can explain.

"concave" is "more of a good thing helps, then hurts": r rises with u up to u = κ (in SDs) and
falls beyond it. Preference pairs drawn among ordinary responses mostly sit where r still rises,
so they point the policy along +u; a policy that extrapolates along that direction overshoots the
peak. "saturating" rises and flattens (never falls); "length" is the same concave shape along the
response length, for trees whose responses differ in length.

Every generator draws w (or nothing) and then the noise, whatever ρ, so changing ρ or κ changes
the reward of a seed but not the pairs' random stream position of the caller.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from treemdp.data import normal_rewards
from treemdp.tree import Tree

__all__ = [
    "REWARDS",
    "RewardSpec",
    "concave_rewards",
    "gold_rewards",
    "length_rewards",
    "linear_rewards",
    "saturating_rewards",
    "sequence_features",
]


def sequence_features(tree: Tree, features: Tensor) -> Tensor:
    """Ψ(y) = Σ_t φ(s_{t−1}, a_t): the edge features summed along each response's path.

    Args:
        tree: the tree.
        features: φ(s, a). Shape (M, b, k).

    Returns:
        Ψ in ``tree.leaves`` order. Shape (L, k).
    """
    if features.dim() != 3 or tuple(features.shape[:2]) != (tree.n_internal, tree.branching):
        raise ValueError(
            f"features must have shape ({tree.n_internal}, {tree.branching}, k); "
            f"got {tuple(features.shape)}"
        )
    flat = features.reshape(-1, features.shape[-1])
    levels = [flat.new_zeros(tree.level_offsets[1], flat.shape[1])]
    for _, _, parent_pos, edge in tree.levels:
        levels.append(levels[-1][parent_pos] + flat[edge])
    return torch.cat(levels)[tree.leaves]


def _standardise(x: Tensor, name: str) -> Tensor:
    centred = x - x.mean()
    sd = centred.pow(2).mean().sqrt()
    if not sd > 1e-12 * (1 + x.abs().max()):
        raise ValueError(f"{name} is constant over the responses; it cannot be standardised")
    return centred / sd


def _mix(signal: Tensor, basis: Tensor, noise: Tensor, explained: float) -> Tensor:
    """√ρ·std(signal) + √(1−ρ)·std(noise ⟂ [1, basis, signal]). Shapes (L,), (L, k), (L,)."""
    if not 0.0 <= explained <= 1.0:
        raise ValueError(f"explained must lie in [0, 1]; got {explained}")
    s = _standardise(signal, "the reward signal")
    if explained == 1.0:
        return s
    design = torch.cat([torch.ones_like(s).unsqueeze(1), basis, s.unsqueeze(1)], dim=1)
    # An orthonormal basis of the design's column space (SVD: rank-revealing, unlike plain QR).
    u, sv, _ = torch.linalg.svd(design, full_matrices=False)
    q = u[:, sv > sv[0] * max(design.shape) * torch.finfo(design.dtype).eps]
    if design.shape[0] <= q.shape[1]:
        raise ValueError(
            f"explained < 1 needs more responses (L = {design.shape[0]}) than independent "
            f"columns of [1, features, signal] ({q.shape[1]})"
        )
    resid = noise - q @ (q.T @ noise)
    return explained**0.5 * s + (1.0 - explained) ** 0.5 * _standardise(resid, "the noise")


def _direction(tree: Tree, features: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """(Ψ, u = std(w·Ψ)) with w ~ N(0, I_k) from ``generator``. Shapes (L, k), (L,)."""
    psi = sequence_features(tree, features)
    w = torch.randn(psi.shape[1], generator=generator, dtype=psi.dtype)
    return psi, _standardise(psi @ w, "w·Ψ(y)")


def _noise(tree: Tree, generator: torch.Generator, dtype: torch.dtype) -> Tensor:
    return torch.randn(tree.n_responses, generator=generator, dtype=dtype)


def _check_peak(peak: float) -> None:
    if not peak > 0:
        raise ValueError(f"peak must be > 0; got {peak}")


def linear_rewards(
    tree: Tree, generator: torch.Generator, *, features: Tensor, explained: float = 0.5
) -> Tensor:
    """r = √ρ·u + √(1−ρ)·e: linear in the sequence features plus noise they cannot explain.

    Args:
        tree: the tree.
        generator: randomness (draws w, then the noise).
        features: φ(s, a). Shape (M, b, k).
        explained: ρ ∈ [0, 1], the R² of r on (1, Ψ).

    Returns:
        Shape (L,), mean 0 and variance 1.
    """
    psi, u = _direction(tree, features, generator)
    return _mix(u, psi, _noise(tree, generator, psi.dtype), explained)


def concave_rewards(
    tree: Tree,
    generator: torch.Generator,
    *,
    features: Tensor,
    peak: float = 1.0,
    explained: float = 1.0,
) -> Tensor:
    """Goodhart-shaped: g(u) = u − u²/(2κ) rises up to u = κ SDs along w·Ψ, then falls.

    Args:
        tree: the tree.
        generator: randomness (draws w, then the noise).
        features: φ(s, a). Shape (M, b, k).
        peak: κ > 0, where g peaks, in standard deviations of u over the responses.
        explained: ρ ∈ [0, 1], the share of variance due to g (the rest is noise ⟂ 1, Ψ, g).

    Returns:
        Shape (L,), mean 0 and variance 1.
    """
    _check_peak(peak)
    psi, u = _direction(tree, features, generator)
    return _mix(u - u.square() / (2 * peak), psi, _noise(tree, generator, psi.dtype), explained)


def saturating_rewards(
    tree: Tree,
    generator: torch.Generator,
    *,
    features: Tensor,
    peak: float = 1.0,
    explained: float = 1.0,
) -> Tensor:
    """g(u) = κ·tanh(u/κ): more of the good thing helps less and less, never hurts.

    Args as ``concave_rewards`` (κ is the scale at which g flattens). Shape (L,).
    """
    _check_peak(peak)
    psi, u = _direction(tree, features, generator)
    return _mix(peak * torch.tanh(u / peak), psi, _noise(tree, generator, psi.dtype), explained)


def length_rewards(
    tree: Tree,
    generator: torch.Generator,
    *,
    features: Tensor | None = None,
    peak: float = 3.0,
    explained: float = 0.5,
) -> Tensor:
    """g(ℓ) = ℓ − ℓ²/(2ℓ*): longer helps up to ℓ* actions, then hurts; plus length-free noise.

    Args:
        tree: a tree whose responses differ in length.
        generator: randomness (draws the noise).
        features: unused (accepted so every generator takes the same keywords).
        peak: ℓ* > 0, the best length in actions.
        explained: ρ ∈ [0, 1], the share of variance due to length.

    Returns:
        Shape (L,), mean 0 and variance 1.
    """
    del features
    _check_peak(peak)
    length = tree.response_length.to(torch.float64)
    if bool((length == length[0]).all()):
        raise ValueError("reward='length' needs responses of different lengths (irregular tree)")
    g = length - length.square() / (2 * peak)
    return _mix(g, length.unsqueeze(1), _noise(tree, generator, torch.float64), explained)


@dataclass(frozen=True)
class RewardSpec:
    """One registry entry: the generator, whether it reads features, and its knobs."""

    fn: Callable[..., Tensor]
    needs_features: bool
    options: tuple[str, ...]


REWARDS: dict[str, RewardSpec] = {
    "normal": RewardSpec(lambda tree, gen, **_: normal_rewards(tree, gen), False, ()),
    "linear": RewardSpec(linear_rewards, True, ("explained",)),
    "concave": RewardSpec(concave_rewards, True, ("peak", "explained")),
    "saturating": RewardSpec(saturating_rewards, True, ("peak", "explained")),
    "length": RewardSpec(length_rewards, False, ("peak", "explained")),
}
"""Name → gold-reward generator. "normal" is ``treemdp.data.normal_rewards`` (same draws)."""


def gold_rewards(
    name: str,
    tree: Tree,
    generator: torch.Generator,
    *,
    features: Tensor | None = None,
    **options: Any,
) -> Tensor:
    """Draw the gold rewards ``name`` for one problem.

    Args:
        name: a key of ``REWARDS``.
        tree: the tree.
        generator: randomness.
        features: φ(s, a), required by feature-based rewards. Shape (M, b, k).
        **options: the entry's knobs (``REWARDS[name].options``).

    Returns:
        Gold reward per response. Shape (L,).
    """
    if name not in REWARDS:
        raise ValueError(f"reward must be one of {', '.join(REWARDS)}; got {name!r}")
    spec = REWARDS[name]
    unknown = sorted(set(options) - set(spec.options))
    if unknown:
        allowed = ", ".join(spec.options) or "none"
        raise ValueError(f"reward {name!r} takes options [{allowed}]; got unknown {unknown}")
    if spec.needs_features:
        if features is None:
            raise ValueError(f"reward {name!r} needs features φ(s, a)")
        return spec.fn(tree, generator, features=features, **options)
    return spec.fn(tree, generator, **options)
