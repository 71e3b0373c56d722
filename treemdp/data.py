"""Gold rewards, preference datasets and the comparison graph.

Responses are named by their leaf index y ∈ [0, L) (``tree.leaves[y]`` is the node). A dataset
is a pair of index tensors ``chosen``/``rejected`` of shape (P,) (one run) or (R, P) (a batch of
runs); the pair (chosen[i], rejected[i]) says y_w ≻ y_l for the prompt both responses belong to.
Everything that samples takes a ``torch.Generator``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import networkx as nx
import torch
from torch import Tensor

from treemdp.tree import Tree

__all__ = [
    "Pairs",
    "bradley_terry_pairs",
    "comparison_graph",
    "normal_rewards",
    "pairs_from_nodes",
    "random_pairs",
    "sampled_bt_pairs",
    "validate_pairs",
]


@dataclass(frozen=True)
class Pairs:
    """A preference dataset: chosen[i] ≻ rejected[i].

    Attributes:
        chosen: leaf indices of the preferred responses. Shape (P,) or (R, P), int64.
        rejected: leaf indices of the dispreferred responses. Same shape.
    """

    chosen: Tensor
    rejected: Tensor

    @property
    def n_pairs(self) -> int:
        """P, pairs per run."""
        return self.chosen.shape[-1]

    def responses(self) -> Tensor:
        """Every response the dataset mentions, with multiplicity. Shape (..., 2P)."""
        return torch.cat([self.chosen, self.rejected], dim=-1)


def validate_pairs(tree: Tree, chosen: Tensor, rejected: Tensor) -> Pairs:
    """Check a dataset against a tree and return it as ``Pairs``.

    Raises ValueError when shapes differ, an index lies outside [0, L), a pair compares a
    response with itself, or the two responses of a pair answer different prompts.
    """
    chosen, rejected = torch.as_tensor(chosen), torch.as_tensor(rejected)
    if chosen.shape != rejected.shape or chosen.dim() not in (1, 2) or chosen.shape[-1] == 0:
        raise ValueError(
            "chosen and rejected must have one shape, (P,) or (R, P) with P >= 1; "
            f"got {tuple(chosen.shape)} and {tuple(rejected.shape)}"
        )
    if chosen.is_floating_point() or rejected.is_floating_point():
        raise ValueError("chosen and rejected must be integer response indices")
    L = tree.n_responses
    for name, idx in (("chosen", chosen), ("rejected", rejected)):
        if bool(((idx < 0) | (idx >= L)).any()):
            raise ValueError(f"{name} must hold response indices in [0, {L - 1}]")
    if bool((chosen == rejected).any()):
        raise ValueError("chosen == rejected in some pair: a pair needs two distinct responses")
    if bool((tree.leaf_prompt[chosen] != tree.leaf_prompt[rejected]).any()):
        raise ValueError("chosen and rejected of a pair must answer the same prompt")
    return Pairs(chosen.long(), rejected.long())


def pairs_from_nodes(tree: Tree, pairs: Sequence[tuple[int, int]]) -> Pairs:
    """A dataset from (chosen node id, rejected node id) pairs; each node must be a leaf."""
    nodes = torch.as_tensor(list(pairs), dtype=torch.long).reshape(-1, 2)
    if bool(((nodes < 0) | (nodes >= tree.n_nodes)).any()):
        raise ValueError(f"pairs must name node ids in [0, {tree.n_nodes - 1}]")
    idx = tree.leaf_index[nodes]
    if bool((idx < 0).any()):
        bad = int(nodes[idx < 0][0])
        raise ValueError(f"pairs must name leaves (responses); node {bad} is not a leaf")
    return validate_pairs(tree, idx[:, 0], idx[:, 1])


def normal_rewards(
    tree: Tree, generator: torch.Generator, *, dtype: torch.dtype = torch.float64
) -> Tensor:
    """Gold rewards r(x, y) ~ N(0, 1), one per response. Shape (L,)."""
    return torch.randn(tree.n_responses, generator=generator, dtype=dtype)


def random_pairs(tree: Tree, rewards: Tensor, n_pairs: int, generator: torch.Generator) -> Pairs:
    """``n_pairs`` pairs of distinct responses drawn uniformly, the higher gold reward chosen.

    Pair i asks prompt i mod n_prompts, so every prompt is covered before any repeats. With
    n_pairs = 1 this is the paper's "1pref" dataset.

    Args:
        tree: the tree.
        rewards: gold reward per response. Shape (L,).
        n_pairs: P >= 1.
        generator: randomness.

    Returns:
        ``Pairs`` with shape (P,).
    """
    if n_pairs < 1:
        raise ValueError(f"n_pairs must be >= 1; got {n_pairs}")
    prompt_of = torch.arange(n_pairs) % tree.n_prompts
    counts = torch.bincount(tree.leaf_prompt, minlength=tree.n_prompts)
    if bool((counts[prompt_of] < 2).any()):
        raise ValueError("every prompt that gets a pair needs at least two responses")
    # Leaves sorted by prompt: prompt p's responses are order[start[p] : start[p] + counts[p]].
    order = torch.sort(tree.leaf_prompt, stable=True).indices
    start = torch.cumsum(counts, 0) - counts
    n = counts[prompt_of]
    u = torch.rand(n_pairs, 2, generator=generator, dtype=torch.float64)
    first = (u[:, 0] * n).long().clamp(max=n - 1)
    second = (u[:, 1] * (n - 1)).long().clamp(max=n - 2)
    second = second + (second >= first).long()  # distinct from first, uniform over the rest
    a, b = order[start[prompt_of] + first], order[start[prompt_of] + second]
    a_wins = rewards[a] >= rewards[b]
    return validate_pairs(tree, torch.where(a_wins, a, b), torch.where(a_wins, b, a))


def _check_bt_arguments(
    tree: Tree, rewards: Tensor, sampler_logp: Tensor, n_pairs: int, temperature: float
) -> None:
    if n_pairs < 1:
        raise ValueError(f"n_pairs must be >= 1; got {n_pairs}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0; got {temperature}")
    L = tree.n_responses
    if tuple(rewards.shape) != (L,) or tuple(sampler_logp.shape) != (L,):
        raise ValueError(
            f"rewards and sampler_logp must have shape ({L},); got {tuple(rewards.shape)} and "
            f"{tuple(sampler_logp.shape)}"
        )


def _check_support(p: Tensor, prompt: int) -> None:
    """Refuse a prompt whose sampling probabilities ``p`` leave no two responses to compare."""
    if int((p > 0).sum()) < 2:
        raise ValueError(
            f"the sampling policy puts mass on fewer than 2 responses of prompt {prompt}"
        )


def _first_wins(
    rewards: Tensor, first: Tensor | int, second: Tensor | int, u: Tensor, temperature: float
) -> Tensor:
    """Bradley–Terry labels: whether each pair's first response is chosen, given uniforms ``u``.

    P[first ≻ second] = σ((r(first) − r(second)) / temperature). ``first``, ``second`` and ``u``
    share one shape (scalars for one pair). Returns a bool tensor of that shape.
    """
    margin = (rewards[first] - rewards[second]).double() / temperature
    return u < torch.sigmoid(margin)


def _labelled(tree: Tree, first: Tensor, second: Tensor, first_wins: Tensor) -> Pairs:
    """``Pairs`` from ordered draws and their labels. Shapes (P,)."""
    return validate_pairs(
        tree, torch.where(first_wins, first, second), torch.where(first_wins, second, first)
    )


def bradley_terry_pairs(
    tree: Tree,
    rewards: Tensor,
    sampler_logp: Tensor,
    n_pairs: int,
    generator: torch.Generator,
    *,
    temperature: float = 1.0,
) -> Pairs:
    """Pairs of responses sampled from a policy, labelled by Bradley–Terry on the gold reward.

    For prompt x (round-robin), draw y, y' ~ π(·|x) independently until they differ, then
    P[y ≻ y'] = σ((r(y) − r(y')) / temperature). The draws come one pair at a time from a
    shared generator (two responses, then the label's uniform): the law of ``sampled_bt_pairs``,
    with the random stream that ``build_problem``'s run folders were drawn with.

    Args:
        tree: the tree.
        rewards: gold reward per response. Shape (L,).
        sampler_logp: log π(y|x) of the sampling policy per response. Shape (L,).
        n_pairs: P >= 1.
        generator: randomness.
        temperature: Bradley–Terry temperature > 0 (→ 0 gives noiseless labels).

    Returns:
        ``Pairs`` with shape (P,).
    """
    _check_bt_arguments(tree, rewards, sampler_logp, n_pairs, temperature)
    probs = torch.exp(sampler_logp.double())
    first, second, first_wins = [], [], []
    for i in range(n_pairs):
        prompt = i % tree.n_prompts
        p = probs * (tree.leaf_prompt == prompt)
        _check_support(p, prompt)
        while True:  # rejection: redraw until the two responses differ
            y, y2 = torch.multinomial(p, 2, replacement=True, generator=generator).tolist()
            if y != y2:
                break
        u = torch.rand((), generator=generator, dtype=torch.float64)
        first.append(y)
        second.append(y2)
        first_wins.append(bool(_first_wins(rewards, y, y2, u, temperature)))
    return _labelled(tree, torch.tensor(first), torch.tensor(second), torch.tensor(first_wins))


def _joint_draws(
    tree: Tree, probs: Tensor, n_pairs: int, gen: torch.Generator
) -> tuple[Tensor, Tensor]:
    """Ordered pairs of distinct responses, pair i of prompt i mod n_prompts, drawn exactly.

    One multinomial per prompt over its L_x² ordered pairs with the diagonal removed, so
    P[(y, y')] ∝ π(y|x) π(y'|x) for y ≠ y' (no rejection loop). Shapes (P,), (P,).
    """
    prompt_of = torch.arange(n_pairs) % tree.n_prompts
    first = torch.empty(n_pairs, dtype=torch.long)
    second = torch.empty(n_pairs, dtype=torch.long)
    for prompt in range(min(n_pairs, tree.n_prompts)):
        leaves = torch.nonzero(tree.leaf_prompt == prompt).squeeze(1)
        p = probs[leaves]
        _check_support(p, prompt)
        joint = torch.outer(p, p)
        joint.fill_diagonal_(0.0)
        rows = torch.nonzero(prompt_of == prompt).squeeze(1)
        flat = torch.multinomial(joint.reshape(-1), len(rows), replacement=True, generator=gen)
        n = len(leaves)
        first[rows], second[rows] = leaves[flat // n], leaves[flat % n]
    return first, second


def sampled_bt_pairs(
    tree: Tree,
    rewards: Tensor,
    sampler_logp: Tensor,
    n_pairs: int,
    *,
    seed: int,
    temperature: float = 1.0,
) -> Pairs:
    """Many pairs drawn from samples of a policy (e.g. the SFT policy), labelled by Bradley–Terry
    on the gold reward: the paper's data regime (Rafailov et al. 2024, §3: preference pairs of
    sampled responses, one epoch) in place of "1pref".

    Pair i asks prompt x = i mod n_prompts; its two responses are two independent samples of
    π(·|x) conditioned on differing, i.e. the unordered pair {y, y'} is drawn with probability
    2 π(y|x) π(y'|x) / (1 − Σ_z π(z|x)²); then y is chosen with probability
    σ((r(y) − r(y')) / temperature). The pair is drawn exactly from that joint law (one
    multinomial over the L_x² ordered pairs of each prompt, diagonal removed), so a
    concentrated policy costs no rejection loop. Pure: the randomness is ``seed``'s alone.
    The law is ``bradley_terry_pairs``'s (which rejects equal draws, one pair at a time, from a
    shared generator); that one keeps its random stream because its draws are in existing run
    folders, and this one keeps its own for the confirm grid's.

    Args:
        tree: the tree.
        rewards: gold reward per response. Shape (L,).
        sampler_logp: log π(y|x) of the sampling policy per response. Shape (L,).
        n_pairs: P >= 1.
        seed: seed of the draw (an int; the same seed gives the same pairs).
        temperature: Bradley–Terry temperature > 0 (→ 0 gives noiseless labels).

    Returns:
        ``Pairs`` with shape (P,).
    """
    _check_bt_arguments(tree, rewards, sampler_logp, n_pairs, temperature)
    gen = torch.Generator().manual_seed(int(seed))
    first, second = _joint_draws(tree, torch.exp(sampler_logp.double()), n_pairs, gen)
    u = torch.rand(n_pairs, generator=gen, dtype=torch.float64)
    return _labelled(tree, first, second, _first_wins(rewards, first, second, u, temperature))


def comparison_graph(tree: Tree, pairs: Pairs) -> nx.Graph:
    """Undirected graph on the responses a dataset mentions; edge weight = number of comparisons.

    Each edge also records ``wins``: how often each endpoint was chosen. Its connected
    components are the groups within which the data identifies rewards (up to a constant).
    """
    if pairs.chosen.dim() != 1:
        raise ValueError("comparison_graph takes one run's pairs, shape (P,)")
    g = nx.Graph()
    for w, l in zip(pairs.chosen.tolist(), pairs.rejected.tolist(), strict=True):
        for y in (w, l):
            g.add_node(y, prompt=int(tree.leaf_prompt[y]), actions=tree.response_actions(y))
        if g.has_edge(w, l):
            g.edges[w, l]["weight"] += 1
        else:
            g.add_edge(w, l, weight=1, wins={w: 0, l: 0})
        g.edges[w, l]["wins"][w] += 1
    return g
