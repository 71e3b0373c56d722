"""A batch of Tree-MDP problems: tree, policy family, reference, gold rewards, preference pairs.

``ProblemSpec`` says what to build (the experiments' problem flags, declared once);
``build_problem(tree, seeds, spec)`` builds it. The policy family, the reference and the pair
source are registries (``POLICIES``, ``REFERENCES``, ``PAIR_SOURCES``: name → builder), like the
objectives and the gold rewards (``treemdp.rewards.REWARDS``): adding one is adding an entry.

Each run's problem is drawn from its own seed (features, then gold rewards, then pairs, then a
random reference's logits), so a run is the same whatever batch it trains in. Runs that share a
seed share the problem; building for the distinct seeds and then ``select``-ing the run layout
fits the SFT reference once per seed.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from functools import cached_property
from typing import Any

import torch
from torch import Tensor

from treemdp.data import Pairs, bradley_terry_pairs, random_pairs
from treemdp.networks import INPUTS, MLP, edge_inputs
from treemdp.optim import make_optimizer
from treemdp.policy import (
    LogLinear,
    Policy,
    Tabular,
    check_logits,
    gaussian_features,
    response_logprobs,
)
from treemdp.rewards import REWARDS, gold_rewards
from treemdp.runs.cli import arg
from treemdp.threads import threads_for
from treemdp.tree import Tree

__all__ = [
    "PAIR_SOURCES",
    "POLICIES",
    "REFERENCES",
    "PolicyEntry",
    "Problem",
    "ProblemSpec",
    "ReferenceEntry",
    "build_problem",
    "fit_sft",
]


# ------------------------------------------------------------------------------ registries


@dataclass(frozen=True)
class PolicyEntry:
    """A policy family: how to build it for a batch, and whether it reads the features φ.

    Attributes:
        build: (tree, spec, φ or None) → the family; φ has shape (R, M, b, k).
        needs_features: whether the family reads φ under ``spec``.
    """

    build: Callable[[Tree, ProblemSpec, Tensor | None], Any]
    needs_features: Callable[[ProblemSpec], bool]


def _mlp(tree: Tree, spec: ProblemSpec, features: Tensor | None) -> MLP:
    """A tanh network on each edge's inputs (``treemdp.networks.MLP``)."""
    phi = features if spec.network_inputs != "prefix" else None
    return MLP(edge_inputs(tree, spec.network_inputs, phi), width=spec.width, layers=spec.layers)


POLICIES: dict[str, PolicyEntry] = {
    "loglinear": PolicyEntry(lambda tree, spec, phi: LogLinear(phi), lambda spec: True),
    "tabular": PolicyEntry(lambda tree, spec, phi: Tabular(tree), lambda spec: False),
    "mlp": PolicyEntry(_mlp, lambda spec: spec.network_inputs != "prefix"),
}
"""Name → policy family: "loglinear" (φ·θ, Gaussian features of dimension ``features``),
"tabular" (one logit per edge) or "mlp" (a tanh network on each edge's inputs)."""


@dataclass(frozen=True)
class ReferenceEntry:
    """A reference policy π_ref (the policy starts there).

    Attributes:
        make: (policy at θ0, pairs, spec, logits or None) → (the policy at π_ref, the SFT report
            or None); logits are the drawn or given reference logits, shape (R, M, b).
        draws_logits: draws standard-normal logits from each seed's stream (after its pairs).
        needs_logits: takes the caller's ``reference_logits`` (not a command-line choice).
    """

    make: Callable[
        [Policy, Pairs, ProblemSpec, Tensor | None], tuple[Policy, dict[str, Tensor] | None]
    ]
    draws_logits: bool = False
    needs_logits: bool = False


def _sft_reference(
    policy: Policy, pairs: Pairs, spec: ProblemSpec, logits: Tensor | None
) -> tuple[Policy, dict[str, Tensor]]:
    """The family fitted to the dataset's responses (``fit_sft``)."""
    theta, report = fit_sft(policy, pairs.responses(), steps=spec.sft_steps, lr=spec.sft_lr)
    return replace(policy, theta0=theta), report


def _random_reference(
    policy: Policy, pairs: Pairs, spec: ProblemSpec, logits: Tensor | None
) -> tuple[Policy, None]:
    """Gaussian logits / ``reference_temperature`` as the policy's fixed offset."""
    return replace(policy, base_logits=logits / spec.reference_temperature), None


