"""Tree-structured MDPs: node arrays in level order, leaves are the responses.

A state is a node; action a at node s moves deterministically to child s·a; a leaf moves to the
absorbing terminal state s∞ whatever the action (Rafailov et al. 2024, Figure "Tree-MDP"). A
root-to-leaf path is a response; a tree with several roots is a forest, one root per prompt.

Nodes are numbered in level order: depth is non-decreasing, and within a level nodes follow
their parents' order, then the action. Every per-node computation (log-probabilities, subtree
masses) is therefore a short loop over levels of whole-level tensor operations.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import cached_property, lru_cache

import networkx as nx
import torch
from torch import Tensor

__all__ = ["DEFAULT_MAX_BYTES", "Tree", "complete_tree", "tree_bytes"]

DEFAULT_MAX_BYTES = 4 * 2**30
"""Default memory budget for a tree's node arrays (4 GiB)."""

TERMINAL = "s∞"


def tree_bytes(n_nodes: int, branching: int) -> int:
    """Bytes the node arrays of a tree with ``n_nodes`` nodes take (int64 throughout).

    Per node: parent, action, depth, internal/leaf index, prompt, edge (7 int64) and one row of
    the (internal × branching) children table (upper bound: every node internal).
    """
    return 8 * n_nodes * (7 + branching)


def _check_budget(n_nodes: int, branching: int, max_bytes: int, what: str) -> None:
    need = tree_bytes(n_nodes, branching)
    if need > max_bytes:
        raise ValueError(
            f"{what} has {n_nodes:,} nodes and needs {need / 2**30:.2f} GiB for its node arrays, "
            f"over the budget of {max_bytes / 2**30:.2f} GiB (the max_bytes argument); use a "
            "smaller tree"
        )


def _check_node_arrays(parent: Tensor, action: Tensor, depth: Tensor, b: int) -> None:
    """Refuse node arrays that are not a level-ordered forest with actions in [0, b)."""
    n = parent.numel()
    if b < 2:
        raise ValueError(f"branching must be >= 2; got {b}")
    if n == 0 or not (parent.shape == action.shape == depth.shape == (n,)):
        raise ValueError("parent, action and depth must be non-empty 1-D arrays of one length")
    ids = torch.arange(n)
    is_root = parent < 0
    if bool((is_root != (depth == 0)).any()) or bool((is_root != (action < 0)).any()):
        raise ValueError("roots (parent -1) must be exactly the nodes of depth 0 and action -1")
    p = parent.clamp(min=0)
    nonroot = ~is_root
    if bool((parent[nonroot] >= ids[nonroot]).any()):
        raise ValueError("nodes must be in level order: every parent comes before its child")
    if bool((depth[nonroot] != depth[p[nonroot]] + 1).any()):
        raise ValueError("depth must be the parent's depth + 1")
    if bool((depth[1:] < depth[:-1]).any()):
        raise ValueError("nodes must be in level order: depth must be non-decreasing")
    if bool(((action[nonroot] < 0) | (action[nonroot] >= b)).any()):
        raise ValueError(f"actions must lie in [0, {b - 1}] for branching={b}")


def _positions(ids: Tensor, n: int) -> Tensor:
    """Position of each of n nodes within ``ids``, -1 for nodes not in it. Shape (n,)."""
    index = torch.full((n,), -1, dtype=torch.long)
    index[ids] = torch.arange(ids.numel())
    return index


def _children_table(edge: Tensor, nonroot: Tensor, n_internal: int, b: int) -> Tensor:
    """Child node per flat (internal node, action) slot, -1 for none. Shape (M·b,).

    Raises ValueError when two children share a slot (a parent with a repeated action).
    """
    counts = torch.bincount(edge[nonroot], minlength=n_internal * b)
    if bool((counts > 1).any()):
        raise ValueError("two children share a (parent, action): actions must be distinct")
    children = torch.full((n_internal * b,), -1, dtype=torch.long)
    children[edge[nonroot]] = torch.arange(edge.numel())[nonroot]
    return children


