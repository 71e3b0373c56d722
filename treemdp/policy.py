"""Policies on a tree: parameterisations and the exact log-probability of every response.

A policy is a table of logits over (internal node, action), shape (R, M, b) with a leading run
axis R. The log-probability of every node is accumulated level by level (one gather and one add
per level, O(nodes) in all), never by walking paths one at a time.

Families map parameters θ (leading run axis) to logits:

- ``Tabular``: θ has shape (R, M, b) and is the logit table itself.
- ``LogLinear``: logits = φ(s, a)·θ with features φ of shape (R, M, b, k) and θ of shape (R, k).
  The parameters are shared across states, so a gradient step on one response moves every
  response whose features overlap with it: the mechanism that lets mass flow to responses that
  no preference pair mentions. One-hot features (k = M·b) give back the tabular family.

A ``Policy`` is a family plus an optional fixed offset (``base_logits``); its parameters start at
``theta0``, so π_θ0 is the reference policy π_ref.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor

from treemdp.tree import Tree

__all__ = [
    "Family",
    "LogLinear",
    "Policy",
    "Tabular",
    "bottom_up_logsumexp",
    "check_logits",
    "conditional_logprobs",
    "gaussian_features",
    "logits_from_response_logprobs",
    "node_logprobs",
    "one_hot_features",
    "response_logprobs",
    "response_paths",
    "subtree_log_mass",
]


def check_logits(tree: Tree, logits: Tensor, name: str = "logits") -> None:
    """ValueError unless ``logits`` has shape (R, M, b) for ``tree`` and holds no NaN or +inf."""
    shape = (tree.n_internal, tree.branching)
    if logits.dim() != 3 or tuple(logits.shape[1:]) != shape:
        raise ValueError(
            f"{name} must have shape (R, {shape[0]}, {shape[1]}); got {tuple(logits.shape)}"
        )
    if bool(torch.isnan(logits).any()) or bool(torch.isposinf(logits).any()):
        raise ValueError(f"{name} must not contain NaN or +inf")


def conditional_logprobs(tree: Tree, logits: Tensor) -> Tensor:
    """log π(a|s) for every internal node s and action a; −inf where the action has no child.

    Args:
        tree: the tree.
        logits: unnormalised logits. Shape (R, M, b).

    Returns:
        Log-conditionals, normalised over each node's existing children. Shape (R, M, b).
    """
    if not tree.is_complete:
        logits = logits.masked_fill(~tree.valid, float("-inf"))
    return torch.log_softmax(logits, dim=-1)


def _is_full(tree: Tree) -> bool:
    """Every internal node has all b children and every leaf lies on the last level."""
    return tree.is_complete and tree.level_offsets[-2] == tree.n_nodes - tree.n_responses


def node_logprobs(tree: Tree, cond: Tensor) -> Tensor:
    """log P(reach node) for every node: the sum of log-conditionals along its path.

    Args:
        tree: the tree.
        cond: log π(a|s) from ``conditional_logprobs``. Shape (R, M, b).

    Returns:
        Log-probabilities of reaching each node from its root (0 at roots). Shape (R, N).
    """
    flat = cond.reshape(cond.shape[0], -1)
    R = flat.shape[0]
    levels = [flat.new_zeros(R, tree.level_offsets[1])]
    if _is_full(tree):
        # Full b-ary forest: internal nodes are 0 … M−1 in level order, so the children of level
        # d−1 are level d in (parent, action) order and node i's edge is i − n_prompts. Each level
        # is a broadcast add of contiguous slices: the same additions as the gather below, with
        # no index tensors and a backward without scatter.
        b, n_roots = tree.branching, tree.level_offsets[1]
        for d in range(1, tree.max_depth + 1):
            lo, hi = tree.level_offsets[d] - n_roots, tree.level_offsets[d + 1] - n_roots
            step = flat[:, lo:hi].view(R, -1, b) + levels[-1].unsqueeze(-1)
            levels.append(step.reshape(R, -1))
        return torch.cat(levels, dim=1)
    for _, _, parent_pos, edge in tree.levels:
        levels.append(levels[-1][:, parent_pos] + flat[:, edge])
    return torch.cat(levels, dim=1)


def response_paths(tree: Tree, responses: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """The (internal node, action) steps of the root-to-leaf path of each given response.

    Args:
        tree: the tree.
        responses: response (leaf) indices in [0, L). Shape (...,).

    Returns:
        ``rows`` (internal-node index of each step, 0 where padded), ``actions`` (0 where
        padded) and ``mask`` (True on real steps; responses shorter than the deepest leaf are
        padded at the end). Shapes (..., D), D = ``tree.max_depth``; steps run root to leaf.
    """
    node = tree.leaves[responses]
    rows, actions = [], []
    for _ in range(tree.max_depth):  # walk up: one whole-tensor step per level
        parent = tree.parent[node]
        rows.append(tree.internal_index[parent.clamp(min=0)].clamp(min=0))
        actions.append(tree.action[node].clamp(min=0))
        node = torch.where(parent >= 0, parent, node)
    rows_t, actions_t = torch.stack(rows, -1), torch.stack(actions, -1)
    length = tree.depth[tree.leaves[responses]].unsqueeze(-1)
    # Step t of the upward walk is step length − 1 − t of the root-to-leaf path.
    src = (length - 1 - torch.arange(tree.max_depth)).clamp(min=0)
    mask = torch.arange(tree.max_depth) < length
    rows_t = torch.where(mask, rows_t.gather(-1, src), 0)
    actions_t = torch.where(mask, actions_t.gather(-1, src), 0)
    return rows_t, actions_t, mask


def response_logprobs(tree: Tree, logits: Tensor) -> Tensor:
    """log π(y|x) of every response y (leaf) under the policy with these logits.

    Args:
        tree: the tree.
        logits: Shape (R, M, b).

    Returns:
        Log-probabilities of the leaves, in ``tree.leaves`` order; they sum to 1 (in probability)
        over each prompt's leaves. Shape (R, L).
    """
    nodes = node_logprobs(tree, conditional_logprobs(tree, logits))
    if tree.level_offsets[-2] == tree.n_nodes - tree.n_responses:  # all leaves on the last level
        return nodes[:, tree.level_offsets[-2] :]
    return nodes[:, tree.leaves]


def bottom_up_logsumexp(
    tree: Tree, leaf_values: Tensor, edge_weights: Tensor | None = None
) -> Tensor:
    """w(leaf) = leaf value; w(s) = log Σ_a exp(e(s, a) + w(s·a)) for every internal node s,
    level by level from the deepest (missing children contribute nothing).

    With e = 0 this is the log subtree mass; with e = log π_ref(a|s) and leaf values r/β it is the
    soft value V/β of the KL-regularised optimum (``treemdp.theory.soft_values``).

    Args:
        tree: the tree.
        leaf_values: w at the leaves. Shape (R, L).
        edge_weights: e per (internal node, action), or None for 0. Shape (R, M, b).

    Returns:
        w at every node. Shape (R, N).
    """
    R = leaf_values.shape[0]
    w = leaf_values.new_full((R, tree.n_nodes), float("-inf"))
    w[:, tree.leaves] = leaf_values
    children = tree.children.clamp(min=0)
    for d in range(tree.max_depth - 1, -1, -1):
        lo, hi = tree.level_offsets[d], tree.level_offsets[d + 1]
        idx = tree.internal_index[lo:hi]
        rows = idx[idx >= 0]
        if rows.numel() == 0:
            continue
        terms = w[:, children[rows]]
        if edge_weights is not None:
            terms = terms + edge_weights[:, rows]
        terms = terms.masked_fill(~tree.valid[rows], float("-inf"))
        w[:, tree.internal[rows]] = torch.logsumexp(terms, dim=-1)
    return w


def subtree_log_mass(tree: Tree, response_logp: Tensor) -> Tensor:
    """log of the total probability of the responses below each node (bottom-up, level by level).

    Args:
        tree: the tree.
        response_logp: log-probabilities of the leaves (any non-negative measure). Shape (R, L).

    Returns:
        Log subtree masses. Shape (R, N).
    """
    return bottom_up_logsumexp(tree, response_logp)


def logits_from_response_logprobs(tree: Tree, response_logp: Tensor) -> Tensor:
    """The exact tabular logits (normalised log-conditionals) of a distribution over responses.

    π(a|s) = mass(s·a) / mass(s). Where a node carries no mass its conditional is undefined and
    is set to uniform over its children, so that ``response_logprobs`` round-trips exactly.

    Args:
        tree: the tree.
        response_logp: log π(y|x) per leaf, normalised per prompt. Shape (R, L).

    Returns:
        Log-conditionals, −inf for actions without a child or without mass. Shape (R, M, b).
    """
    mass = subtree_log_mass(tree, response_logp)
    kids = mass[:, tree.children.clamp(min=0)].masked_fill(~tree.valid, float("-inf"))
    own = mass[:, tree.internal].unsqueeze(-1)
    cond = kids - own
    empty = torch.isinf(own) & (own < 0)  # zero-mass node: uniform over its children
    uniform = torch.zeros_like(cond).masked_fill(~tree.valid, float("-inf"))
    uniform = uniform - torch.log(tree.valid.sum(-1, keepdim=True).to(cond.dtype))
    return torch.where(empty, uniform, cond)


# ---------------------------------------------------------------------------- families


class Family(Protocol):
    """A parameterisation θ ↦ logits with a leading run axis."""

    def param_shape(self) -> tuple[int, ...]:
        """Shape of one run's parameters."""
        ...

    def logits(self, theta: Tensor) -> Tensor:
        """Logits of shape (R, M, b) from parameters of shape (R, *param_shape)."""
        ...