def _given_reference(
    policy: Policy, pairs: Pairs, spec: ProblemSpec, logits: Tensor | None
) -> tuple[Policy, None]:
    """The caller's logits (shape (M, b) or (R, M, b)) as the policy's fixed offset."""
    tree, R = policy.tree, policy.n_runs
    given = torch.as_tensor(logits, dtype=torch.float64)
    given = given.expand(R, tree.n_internal, tree.branching) if given.dim() == 2 else given
    check_logits(tree, given, "reference_logits")
    if given.shape[0] != R:
        raise ValueError(f"reference_logits must have shape (M, b) or ({R}, M, b)")
    return replace(policy, base_logits=given.clone()), None


REFERENCES: dict[str, ReferenceEntry] = {
    "sft": ReferenceEntry(_sft_reference),
    "uniform": ReferenceEntry(lambda policy, pairs, spec, logits: (policy, None)),
    "random": ReferenceEntry(_random_reference, draws_logits=True),
    "given": ReferenceEntry(_given_reference, needs_logits=True),
}
"""Name → reference: "sft" (the family fitted to the dataset's responses, the default),
"uniform", "random" (Gaussian logits / temperature) or "given" (the caller's logits)."""

PairSource = Callable[[Tree, Tensor, int, torch.Generator, Tensor], Pairs]
"""(tree, gold rewards (L,), number of pairs, generator, the uniform policy's log-probs (L,))
→ pairs."""

PAIR_SOURCES: dict[str, PairSource] = {
    "random": lambda tree, rewards, n, gen, uniform: random_pairs(tree, rewards, n, gen),
    "bradley-terry": lambda tree, rewards, n, gen, uniform: bradley_terry_pairs(
        tree, rewards, uniform, n, gen
    ),
}
"""Name → pair source: "random" (distinct uniform pairs, higher gold reward chosen) or
"bradley-terry" (pairs sampled from the uniform policy, labelled by BT on the gold reward)."""


# ------------------------------------------------------------------------------ the spec


@dataclass(frozen=True)
class ProblemSpec:
    """What a batch of runs trains on, apart from the tree and the seeds (each experiment's
    problem flags: an experiment's Config nests one with ``treemdp.runs.cli.nested``)."""

    # the policy family and its parameterisation
    policy: str = arg("loglinear", "policy family", choices=tuple(POLICIES))
    features: int = arg(
        8,
        "feature dimension k of φ (log-linear policy, network inputs and reward features)",
        minimum=1,
    )
    width: int = arg(16, "hidden units per layer of the mlp policy", minimum=1)
    layers: int = arg(1, "hidden layers of the mlp policy", minimum=1)
    network_inputs: str = arg("features", "edge inputs of the mlp policy", choices=INPUTS)
    # the reference π_ref (the policy starts there)
    reference: str = arg(
        "sft",
        "reference policy (the policy starts there)",
        choices=tuple(n for n, e in REFERENCES.items() if not e.needs_logits),
    )
    reference_temperature: float = arg(
        1.0, "temperature of the random reference", exclusive_minimum=0
    )
    sft_steps: int = arg(100, "Adam steps of the SFT reference fit", minimum=0)
    sft_lr: float = arg(0.05, "learning rate of the SFT reference fit", exclusive_minimum=0)
    # the data: gold reward and preference pairs
    pairs: int = arg(
        1, "preference pairs per run (dataset size P; 1 = the paper's 1pref)", minimum=1
    )
    pair_source: str = arg("random", "how pairs are drawn", choices=tuple(PAIR_SOURCES))
    reward: str = arg("normal", "gold reward (treemdp.rewards)", choices=tuple(REWARDS))
    peak: float = arg(1.0, "where a concave/saturating/length reward peaks", exclusive_minimum=0)
    explained: float = arg(
        1.0, "share of gold-reward variance the signal explains", minimum=0, maximum=1
    )

    def needs_features(self) -> bool:
        """Whether φ is drawn: the policy or the gold reward reads it."""
        return POLICIES[self.policy].needs_features(self) or REWARDS[self.reward].needs_features

    def reward_options(self) -> dict[str, float]:
        """The gold reward's knobs (``REWARDS[reward].options``) with their values here."""
        return {name: getattr(self, name) for name in REWARDS[self.reward].options}


def _check_choice(name: str, value: str, registry: Sequence[str]) -> None:
    if value not in registry:
        raise ValueError(f"{name} must be one of {', '.join(registry)}; got {value!r}")