def _level_offsets(depth: Tensor) -> tuple[int, ...]:
    """Nodes of depth d are ``offsets[d]:offsets[d + 1]`` (depth is non-decreasing)."""
    max_depth = int(depth[-1])
    return (0, *torch.searchsorted(depth, torch.arange(1, max_depth + 2)).tolist())


def _node_prompts(parent: Tensor, roots: Tensor, offsets: tuple[int, ...]) -> Tensor:
    """Prompt (root) index of every node. Shape (N,)."""
    node_prompt = torch.empty(parent.numel(), dtype=torch.long)
    node_prompt[roots] = torch.arange(roots.numel())
    for d in range(1, len(offsets) - 1):  # prompts flow down one level at a time
        lo, hi = offsets[d], offsets[d + 1]
        node_prompt[lo:hi] = node_prompt[parent[lo:hi]]
    return node_prompt


def _derived_arrays(parent: Tensor, action: Tensor, depth: Tensor, b: int) -> dict[str, object]:
    """The ``Tree``'s derived attributes from checked node arrays, by attribute name."""
    n = parent.numel()
    ids = torch.arange(n)
    nonroot = parent >= 0
    p = parent.clamp(min=0)
    has_child = torch.zeros(n, dtype=torch.bool)
    has_child[p[nonroot]] = True
    internal, leaves, roots = ids[has_child], ids[~has_child], ids[~nonroot]
    internal_index = _positions(internal, n)
    edge = torch.full((n,), -1, dtype=torch.long)
    edge[nonroot] = internal_index[p[nonroot]] * b + action[nonroot]
    children = _children_table(edge, nonroot, internal.numel(), b)
    offsets = _level_offsets(depth)
    node_prompt = _node_prompts(parent, roots, offsets)
    return {
        "children": children.view(-1, b),
        "internal": internal,
        "internal_index": internal_index,
        "leaves": leaves,
        "leaf_index": _positions(leaves, n),
        "roots": roots,
        "node_prompt": node_prompt,
        "leaf_prompt": node_prompt[leaves],
        "edge": edge,
        "level_offsets": offsets,
        "valid": children.view(-1, b) >= 0,
        "is_complete": bool((children >= 0).all()),
    }