def _rows_of(table: Tensor, rows: Tensor) -> Tensor:
    """``table[r, rows[r, ...]]`` for a per-run table. Shapes (R, M, ...) and (R, ...)."""
    flat = rows.reshape(rows.shape[0], -1)
    out = table[torch.arange(table.shape[0]).unsqueeze(1), flat]
    return out.reshape(*rows.shape, *table.shape[2:])


def _bind(family: Family, rows: Tensor) -> Callable[[Tensor], Tensor]:
    """θ ↦ logits of internal nodes ``rows`` (R, ...) only, shape (R, ..., b).

    Families may define ``bind(rows)`` that gathers what does not depend on θ once (features
    of the rows), so that each call costs O(rows); otherwise every logit is computed and the
    rows picked out (same values, O(M) per call).
    """
    bind = getattr(family, "bind", None)
    if bind is not None:
        return bind(rows)
    return lambda theta: _rows_of(family.logits(theta), rows)


@dataclass(frozen=True, eq=False)
class Tabular:
    """One free logit per (internal node, action)."""

    tree: Tree

    def param_shape(self) -> tuple[int, ...]:
        return (self.tree.n_internal, self.tree.branching)

    def logits(self, theta: Tensor) -> Tensor:
        """Shape (R, M, b) → (R, M, b): the parameters are the logits."""
        return theta

    def bind(self, rows: Tensor) -> Callable[[Tensor], Tensor]:
        """θ ↦ logits of internal nodes ``rows``: θ (R, M, b), rows (R, ...) → (R, ..., b)."""
        return lambda theta: _rows_of(theta, rows)