def _check_spec(spec: ProblemSpec, seeds: Sequence[int], reference_logits: Any) -> None:
    """ValueError naming the argument unless ``spec``, ``seeds`` and ``reference_logits`` fit."""
    _check_choice("policy", spec.policy, tuple(POLICIES))
    _check_choice("reference", spec.reference, tuple(REFERENCES))
    _check_choice("pair_source", spec.pair_source, tuple(PAIR_SOURCES))
    _check_choice("reward", spec.reward, tuple(REWARDS))
    if spec.policy == "mlp":
        _check_choice("network_inputs", spec.network_inputs, INPUTS)
    if not spec.reference_temperature > 0:
        raise ValueError(f"reference_temperature must be > 0; got {spec.reference_temperature}")
    if len(seeds) == 0:
        raise ValueError("seeds must hold at least one seed")
    if REFERENCES[spec.reference].needs_logits != (reference_logits is not None):
        raise ValueError("reference_logits must be given exactly when reference='given'")


# ------------------------------------------------------------------------------ problems


@dataclass(frozen=True, eq=False)
class Problem:
    """Everything a batch of R runs trains on.

    Attributes:
        tree: the tree (shared by all runs).
        policy: the family, its offset and θ0; π_θ0 = π_ref.
        rewards: gold reward per response. Shape (R, L).
        pairs: the dataset of each run. Shapes (R, P).
        seeds: the seed each run's problem was drawn from. Shape (R,).
        sft: report of the SFT fit (``nll``, ``mass_on_data``, shape (R,) each), or None.
    """

    tree: Tree
    policy: Policy
    rewards: Tensor
    pairs: Pairs
    seeds: Tensor
    sft: dict[str, Tensor] | None = None

    @property
    def n_runs(self) -> int:
        """R."""
        return self.rewards.shape[0]

    @cached_property
    def ref_logp(self) -> Tensor:
        """log π_ref(y|x) for every response. Shape (R, L)."""
        with torch.no_grad():
            return self.policy.response_logprobs(self.policy.theta0)

    def select(self, index: Tensor | Sequence[int]) -> Problem:
        """The problems of runs ``index`` (repeats allowed), e.g. to lay seeds out as runs."""
        idx = torch.as_tensor(index, dtype=torch.long)
        family = self.policy.family
        if isinstance(family, LogLinear) and family.features.dim() == 4:
            family = LogLinear(family.features[idx])
        elif hasattr(family, "select"):  # families with per-run tensors index them themselves
            family = family.select(idx)
        base = self.policy.base_logits
        policy = replace(
            self.policy,
            family=family,
            theta0=self.policy.theta0[idx],
            base_logits=None if base is None else base[idx],
        )
        sft = None if self.sft is None else {k: v[idx] for k, v in self.sft.items()}
        return Problem(
            self.tree,
            policy,
            self.rewards[idx],
            Pairs(self.pairs.chosen[idx], self.pairs.rejected[idx]),
            self.seeds[idx],
            sft,
        )


def _init_generator(seed: int) -> torch.Generator:
    """A generator for a run's initial parameters, independent of the seed's problem stream."""
    digest = hashlib.sha256(f"treemdp-init-{seed}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") >> 1)


def _sft_work(policy: Policy, responses: Tensor) -> int:
    """Tensor entries one SFT step touches: the data's paths, or every logit for families
    without ``bind``."""
    tree = policy.tree
    per_run = tree.n_nodes
    if hasattr(policy.family, "bind"):
        per_run = responses.shape[-1] * tree.max_depth * tree.branching
    return policy.n_runs * per_run


def fit_sft(
    policy: Policy, responses: Tensor, *, steps: int, lr: float, optimizer: str = "adam"
) -> tuple[Tensor, dict[str, Tensor]]:
    """Maximum-likelihood fit of the policy family to a set of responses (the SFT reference).

    Minimises −mean_i log π_θ(y_i|x_i) over the responses (with multiplicity), from θ0.

    Args:
        policy: family, offset and starting point θ0. θ0 shape (R, ...).
        responses: response indices per run. Shape (R, S).
        steps: optimiser steps >= 0.
        lr: learning rate > 0.
        optimizer: "adam", "sgd" or "rmsprop".

    Returns:
        The fitted parameters (shape of θ0) and a report: ``nll`` (final mean negative
        log-likelihood) and ``mass_on_data`` (π mass on the distinct responses), each (R,).
    """
    if steps < 0:
        raise ValueError(f"sft_steps must be >= 0; got {steps}")
    tree = policy.tree
    theta = policy.theta0.detach().clone().requires_grad_(True)
    opt = make_optimizer(optimizer, lr, policy.n_runs)
    with threads_for(_sft_work(policy, responses)):
        # Only the data's responses enter the likelihood: their paths suffice (O(S·D) a step).
        data_logprobs = policy.bind(responses)
        for _ in range(steps):
            nll = -data_logprobs(theta).mean(-1).sum()
            (grad,) = torch.autograd.grad(nll, theta)
            opt.step(theta, grad)
        with torch.no_grad():
            logp = policy.response_logprobs(theta)
            on_data = torch.zeros_like(logp, dtype=torch.bool).scatter_(1, responses, True)
            report = {
                "nll": -logp.gather(1, responses).mean(-1),
                "mass_on_data": (torch.exp(logp) * on_data).sum(-1) / tree.n_prompts,
            }
    return theta.detach(), report