@dataclass(frozen=True, eq=False)
class Tree:
    """A forest of action trees in level order.

    Attributes:
        parent: parent node of each node, -1 for roots. Shape (N,), int64.
        action: action that leads from the parent to the node, -1 for roots. Shape (N,), int64.
        depth: depth of each node, 0 for roots. Shape (N,), int64.
        branching: number of actions b; actions are 0 … b−1.

    Derived attributes (computed once at construction):
        children: child reached by each action from each internal node, -1 if that action has
            no child. Shape (M, b), M = number of internal nodes.
        internal: node ids of internal nodes, in level order. Shape (M,).
        leaves: node ids of leaves (= responses), in level order. Shape (L,).
        roots: node ids of roots (= prompts). Shape (n_prompts,).
        node_prompt: prompt index of each node. Shape (N,).
        leaf_prompt: prompt index of each response. Shape (L,).
        edge: flat index ``internal_index[parent] * b + action`` of each non-root node into an
            (M, b) table, -1 for roots. Shape (N,).
        level_offsets: nodes of depth d are ``level_offsets[d]:level_offsets[d + 1]``.
        valid: whether each (internal node, action) has a child. Shape (M, b), bool.
        is_complete: True when every internal node has all b children.
    """

    parent: Tensor
    action: Tensor
    depth: Tensor
    branching: int
    children: Tensor = field(init=False)
    internal: Tensor = field(init=False)
    internal_index: Tensor = field(init=False)
    leaves: Tensor = field(init=False)
    leaf_index: Tensor = field(init=False)
    roots: Tensor = field(init=False)
    node_prompt: Tensor = field(init=False)
    leaf_prompt: Tensor = field(init=False)
    edge: Tensor = field(init=False)
    level_offsets: tuple[int, ...] = field(init=False)
    valid: Tensor = field(init=False)
    is_complete: bool = field(init=False)

    def __post_init__(self) -> None:
        _check_node_arrays(self.parent, self.action, self.depth, self.branching)
        derived = _derived_arrays(self.parent, self.action, self.depth, self.branching)
        for name, value in derived.items():
            object.__setattr__(self, name, value)

    # ------------------------------------------------------------------ sizes
    @property
    def n_nodes(self) -> int:
        """N, the number of nodes."""
        return self.parent.numel()

    @property
    def n_internal(self) -> int:
        """M, the number of internal nodes (states where the policy acts)."""
        return self.internal.numel()

    @property
    def n_responses(self) -> int:
        """L, the number of leaves (responses)."""
        return self.leaves.numel()

    @property
    def n_prompts(self) -> int:
        """The number of roots (prompts)."""
        return self.roots.numel()

    @property
    def max_depth(self) -> int:
        """Depth of the deepest leaf."""
        return len(self.level_offsets) - 2

    @property
    def response_length(self) -> Tensor:
        """Number of actions in each response (the leaf's depth). Shape (L,), int64."""
        return self.depth[self.leaves]

    @cached_property
    def levels(self) -> tuple[tuple[int, int, Tensor, Tensor], ...]:
        """Per level d >= 1: (lo, hi, parent position within level d−1, edge index).

        ``lo:hi`` are the node ids of depth d; the parent positions index the previous level's
        slice; edge indexes a flattened (M·b) per-(node, action) table. Shapes (hi − lo,).
        """
        out = []
        for d in range(1, self.max_depth + 1):
            lo, hi = self.level_offsets[d], self.level_offsets[d + 1]
            out.append((lo, hi, self.parent[lo:hi] - self.level_offsets[d - 1], self.edge[lo:hi]))
        return tuple(out)

    def response_actions(self, response: int) -> tuple[int, ...]:
        """The action sequence of response ``response`` (a leaf index in [0, L))."""
        if not 0 <= response < self.n_responses:
            raise ValueError(f"response must lie in [0, {self.n_responses - 1}]; got {response}")
        node, path = int(self.leaves[response]), []
        while int(self.parent[node]) >= 0:
            path.append(int(self.action[node]))
            node = int(self.parent[node])
        return tuple(reversed(path))

    def __repr__(self) -> str:
        return (
            f"Tree(prompts={self.n_prompts}, nodes={self.n_nodes}, responses={self.n_responses}, "
            f"branching={self.branching}, max_depth={self.max_depth})"
        )

    # ------------------------------------------------------------ constructors
    @classmethod
    def complete(
        cls,
        branching: int = 3,
        depth: int = 3,
        *,
        n_prompts: int = 1,
        max_bytes: int = DEFAULT_MAX_BYTES,
    ) -> Tree:
        """The complete b-ary tree of depth D (b^D responses per prompt), n_prompts roots.

        Raises ValueError (before allocating) when the node arrays would exceed ``max_bytes``.
        """
        if branching < 2:
            raise ValueError(f"branching must be >= 2; got {branching}")
        if depth < 1:
            raise ValueError(f"depth must be >= 1; got {depth}")
        if n_prompts < 1:
            raise ValueError(f"n_prompts must be >= 1; got {n_prompts}")
        n_nodes = n_prompts * (branching ** (depth + 1) - 1) // (branching - 1)
        _check_budget(
            n_nodes, branching, max_bytes, f"a complete tree (branching={branching}, depth={depth})"
        )
        parents, actions, depths = (
            [torch.full((n_prompts,), -1)],
            [torch.full((n_prompts,), -1)],
            [],
        )
        depths.append(torch.zeros(n_prompts, dtype=torch.long))
        start, width = 0, n_prompts
        for d in range(1, depth + 1):
            i = torch.arange(width * branching)
            parents.append(start + i // branching)
            actions.append(i % branching)
            depths.append(torch.full((width * branching,), d))
            start, width = start + width, width * branching
        return cls(torch.cat(parents), torch.cat(actions), torch.cat(depths), branching)

    @classmethod
    def from_sequences(
        cls, sequences: Iterable[Sequence[int]], *, branching: int | None = None
    ) -> Tree:
        """The tree whose responses are exactly the given action sequences (one prompt).

        Sequences may have different lengths (responses of different lengths) but none may be a
        prefix of another, since a response ends at a leaf. ``branching`` defaults to the largest
        action + 1 (at least 2).
        """
        seqs = [tuple(int(a) for a in s) for s in sequences]
        if not seqs:
            raise ValueError("sequences must hold at least one action sequence")
        if any(len(s) == 0 for s in seqs):
            raise ValueError("sequences must be non-empty: a response takes at least one action")
        if len(set(seqs)) != len(seqs):
            raise ValueError("sequences must be distinct")
        if any(a < 0 for s in seqs for a in s):
            raise ValueError("actions must be >= 0")
        b = max(2, max(a for s in seqs for a in s) + 1) if branching is None else branching
        if any(a >= b for s in seqs for a in s):
            raise ValueError(f"actions must lie in [0, {b - 1}] for branching={b}")
        prefixes = {s[:k] for s in seqs for k in range(len(s))}
        clash = [s for s in seqs if s in prefixes]
        if clash:
            raise ValueError(f"sequence {clash[0]} is a prefix of another; leaves must end paths")
        # Level order: sort all prefixes by (length, lexicographic); parents precede children.
        nodes = sorted(prefixes | set(seqs), key=lambda s: (len(s), s))
        index = {s: i for i, s in enumerate(nodes)}
        parent = torch.tensor([index[s[:-1]] if s else -1 for s in nodes])
        action = torch.tensor([s[-1] if s else -1 for s in nodes])
        depth = torch.tensor([len(s) for s in nodes])
        return cls(parent, action, depth, b)

    @classmethod
    def with_stop(
        cls,
        branching: int = 3,
        max_length: int = 5,
        *,
        n_prompts: int = 1,
        max_bytes: int = DEFAULT_MAX_BYTES,
    ) -> Tree:
        """A tree of responses with lengths 1 … max_length: action 0 is an end-of-sequence token.

        At every node of depth < max_length − 1, action 0 ends the response (a leaf) and actions
        1 … b−1 continue it; at depth max_length − 1 every action ends it. So a policy chooses the
        length of its response as a language model does, and responses of every length exist:
        (b−1)^t responses of length t + 1 that stop early and b·(b−1)^(D−1) of full length D.

        Raises ValueError for branching < 2, max_length < 1 or n_prompts < 1, and (before
        building anything) when the node arrays would exceed ``max_bytes``.
        """
        if branching < 2:
            raise ValueError(f"branching must be >= 2; got {branching}")
        if max_length < 1:
            raise ValueError(f"max_length must be >= 1; got {max_length}")
        if n_prompts < 1:
            raise ValueError(f"n_prompts must be >= 1; got {n_prompts}")
        c = branching - 1  # (c^D − 1)/(c − 1) internal nodes, one stopping leaf each but the last
        internal = max_length if c == 1 else (c**max_length - 1) // (c - 1)
        leaves = internal + (branching - 1) * c ** (max_length - 1)
        what = f"a tree with stop actions (branching={branching}, max_length={max_length})"
        _check_budget(n_prompts * (internal + leaves), branching, max_bytes, what)
        seqs: list[tuple[int, ...]] = []
        prefixes: list[tuple[int, ...]] = [()]
        for t in range(max_length):
            last = t == max_length - 1
            seqs += [(*p, a) for p in prefixes for a in (range(branching) if last else (0,))]
            prefixes = [(*p, a) for p in prefixes for a in range(1, branching)]
        one = cls.from_sequences(seqs, branching=branching)
        return one if n_prompts == 1 else cls.forest([one] * n_prompts)

    @classmethod
    def forest(cls, trees: Sequence[Tree]) -> Tree:
        """Several trees side by side, one prompt per root, renumbered in level order."""
        if not trees:
            raise ValueError("trees must hold at least one tree")
        b = max(t.branching for t in trees)
        offsets, total = [], 0
        for t in trees:
            offsets.append(total)
            total += t.n_nodes
        parent = torch.cat(
            [
                torch.where(t.parent >= 0, t.parent + o, -1)
                for t, o in zip(trees, offsets, strict=True)
            ]
        )
        action = torch.cat([t.action for t in trees])
        depth = torch.cat([t.depth for t in trees])
        # Stable sort by depth keeps each level's nodes in (tree, parent, action) order.
        order = torch.sort(depth, stable=True).indices
        new_id = torch.empty_like(order)
        new_id[order] = torch.arange(order.numel())
        parent = parent[order]
        parent = torch.where(parent >= 0, new_id[parent.clamp(min=0)], -1)
        return cls(parent, action[order], depth[order], b)

    @classmethod
    def from_networkx(cls, graph: nx.DiGraph, *, branching: int | None = None) -> Tree:
        """A tree or forest from a networkx DiGraph (edges point from parent to child).

        Each edge may carry an integer ``action`` attribute; where none does, a node's children
        get actions 0, 1, … in the order of their sorted labels.
        """
        if not isinstance(graph, nx.DiGraph) or graph.number_of_nodes() == 0:
            raise ValueError("graph must be a non-empty networkx DiGraph")
        if not nx.is_forest(graph.to_undirected(as_view=True)) or any(
            d > 1 for _, d in graph.in_degree()
        ):
            raise ValueError("graph must be a forest: no cycles and at most one parent per node")
        roots = sorted((n for n, d in graph.in_degree() if d == 0), key=str)
        trees = []
        for root in roots:
            seqs: list[tuple[int, ...]] = []
            stack: list[tuple[object, tuple[int, ...]]] = [(root, ())]
            while stack:
                node, path = stack.pop()
                kids = sorted(graph.successors(node), key=str)
                if not kids:
                    seqs.append(path)
                for i, kid in enumerate(kids):
                    stack.append((kid, (*path, int(graph.edges[node, kid].get("action", i)))))
            if seqs == [()]:
                raise ValueError(f"root {root!r} has no children: every prompt needs a response")
            trees.append(cls.from_sequences(seqs, branching=branching))
        return trees[0] if len(trees) == 1 else cls.forest(trees)

    def to_networkx(self, *, terminal: bool = False) -> nx.DiGraph:
        """The tree as a DiGraph on node ids, with ``depth``/``leaf``/``prompt`` node attributes
        and an ``action`` edge attribute; ``terminal=True`` adds the absorbing state s∞ that every
        leaf moves to."""
        g = nx.DiGraph()
        is_leaf = self.leaf_index >= 0
        for i in range(self.n_nodes):
            g.add_node(
                i,
                depth=int(self.depth[i]),
                leaf=bool(is_leaf[i]),
                prompt=int(self.node_prompt[i]),
            )
        for i in range(self.n_nodes):
            if int(self.parent[i]) >= 0:
                g.add_edge(int(self.parent[i]), i, action=int(self.action[i]))
        if terminal:
            g.add_node(TERMINAL, depth=self.max_depth + 1, leaf=False, prompt=-1)
            for leaf in self.leaves.tolist():
                g.add_edge(leaf, TERMINAL, action=None)
        return g


@lru_cache(maxsize=1)
def complete_tree(branching: int, depth: int) -> Tree:
    """``Tree.complete(branching, depth)``, the last one kept: a grid's cells come grouped by
    shape, so each process (the driver, a Ray worker) builds a tree once and holds one at a time."""
    return Tree.complete(branching, depth)