@dataclass(frozen=True, eq=False)
class LogLinear:
    """logits(s, a) = φ(s, a)·θ.

    Attributes:
        features: φ, one table per run or one shared. Shape (R, M, b, k) or (M, b, k).
    """

    features: Tensor

    def param_shape(self) -> tuple[int, ...]:
        return (self.features.shape[-1],)

    def logits(self, theta: Tensor) -> Tensor:
        """Shape (R, k) → (R, M, b)."""
        if self.features.dim() == 3:
            return torch.einsum("mak,rk->rma", self.features, theta)
        return torch.einsum("rmak,rk->rma", self.features, theta)

    def bind(self, rows: Tensor) -> Callable[[Tensor], Tensor]:
        """θ ↦ logits of internal nodes ``rows``: θ (R, k), rows (R, ...) → (R, ..., b).

        The rows' features are gathered once, shape (R, ..., b, k); each call is one product.
        """
        shared = self.features.dim() == 3
        phi = self.features[rows] if shared else _rows_of(self.features, rows)

        def logits(theta: Tensor) -> Tensor:
            shape = (theta.shape[0], *([1] * (rows.dim() - 1)), 1, theta.shape[1])
            return (phi * theta.view(shape)).sum(-1)

        return logits


def gaussian_features(
    tree: Tree, k: int, generator: torch.Generator, *, dtype: torch.dtype = torch.float64
) -> Tensor:
    """Standard-normal features φ(s, a) ∈ R^k, drawn from ``generator``. Shape (M, b, k)."""
    if k < 1:
        raise ValueError(f"features (k) must be >= 1; got {k}")
    return torch.randn(tree.n_internal, tree.branching, k, generator=generator, dtype=dtype)


