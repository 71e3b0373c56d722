"""A small neural-network policy family: model capacity in the Tree MDP.

``MLP`` scores every (internal node s, action a) edge with one network,

    logit(s, a) = w_out · tanh(W_L … tanh(W_1 z(s, a) + b_1) … + b_L),

where z(s, a) is the edge's input vector (see ``edge_inputs``). Width and number of hidden layers
are the capacity knobs ("model size", as Pythia 1B / 2.8B / 6.9B in Rafailov et al. 2024). With no
hidden layer this would be the log-linear family φ(s, a)·θ; hidden layers let the logits be a
non-linear function of the same inputs, still shared across states, so that a gradient step on
one response moves others.

Inputs (the documented choice): by default the edge's Gaussian features φ(s, a) ∈ R^k, the same
features the log-linear family and the feature-based gold rewards (``treemdp.rewards``) use, so a
bigger network is a strictly richer function of the same representation. ``"prefix"`` instead
encodes the child node's action prefix as a one-hot of (depth, action) pairs along its path (plus
the prompt, in a forest): every node then has its own input, so a wide enough network can express
any policy, like the tabular family. ``"both"`` concatenates the two.

Parameters of R runs are one tensor of shape (R, n_params), unflattened inside ``logits`` into
per-run weight matrices and applied to every edge of the tree at once with ``einsum`` (batched
matrix products): no Python loop over runs or nodes. The output layer starts at zero, so the
initial policy is exactly uniform whatever the (seeded, random) hidden weights are.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

import torch
from torch import Tensor

from treemdp.tree import Tree

__all__ = ["INPUTS", "MLP", "edge_inputs", "prefix_one_hot"]

INPUTS = ("features", "prefix", "both")

Inputs = Literal["features", "prefix", "both"]


def prefix_one_hot(tree: Tree, *, dtype: torch.dtype = torch.float64) -> Tensor:
    """One-hot of (depth, action) pairs along the path to the child of every edge (s, a).

    Entry ``(t − 1)·b + a_t`` is 1 for each step t of the path root → s → s·a, so the child's
    whole action prefix is encoded (edges without a child get the prefix they would have). In a
    forest a one-hot of the prompt is appended, so equal prefixes of different prompts differ.

    Returns:
        Shape (M, b, D·b [+ n_prompts]), D = ``tree.max_depth``.
    """
    b, D, N = tree.branching, tree.max_depth, tree.n_nodes
    nodes = torch.zeros(N, D * b, dtype=dtype)
    for lo, hi, _, _ in tree.levels:  # a node's prefix = its parent's prefix + its own step
        ids = torch.arange(lo, hi)
        nodes[ids] = nodes[tree.parent[lo:hi]]
        nodes[ids, (tree.depth[ids] - 1) * b + tree.action[ids]] = 1.0
    internal = tree.internal
    out = nodes[internal].unsqueeze(1).repeat(1, b, 1)  # (M, b, D·b)
    step = tree.depth[internal].unsqueeze(1) * b + torch.arange(b)  # (M, b): the edge's own step
    out.scatter_(2, step.unsqueeze(-1), 1.0)
    if tree.n_prompts > 1:
        prompt = torch.nn.functional.one_hot(tree.node_prompt[internal], tree.n_prompts)
        out = torch.cat([out, prompt.to(dtype).unsqueeze(1).expand(-1, b, -1)], dim=-1)
    return out


def edge_inputs(tree: Tree, inputs: str, features: Tensor | None) -> Tensor:
    """The network input z(s, a) for every edge.

    Args:
        tree: the tree.
        inputs: "features" (φ), "prefix" (``prefix_one_hot``) or "both" (concatenated).
        features: φ(s, a), needed unless inputs == "prefix". Shape (M, b, k) or (R, M, b, k).

    Returns:
        Shape (M, b, d) or (R, M, b, d) (per-run when ``features`` is per-run).
    """
    if inputs not in INPUTS:
        raise ValueError(f"network_inputs must be one of {', '.join(INPUTS)}; got {inputs!r}")
    if inputs == "prefix":
        return prefix_one_hot(tree)
    if features is None:
        raise ValueError(f"network_inputs={inputs!r} needs features φ(s, a)")
    if inputs == "features":
        return features
    prefix = prefix_one_hot(tree, dtype=features.dtype)
    if features.dim() == 4:
        prefix = prefix.expand(features.shape[0], *prefix.shape)
    return torch.cat([features, prefix], dim=-1)


@dataclass(frozen=True, eq=False)
class MLP:
    """A tanh network from each edge's input z(s, a) to its logit, with a leading run axis.

    Attributes:
        inputs: z, one table shared by all runs or one per run. Shape (M, b, d) or (R, M, b, d).
        width: hidden units per layer (>= 1).
        layers: hidden layers (>= 1).
        init_scale: hidden weights start as N(0, init_scale² / fan_in) (> 0).
        output_scale: output weights start as N(0, output_scale² / width) (>= 0; 0, the
            default, gives an exactly uniform initial policy).
    """

    inputs: Tensor
    width: int = 16
    layers: int = 1
    init_scale: float = 1.0
    output_scale: float = 0.0

    def __post_init__(self) -> None:
        if self.inputs.dim() not in (3, 4) or self.inputs.shape[-1] < 1:
            raise ValueError(
                "inputs must have shape (M, b, d) or (R, M, b, d) with d >= 1; "
                f"got {tuple(self.inputs.shape)}"
            )
        if self.width < 1:
            raise ValueError(f"width must be >= 1; got {self.width}")
        if self.layers < 1:
            raise ValueError(f"layers must be >= 1; got {self.layers}")
        if not self.init_scale > 0:
            raise ValueError(f"init_scale must be > 0; got {self.init_scale}")
        if not self.output_scale >= 0:
            raise ValueError(f"output_scale must be >= 0; got {self.output_scale}")

    # ------------------------------------------------------------------ layout
    @property
    def input_dim(self) -> int:
        """d, the input size."""
        return self.inputs.shape[-1]

    @property
    def shapes(self) -> tuple[tuple[int, int], ...]:
        """(fan_in, fan_out) of each weight matrix: hidden layers, then the output (no bias)."""
        w = self.width
        return ((self.input_dim, w),) + ((w, w),) * (self.layers - 1) + ((w, 1),)

    @property
    def n_params(self) -> int:
        """Parameters per run: weights and biases of the hidden layers, output weights."""
        hidden = sum(i * o + o for i, o in self.shapes[:-1])
        return hidden + self.width

    def param_shape(self) -> tuple[int, ...]:
        return (self.n_params,)

    def unflatten(self, theta: Tensor) -> list[tuple[Tensor, Tensor | None]]:
        """Views of the flat parameters as (weight, bias) per layer.

        Args:
            theta: Shape (R, n_params).

        Returns:
            Per layer: weight of shape (R, fan_in, fan_out) and bias of shape (R, fan_out)
            (None for the output layer).
        """
        if theta.dim() != 2 or theta.shape[1] != self.n_params:
            raise ValueError(
                f"theta must have shape (R, {self.n_params}); got {tuple(theta.shape)}"
            )
        R, out, at = theta.shape[0], [], 0
        for i, (fan_in, fan_out) in enumerate(self.shapes):
            weight = theta[:, at : at + fan_in * fan_out].view(R, fan_in, fan_out)
            at += fan_in * fan_out
            bias = None
            if i < self.layers:
                bias = theta[:, at : at + fan_out]
                at += fan_out
            out.append((weight, bias))
        return out

    # ------------------------------------------------------------------ Family
    def logits(self, theta: Tensor) -> Tensor:
        """Shape (R, n_params) → (R, M, b): the network on every edge of the tree at once."""
        params = self.unflatten(theta)
        z = self.inputs
        if z.dim() == 4 and z.shape[0] != theta.shape[0]:
            raise ValueError(
                f"inputs hold {z.shape[0]} runs but theta holds {theta.shape[0]}; "
                "select the matching runs first"
            )
        weight, bias = params[0]
        if z.dim() == 3:
            h = torch.einsum("mad,rdw->rmaw", z, weight)
        else:
            h = torch.einsum("rmad,rdw->rmaw", z, weight)
        h = torch.tanh(h + bias[:, None, None, :])
        for weight, bias in params[1:-1]:
            h = torch.tanh(torch.einsum("rmav,rvw->rmaw", h, weight) + bias[:, None, None, :])
        return torch.einsum("rmaw,rw->rma", h, params[-1][0].squeeze(-1))

    def init_params(self, n_runs: int, generator: torch.Generator) -> Tensor:
        """Seeded initial parameters: Gaussian hidden weights, zero biases, output weights scaled
        by ``output_scale`` (zero by default: uniform initial policy).

        Returns:
            Shape (n_runs, n_params), dtype of ``inputs``.
        """
        if n_runs < 1:
            raise ValueError(f"n_runs must be >= 1; got {n_runs}")
        parts = []
        for i, (fan_in, fan_out) in enumerate(self.shapes):
            scale = self.init_scale if i < self.layers else self.output_scale
            w = torch.randn(
                n_runs, fan_in * fan_out, generator=generator, dtype=self.inputs.dtype
            ) * (scale / fan_in**0.5)
            parts.append(w)
            if i < self.layers:
                parts.append(torch.zeros(n_runs, fan_out, dtype=self.inputs.dtype))
        return torch.cat(parts, dim=1)

    def select(self, index: Tensor) -> MLP:
        """The family for runs ``index`` (per-run inputs are indexed; shared ones kept)."""
        if self.inputs.dim() == 3:
            return self
        return replace(self, inputs=self.inputs[index])
