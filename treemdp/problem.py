"""A batch of Tree-MDP problems: tree, policy family, reference, gold rewards, preference pairs.

Each run's problem is drawn from its own seed (features, then gold rewards, then pairs), so a run
is the same whatever batch it trains in. Runs that share a seed share the problem; building for
the distinct seeds and then ``select``-ing the run layout fits the SFT reference once per seed.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from functools import cached_property

import torch
from torch import Tensor

from treemdp.data import Pairs, bradley_terry_pairs, normal_rewards, random_pairs
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
from treemdp.threads import threads_for
from treemdp.tree import Tree

__all__ = ["PAIR_SOURCES", "POLICIES", "REFERENCES", "Problem", "build_problem", "fit_sft"]

POLICIES = ("loglinear", "tabular", "mlp")
REFERENCES = ("sft", "uniform", "random", "given")
PAIR_SOURCES = ("random", "bradley-terry")


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
    per_run = tree.n_nodes  # families without ``bind`` compute every logit each step
    if hasattr(policy.family, "bind"):
        per_run = responses.shape[-1] * tree.max_depth * tree.branching
    with threads_for(policy.n_runs * per_run):
        return _fit_sft(policy, responses, steps, lr, optimizer)


def _fit_sft(
    policy: Policy, responses: Tensor, steps: int, lr: float, optimizer: str
) -> tuple[Tensor, dict[str, Tensor]]:
    theta = policy.theta0.detach().clone().requires_grad_(True)
    opt = make_optimizer(optimizer, lr, policy.n_runs)
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
            "mass_on_data": (torch.exp(logp) * on_data).sum(-1) / policy.tree.n_prompts,
        }
    return theta.detach(), report


def build_problem(
    tree: Tree,
    seeds: Sequence[int],
    *,
    policy: str = "loglinear",
    features: int = 8,
    reference: str = "sft",
    n_pairs: int = 1,
    pair_source: str = "random",
    sft_steps: int = 100,
    sft_lr: float = 0.05,
    reference_temperature: float = 1.0,
    reference_logits: Tensor | None = None,
    reward: str = "normal",
    reward_options: Mapping[str, float] | None = None,
    width: int = 16,
    layers: int = 1,
    network_inputs: str = "features",
) -> Problem:
    """Draw one problem per seed and fit its reference.

    Args:
        tree: the tree.
        seeds: one seed per run (repeats allowed but wasteful: see ``Problem.select``).
        policy: "loglinear" (φ·θ, Gaussian features of dimension ``features``), "tabular" or
            "mlp" (a tanh network on each edge's inputs, ``treemdp.networks.MLP``).
        features: k, the log-linear feature dimension (>= 1).
        reference: "sft" (the family fitted to the dataset's responses, the default),
            "uniform", "random" (Gaussian logits / ``reference_temperature``) or "given"
            (``reference_logits``).
        n_pairs: P, preference pairs per run (1 = the paper's "1pref").
        pair_source: "random" (distinct uniform pairs, higher gold reward chosen) or
            "bradley-terry" (pairs sampled from the uniform policy, labelled by BT on the gold
            reward).
        sft_steps: Adam steps of the SFT fit.
        sft_lr: learning rate of the SFT fit.
        reference_temperature: temperature of the "random" reference (> 0).
        reference_logits: logits of the "given" reference. Shape (M, b) or (R, M, b).
        reward: gold reward, a name in ``treemdp.rewards.REWARDS`` ("normal", i.i.d. N(0, 1),
            is the default). Feature-based rewards read the seed's Gaussian features φ, drawn
            (first, as for "loglinear") whatever the policy, so every family sees the same
            rewards and pairs for a seed.
        reward_options: the reward's knobs (e.g. ``{"peak": 1.0, "explained": 0.8}``).
        width: hidden units per layer of the "mlp" policy (``treemdp.networks.MLP``).
        layers: hidden layers of the "mlp" policy.
        network_inputs: the "mlp" policy's edge inputs: "features" (φ), "prefix" (one-hot
            action prefix) or "both". Its hidden weights are drawn from a generator of their
            own, seeded from the run's seed, so they do not shift the seed's rewards and pairs.

    Returns:
        A ``Problem`` with R = len(seeds) runs; the policy starts at the reference.
    """
    if policy not in POLICIES:
        raise ValueError(f"policy must be one of {', '.join(POLICIES)}; got {policy!r}")
    if reference not in REFERENCES:
        raise ValueError(f"reference must be one of {', '.join(REFERENCES)}; got {reference!r}")
    if pair_source not in PAIR_SOURCES:
        raise ValueError(
            f"pair_source must be one of {', '.join(PAIR_SOURCES)}; got {pair_source!r}"
        )
    if not reference_temperature > 0:
        raise ValueError(f"reference_temperature must be > 0; got {reference_temperature}")
    if len(seeds) == 0:
        raise ValueError("seeds must hold at least one seed")
    if (reference == "given") != (reference_logits is not None):
        raise ValueError("reference_logits must be given exactly when reference='given'")
    if reward not in REWARDS:
        raise ValueError(f"reward must be one of {', '.join(REWARDS)}; got {reward!r}")
    if policy == "mlp" and network_inputs not in INPUTS:
        raise ValueError(
            f"network_inputs must be one of {', '.join(INPUTS)}; got {network_inputs!r}"
        )
    options = dict(reward_options or {})
    needs_features = (
        policy == "loglinear"
        or (policy == "mlp" and network_inputs != "prefix")
        or REWARDS[reward].needs_features
    )
    m, b = tree.n_internal, tree.branching
    uniform_logp = response_logprobs(tree, torch.zeros(1, m, b, dtype=torch.float64))[0]
    feats, rewards, chosen, rejected, random_base = [], [], [], [], []
    for seed in seeds:
        gen = torch.Generator().manual_seed(int(seed))
        phi = gaussian_features(tree, features, gen) if needs_features else None
        if phi is not None:
            feats.append(phi)
        if reward == "normal":
            r = normal_rewards(tree, gen)
        else:
            r = gold_rewards(reward, tree, gen, features=phi, **options)
        if pair_source == "random":
            pairs = random_pairs(tree, r, n_pairs, gen)
        else:
            pairs = bradley_terry_pairs(tree, r, uniform_logp, n_pairs, gen)
        if reference == "random":
            random_base.append(torch.randn(m, b, generator=gen, dtype=torch.float64))
        rewards.append(r)
        chosen.append(pairs.chosen)
        rejected.append(pairs.rejected)
    R = len(seeds)
    if policy == "mlp":
        phi_all = torch.stack(feats) if network_inputs != "prefix" else None
        family = MLP(edge_inputs(tree, network_inputs, phi_all), width=width, layers=layers)
    else:
        family = LogLinear(torch.stack(feats)) if policy == "loglinear" else Tabular(tree)
    if hasattr(family, "init_params"):  # seeded random initialisation (networks)
        theta0 = torch.cat([family.init_params(1, _init_generator(int(s))) for s in seeds])
    else:
        theta0 = torch.zeros(R, *family.param_shape(), dtype=torch.float64)
    base = None
    if reference == "random":
        base = torch.stack(random_base) / reference_temperature
    elif reference == "given":
        given = torch.as_tensor(reference_logits, dtype=torch.float64)
        given = given.expand(R, m, b) if given.dim() == 2 else given
        check_logits(tree, given, "reference_logits")
        if given.shape[0] != R:
            raise ValueError(f"reference_logits must have shape (M, b) or ({R}, M, b)")
        base = given.clone()
    pairs = Pairs(torch.stack(chosen), torch.stack(rejected))
    pol = Policy(tree, family, theta0, base)
    sft = None
    if reference == "sft":
        theta_ref, sft = fit_sft(pol, pairs.responses(), steps=sft_steps, lr=sft_lr)
        pol = replace(pol, theta0=theta_ref)
    return Problem(tree, pol, torch.stack(rewards), pairs, torch.as_tensor(list(seeds)), sft)