def one_hot_features(tree: Tree, *, dtype: torch.dtype = torch.float64) -> Tensor:
    """One indicator per (node, action): a log-linear family equal to the tabular one.

    Shape (M, b, M·b).
    """
    m, b = tree.n_internal, tree.branching
    return torch.eye(m * b, dtype=dtype).view(m, b, m * b)


@dataclass(frozen=True, eq=False)
class Policy:
    """A family on a tree with an optional fixed offset; π_θ0 is the reference policy.

    Attributes:
        tree: the tree.
        family: θ ↦ logits.
        theta0: initial parameters (the reference's). Shape (R, *family.param_shape()).
        base_logits: fixed logits added to the family's, or None. Shape (R, M, b).
    """

    tree: Tree
    family: Family
    theta0: Tensor
    base_logits: Tensor | None = None

    @property
    def n_runs(self) -> int:
        """R, the number of runs this policy batch holds."""
        return self.theta0.shape[0]

    def logits(self, theta: Tensor) -> Tensor:
        """Logits at parameters θ. Shape (R, *param_shape) → (R, M, b)."""
        out = self.family.logits(theta)
        return out if self.base_logits is None else out + self.base_logits

    def response_logprobs(self, theta: Tensor) -> Tensor:
        """log π_θ(y|x) for every response. Shape (R, *param_shape) → (R, L)."""
        return response_logprobs(self.tree, self.logits(theta))

    def bind(self, responses: Tensor) -> Callable[[Tensor], Tensor]:
        """θ ↦ log π_θ(y|x) of the given responses only, computed from their paths.

        Everything that does not depend on θ (paths, their features and offsets, masks) is
        gathered once here; each call then costs O(S·D·b·k) per run, whatever the tree's size.
        Equal (to rounding) to ``response_logprobs(theta).gather(1, responses)``.

        Args:
            responses: response indices per run. Shape (R, S).

        Returns:
            A function from θ of shape (R, *param_shape) to log-probabilities of shape (R, S).
        """
        tree = self.tree
        rows, actions, mask = response_paths(tree, responses)
        logits_at = _bind(self.family, rows)
        base = None if self.base_logits is None else _rows_of(self.base_logits, rows)
        invalid = None if tree.is_complete else ~tree.valid[rows]
        taken = actions.unsqueeze(-1)

        def logprobs(theta: Tensor) -> Tensor:
            logits = logits_at(theta)
            if base is not None:
                logits = logits + base
            if invalid is not None:
                logits = logits.masked_fill(invalid, float("-inf"))
            cond = torch.log_softmax(logits, dim=-1).gather(-1, taken).squeeze(-1)
            return torch.where(mask, cond, 0.0).sum(-1)

        return logprobs
