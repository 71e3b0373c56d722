"""Naive reference implementations (Python loops over paths and pairs) used as test oracles."""

from __future__ import annotations

import math

import torch

from treemdp.tree import Tree


def path_logprobs(tree: Tree, logits: torch.Tensor) -> torch.Tensor:
    """log π(y) by walking each leaf's path and normalising over existing children at each node.

    Shape (R, M, b) → (R, L).
    """
    R = logits.shape[0]
    out = torch.empty(R, tree.n_responses, dtype=logits.dtype)
    for r in range(R):
        for y in range(tree.n_responses):
            node, total = int(tree.leaves[y]), 0.0
            while int(tree.parent[node]) >= 0:
                parent, action = int(tree.parent[node]), int(tree.action[node])
                row = int(tree.internal_index[parent])
                kids = [a for a in range(tree.branching) if int(tree.children[row, a]) >= 0]
                z = [float(logits[r, row, a]) for a in kids]
                top = max(z)
                log_norm = top + math.log(sum(math.exp(v - top) for v in z))
                total += float(logits[r, row, action]) - log_norm
                node = parent
            out[r, y] = total
    return out


def pairwise_win_rate(tree: Tree, p: torch.Tensor, q: torch.Tensor, rewards: torch.Tensor) -> float:
    """Σ_x (1/n) Σ_{y, y'} p(y|x) q(y'|x) ([r(y) > r(y')] + ½ [r(y) = r(y')]), by a double loop."""
    total = 0.0
    L = tree.n_responses
    for y in range(L):
        for y2 in range(L):
            if int(tree.leaf_prompt[y]) != int(tree.leaf_prompt[y2]):
                continue
            win = 1.0 if rewards[y] > rewards[y2] else 0.5 if rewards[y] == rewards[y2] else 0.0
            total += float(p[y]) * float(q[y2]) * win
    return total / tree.n_prompts
