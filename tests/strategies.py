"""Hypothesis strategies shared by the tests: trees (complete, irregular, forests), logits, and
scaling-law curves. Profiles (dev, ci, thorough) are registered in conftest.py."""

from __future__ import annotations

import math

import numpy as np
import torch
from hypothesis import strategies as st

from treemdp.scaling import FORMS
from treemdp.tree import Tree


@st.composite
def action_sequences(draw, branching: int = 3, max_depth: int = 4, max_leaves: int = 12):
    """A prefix-free set of action sequences (the responses of an irregular tree)."""
    seqs: set[tuple[int, ...]] = set()
    frontier = [()]
    while frontier and len(seqs) < max_leaves:
        node = frontier.pop(draw(st.integers(0, len(frontier) - 1)))
        expand = len(node) == 0 or (len(node) < max_depth and draw(st.booleans()))
        if not expand:
            seqs.add(node)
            continue
        actions = draw(
            st.lists(st.integers(0, branching - 1), min_size=1, max_size=branching, unique=True)
        )
        frontier.extend((*node, a) for a in sorted(actions))
    seqs.update(s for s in frontier if s)  # whatever is left becomes a leaf
    return sorted(seqs)


@st.composite
def single_trees(draw, max_depth: int = 4):
    """A complete tree (b ∈ {2, 3}, D ∈ [1, 3]) or an irregular one."""
    if draw(st.booleans()):
        return Tree.complete(draw(st.integers(2, 3)), draw(st.integers(1, 3)))
    b = draw(st.integers(2, 3))
    return Tree.from_sequences(
        draw(action_sequences(branching=b, max_depth=max_depth)), branching=b
    )


@st.composite
def trees(draw):
    """A single tree or a forest of up to three trees."""
    parts = draw(st.lists(single_trees(), min_size=1, max_size=3))
    return parts[0] if len(parts) == 1 else Tree.forest(parts)


@st.composite
def trees_with_pairs(draw, min_responses_per_prompt: int = 2):
    """A tree whose every prompt has >= 2 responses."""
    tree = draw(trees())
    counts = torch.bincount(tree.leaf_prompt, minlength=tree.n_prompts)
    if bool((counts < min_responses_per_prompt).any()):
        tree = Tree.complete(2, 2)
    return tree


def logits(tree: Tree, n_runs: int, seed: int, scale: float = 2.0) -> torch.Tensor:
    """Seeded Gaussian logits of shape (R, M, b)."""
    gen = torch.Generator().manual_seed(seed)
    return scale * torch.randn(
        n_runs, tree.n_internal, tree.branching, generator=gen, dtype=torch.float64
    )


# ------------------------------------------------------------------ scaling-law fits

scaling_forms = st.sampled_from(sorted(FORMS))

non_finite = st.sampled_from([math.nan, math.inf, -math.inf])


@st.composite
def d_grids(draw: st.DrawFn, *, min_size: int = 5, max_size: int = 25) -> np.ndarray:
    """Distinct d = √KL values on a 0.1 lattice in [0, 10], shuffled: shape (N,), N ≥ min_size.

    The lattice keeps points at least 0.1 apart, so every form's design matrix is well conditioned
    and round-off cannot mask a real difference between two fits.
    """
    ticks = draw(st.lists(st.integers(0, 100), min_size=min_size, max_size=max_size, unique=True))
    return np.asarray(ticks, dtype=np.float64) / 10.0


@st.composite
def curve_points(draw: st.DrawFn, *, min_size: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """(d, y): a d grid and arbitrary bounded y of the same shape (N,)."""
    d = draw(d_grids(min_size=min_size))
    y = draw(
        st.lists(
            st.floats(-10, 10, allow_nan=False, allow_infinity=False),
            min_size=d.size,
            max_size=d.size,
        )
    )
    return d, np.asarray(y, dtype=np.float64)


# ------------------------------------------------------------------ networks and rewards


@st.composite
def mlp_shapes(draw: st.DrawFn) -> dict[str, int]:
    """Small network sizes: width in [1, 6], hidden layers in [1, 3], input dim in [1, 4]."""
    return {
        "width": draw(st.integers(1, 6)),
        "layers": draw(st.integers(1, 3)),
        "input_dim": draw(st.integers(1, 4)),
    }


stop_trees = st.builds(lambda b, d: Tree.with_stop(b, d), st.integers(2, 3), st.integers(2, 4))
"""Trees whose responses differ in length (action 0 ends a response)."""

explained_shares = st.floats(0.0, 1.0, allow_nan=False)


# ------------------------------------------------------------------ rewards and responses


@st.composite
def tied_rewards(draw, n: int, *, n_runs: int = 2) -> torch.Tensor:
    """Gold rewards of shape (n_runs, n) drawn from a few values, so that many responses tie."""
    levels = draw(st.lists(st.integers(-3, 3), min_size=n * n_runs, max_size=n * n_runs))
    return torch.tensor(levels, dtype=torch.float64).view(n_runs, n) / 2


@st.composite
def response_indices(draw, tree: Tree, *, n_runs: int = 2, max_size: int = 6) -> torch.Tensor:
    """Response (leaf) indices of shape (n_runs, S), repeats allowed."""
    size = draw(st.integers(1, max_size))
    values = draw(
        st.lists(
            st.integers(0, tree.n_responses - 1), min_size=size * n_runs, max_size=size * n_runs
        )
    )
    return torch.tensor(values).view(n_runs, size)
