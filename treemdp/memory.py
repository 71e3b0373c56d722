"""Memory estimates, checked before anything is allocated.

An experiment estimates the bytes its tree and its batch of runs will take (``tree_bytes`` +
runs × ``run_bytes``) and refuses, with the size it would need and the flag that raises the
budget (``--memory-mb``), instead of running until the machine swaps or the kernel kills it.
The estimates are rough upper bounds of the float64 arrays a batch holds at its peak; they are
meant to catch a tree or a network that is orders of magnitude too big, not to be exact.
"""

from __future__ import annotations

import math

from treemdp.tree import Tree, tree_bytes

__all__ = [
    "DEFAULT_MEMORY_MB",
    "check_batch",
    "check_memory",
    "complete_size",
    "complete_tree_for_runs",
    "policy_params",
    "run_bytes",
    "with_stop_size",
]

DEFAULT_MEMORY_MB = 4096
"""The experiments' default ``--memory-mb`` (4 GiB, the tree's default node-array budget)."""


def complete_size(branching: int, depth: int) -> tuple[int, int]:
    """(internal nodes, leaves) of ``Tree.complete(branching, depth)``, without building it."""
    leaves = branching**depth
    return (leaves - 1) // (branching - 1), leaves


def with_stop_size(branching: int, max_length: int) -> tuple[int, int]:
    """(internal nodes, leaves) of ``Tree.with_stop(branching, max_length)``, without building it.

    Depth t < D − 1 holds (b−1)^t internal nodes, each with one stopping leaf; depth D − 1 holds
    (b−1)^(D−1) internal nodes whose b children are all leaves.
    """
    if branching < 2:
        raise ValueError(f"branching must be >= 2; got {branching}")
    if max_length < 1:
        raise ValueError(f"max_length must be >= 1; got {max_length}")
    c = branching - 1
    internal = sum(c**t for t in range(max_length))
    leaves = (internal - c ** (max_length - 1)) + branching * c ** (max_length - 1)
    return internal, leaves


def policy_params(
    policy: str, *, n_internal: int, branching: int, features: int, width: int = 0, layers: int = 1
) -> int:
    """Parameters of one run's policy: tabular (one logit per edge), loglinear (k), mlp."""
    if policy == "tabular":
        return n_internal * branching
    if policy == "loglinear":
        return features
    if policy == "mlp":
        return width * (features + 1) + (layers - 1) * width * (width + 1) + width
    raise ValueError(f"policy must be one of tabular, loglinear, mlp; got {policy!r}")


def run_bytes(
    *,
    n_internal: int,
    n_leaves: int,
    branching: int,
    features: int,
    params: int,
    width: int = 0,
    layers: int = 1,
) -> int:
    """Rough peak bytes one run adds to a batch (float64): its per-edge features, its parameters
    with gradient and two optimiser moments, the hidden activations of an mlp (forward and
    backward), logits and log-probs per edge and node, and the full-distribution temporaries of
    a logged step (a few arrays per leaf)."""
    edges = n_internal * branching
    n_nodes = n_internal + n_leaves
    hidden = 3 * edges * width * layers
    return 8 * (edges * (features + 4) + 4 * params + hidden + 4 * n_nodes + 24 * n_leaves)


def check_memory(need: int, memory_mb: int, what: str) -> None:
    """ValueError when ``need`` bytes exceed ``memory_mb`` MiB: what needs it, how much, and the
    flag to change (``--memory-mb``, or a smaller problem)."""
    if memory_mb < 1:
        raise ValueError(f"memory_mb must be >= 1; got {memory_mb}")
    if need > memory_mb * 2**20:
        mib = math.ceil(need / 2**20)
        raise ValueError(
            f"{what} needs about {mib:,} MiB (estimate), over --memory-mb {memory_mb}; make it "
            f"smaller, or pass --memory-mb {mib} if the machine has that much memory"
        )


def check_batch(
    size: tuple[int, int],
    *,
    branching: int,
    n_runs: int,
    policy: str,
    features: int,
    memory_mb: int,
    what: str,
    width: int = 0,
    layers: int = 1,
) -> int:
    """Check that a tree of ``size`` = (internal nodes, leaves) and ``n_runs`` runs of ``policy``
    fit in ``memory_mb`` MiB (``check_memory``); returns the estimate in bytes."""
    n_internal, n_leaves = size
    params = policy_params(
        policy, n_internal=n_internal, branching=branching, features=features, width=width,
        layers=layers,
    )  # fmt: skip
    per_run = run_bytes(
        n_internal=n_internal, n_leaves=n_leaves, branching=branching, features=features,
        params=params, width=width, layers=layers,
    )  # fmt: skip
    need = tree_bytes(n_internal + n_leaves, branching) + n_runs * per_run
    check_memory(need, memory_mb, what)
    return need


def complete_tree_for_runs(
    branching: int, depth: int, *, n_runs: int, policy: str, features: int, memory_mb: int
) -> Tree:
    """``Tree.complete(branching, depth)`` after checking (``check_batch``) that it and
    ``n_runs`` runs of ``policy`` fit in ``memory_mb`` MiB; the flags are named in the refusal."""
    check_batch(
        complete_size(branching, depth), branching=branching, n_runs=n_runs, policy=policy,
        features=features, memory_mb=memory_mb,
        what=f"--branching {branching} --depth {depth} with {n_runs} runs",
    )  # fmt: skip
    return Tree.complete(branching, depth, max_bytes=memory_mb * 2**20)