@dataclass(frozen=True)
class _SeedDraw:
    """What one seed's stream draws, in this order: φ (M, b, k) or None, gold rewards (L,),
    pairs (P,), a random reference's logits (M, b) or None."""

    features: Tensor | None
    rewards: Tensor
    pairs: Pairs
    logits: Tensor | None


def _draw(tree: Tree, seed: int, spec: ProblemSpec, uniform_logp: Tensor) -> _SeedDraw:
    """The problem of one seed (the order of the draws is part of every run's identity)."""
    gen = torch.Generator().manual_seed(seed)
    phi = gaussian_features(tree, spec.features, gen) if spec.needs_features() else None
    rewards = gold_rewards(spec.reward, tree, gen, features=phi, **spec.reward_options())
    pairs = PAIR_SOURCES[spec.pair_source](tree, rewards, spec.pairs, gen, uniform_logp)
    logits = None
    if REFERENCES[spec.reference].draws_logits:
        shape = (tree.n_internal, tree.branching)
        logits = torch.randn(*shape, generator=gen, dtype=torch.float64)
    return _SeedDraw(phi, rewards, pairs, logits)


def _initial_params(family: Any, seeds: Sequence[int]) -> Tensor:
    """θ0 per run: seeded random weights for networks (``init_params``), else zeros."""
    if hasattr(family, "init_params"):
        return torch.cat([family.init_params(1, _init_generator(int(s))) for s in seeds])
    return torch.zeros(len(seeds), *family.param_shape(), dtype=torch.float64)


def build_problem(
    tree: Tree,
    seeds: Sequence[int],
    spec: ProblemSpec = ProblemSpec(),  # frozen: one shared default is safe
    *,
    reference_logits: Tensor | None = None,
) -> Problem:
    """Draw one problem per seed and make its reference.

    Args:
        tree: the tree.
        seeds: one seed per run (repeats allowed but wasteful: see ``Problem.select``).
        spec: the policy family, reference, gold reward and pairs (``ProblemSpec``).
            Feature-based rewards read the seed's Gaussian features φ, drawn (first, as for
            "loglinear") whatever the policy, so every family sees the same rewards and pairs
            for a seed. An "mlp" policy's hidden weights come from a generator of their own,
            seeded from the run's seed, so they do not shift the seed's rewards and pairs.
        reference_logits: logits of the "given" reference. Shape (M, b) or (R, M, b).

    Returns:
        A ``Problem`` with R = len(seeds) runs; the policy starts at the reference.
    """
    _check_spec(spec, seeds, reference_logits)
    uniform = torch.zeros(1, tree.n_internal, tree.branching, dtype=torch.float64)
    uniform_logp = response_logprobs(tree, uniform)[0]
    draws = [_draw(tree, int(seed), spec, uniform_logp) for seed in seeds]
    phi = torch.stack([d.features for d in draws]) if spec.needs_features() else None
    family = POLICIES[spec.policy].build(tree, spec, phi)
    policy = Policy(tree, family, _initial_params(family, seeds), None)
    pairs = Pairs(
        torch.stack([d.pairs.chosen for d in draws]),
        torch.stack([d.pairs.rejected for d in draws]),
    )
    reference = REFERENCES[spec.reference]
    logits = torch.stack([d.logits for d in draws]) if reference.draws_logits else reference_logits
    policy, sft = reference.make(policy, pairs, spec, logits)
    rewards = torch.stack([d.rewards for d in draws])
    return Problem(tree, policy, rewards, pairs, torch.as_tensor(list(seeds)), sft)
