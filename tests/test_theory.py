"""treemdp.theory: the optimum two ways, identifiability (Prop. 1), minimiser sets, the
three-response example."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from tests.strategies import trees
from treemdp import objectives
from treemdp import theory as T
from treemdp.data import validate_pairs
from treemdp.policy import response_logprobs
from treemdp.tree import Tree

D = torch.float64


def _rand(shape: tuple[int, ...], seed: int, scale: float = 1.0) -> torch.Tensor:
    return scale * torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=D)


# ------------------------------------------------------------------------------ optimum


@given(tree=trees(), seed=st.integers(0, 2**16), log_beta=st.floats(-3.0, 1.0))
def test_optimum_two_ways_agree(tree: Tree, seed: int, log_beta: float) -> None:
    R = 3
    ref_logits = _rand((R, tree.n_internal, tree.branching), seed, 2.0)
    rewards = _rand((R, tree.n_responses), seed + 1)
    beta = torch.tensor([10**log_beta, 0.5, 2.0], dtype=D)
    via_values = response_logprobs(tree, T.optimal_logits(tree, ref_logits, rewards, beta=beta))
    ref_logp = response_logprobs(tree, ref_logits)
    direct = T.optimal_response_logprobs(tree, ref_logp, rewards, beta=beta)
    torch.testing.assert_close(via_values, direct, rtol=0, atol=1e-12)
    # V(root) = β log Σ_y π_ref(y) e^{r(y)/β} = β log Z(x).
    v = T.soft_values(tree, ref_logits, rewards, beta=beta)
    for p, root in enumerate(tree.roots.tolist()):
        mine = tree.leaf_prompt == p
        log_z = torch.logsumexp(ref_logp[:, mine] + rewards[:, mine] / beta[:, None], dim=1)
        torch.testing.assert_close(v[:, root], beta * log_z, rtol=1e-12, atol=1e-12)


def test_optimum_maximises_the_regularised_reward() -> None:
    tree = Tree.complete(3, 2, n_prompts=2)
    ref_logits = _rand((1, tree.n_internal, 3), 0)
    ref_logp = response_logprobs(tree, ref_logits)
    rewards = _rand((tree.n_responses,), 1)
    beta = 0.3
    star = T.optimal_response_logprobs(tree, ref_logp, rewards, beta=beta)
    assert float(T.kl_to_optimum(tree, star, ref_logp, rewards, beta=beta)[0]) == pytest.approx(
        0.0, abs=1e-14
    )

    def objective(logp: torch.Tensor) -> torch.Tensor:  # E_π[r] − β KL(π‖π_ref), per prompt avg
        p = torch.exp(logp)
        return (p * rewards).sum(-1) / 2 - beta * (p * (logp - ref_logp)).sum(-1) / 2

    others = response_logprobs(tree, _rand((50, tree.n_internal, 3), 2, 2.0))
    gap = objective(star) - objective(others)
    # The gap is exactly β KL(π ‖ π*) (Gibbs variational principle).
    kl = T.kl_to_optimum(tree, others, ref_logp.expand(50, -1), rewards, beta=beta)
    torch.testing.assert_close(gap, beta * kl, rtol=1e-10, atol=1e-12)
    assert bool((kl > 0).all())
    fwd = T.kl_to_optimum(
        tree, others, ref_logp.expand(50, -1), rewards, beta=beta, direction="forward"
    )
    assert bool((fwd > 0).all())
    with pytest.raises(ValueError, match="direction"):
        T.kl_to_optimum(tree, star, ref_logp, rewards, beta=beta, direction="sideways")


# ------------------------------------------------------------------------------ Prop. 1


def _pairs(tree: Tree, chosen: list[int], rejected: list[int]):
    return validate_pairs(tree, torch.tensor(chosen), torch.tensor(rejected))


@pytest.mark.parametrize(
    ("chosen", "rejected", "rank", "components", "n_free"),
    [
        ([0], [1], 1, ((0, 1),), 7),  # one pair: one constraint, 7 responses untouched
        ([0, 1, 0], [1, 2, 2], 2, ((0, 1, 2),), 6),  # a transitive triangle: 3 pairs, rank 2
        ([0, 1], [1, 0], 1, ((0, 1),), 7),  # the same comparison twice, opposite labels
        ([0, 2, 4], [1, 3, 5], 3, ((0, 1), (2, 3), (4, 5)), 3),  # three separate pairs
        ([0, 1, 2, 3, 4, 5, 6, 7], [1, 2, 3, 4, 5, 6, 7, 8], 8, (tuple(range(9)),), 0),  # a path
    ],
)
def test_query_matrix_rank_and_dimensions(
    chosen: list[int], rejected: list[int], rank: int, components: tuple, n_free: int
) -> None:
    tree = Tree.complete(3, 2)  # 9 responses, one prompt
    pairs = _pairs(tree, chosen, rejected)
    a = T.query_matrix(tree, pairs)
    assert a.shape == (len(chosen), 9)
    assert torch.equal(a.sum(1), torch.zeros(len(chosen), dtype=D))  # one +1 and one −1 per row
    rep = T.identifiability(tree, pairs)
    assert rep.rank == rank
    assert rep.dim_rewards == 9 - rank
    assert rep.dim_policies == 9 - rank - 1
    assert rep.components == components
    assert rep.unconstrained.numel() == n_free
    # rank(A) = (#responses compared) − (#components): the incidence matrix of the graph.
    assert rep.rank == rep.mentioned.numel() - len(rep.components)
    # The structural basis spans null(A).
    assert torch.equal(a @ rep.null_basis, torch.zeros(len(chosen), 9 - rank, dtype=D))
    assert int(torch.linalg.matrix_rank(rep.null_basis)) == 9 - rank


def test_identifiability_on_a_forest() -> None:
    tree = Tree.forest([Tree.complete(2, 2)] * 3)
    # prompt 0: responses 0–3, prompt 1: 4–7, prompt 2: 8–11 (asked by no pair)
    assert tree.leaf_prompt.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    pairs = _pairs(tree, [0, 4, 5], [1, 5, 6])
    rep = T.identifiability(tree, pairs)
    assert rep.rank == 3
    assert rep.dim_rewards == 9
    assert rep.dim_policies == 6  # minus one normalising constant per prompt
    assert rep.components == ((0, 1), (4, 5, 6))
    lo, hi = T.ood_mass_range(tree, pairs)
    assert (lo, hi) == (1 / 3, 1.0)  # prompt 2 is all OOD; prompts 0 and 1 have OOD responses


# ------------------------------------------------------------------------------ minimisers

DATASETS = {
    "one pair": ([0], [1]),
    "triangle": ([0, 1, 0], [1, 2, 2]),
    "opposed": ([0, 1, 2, 3], [1, 0, 3, 2]),
    "cycle + tail": ([0, 1, 2, 2], [1, 2, 0, 3]),
}


def _setting(data: str):
    tree = Tree.complete(3, 2)
    pairs = _pairs(tree, *DATASETS[data])
    ref_logp = response_logprobs(tree, _rand((1, tree.n_internal, 3), 5))[0]
    return tree, pairs, ref_logp


def _loss_of_logratio(name: str, pairs, ell: torch.Tensor, beta: float) -> torch.Tensor:
    """Mean loss of log-ratio vectors ℓ (shape (..., L)) through the registry."""
    z = torch.zeros_like(ell[..., pairs.chosen])
    return objectives.loss(
        name, ell[..., pairs.chosen], ell[..., pairs.rejected], z, z, beta=beta
    ).mean(-1)


@pytest.mark.parametrize("data", list(DATASETS))
@pytest.mark.parametrize("name", T.MINIMISER_OBJECTIVES)
def test_extreme_minimisers_have_equal_loss_and_extreme_ood_mass(name: str, data: str) -> None:
    tree, pairs, ref_logp = _setting(data)
    mset = T.minimiser_set(name, tree, pairs, beta=0.5)
    low, high = T.extreme_minimisers(mset, tree, pairs, ref_logp)
    assert low.loss == pytest.approx(high.loss, rel=1e-12, abs=1e-12)
    assert low.loss == pytest.approx(mset.infimum, rel=1e-9, abs=1e-10)
    assert low.ood_mass == pytest.approx(1e-6, rel=1e-9)
    assert high.ood_mass == pytest.approx(1 - 1e-6, rel=1e-9)
    torch.testing.assert_close(low.margins, high.margins, rtol=1e-12, atol=1e-10)
    # The tabular logits give back the same policy.
    torch.testing.assert_close(response_logprobs(tree, high.logits)[0], high.logp)
    # Any OOD mass in between is reachable at the same loss.
    mid = T.extreme_minimisers(mset, tree, pairs, ref_logp, ood_targets=(0.3,))[0]
    assert mid.loss == pytest.approx(low.loss, abs=1e-12)
    assert mid.ood_mass == pytest.approx(0.3, rel=1e-12)


@pytest.mark.parametrize("data", list(DATASETS))
@pytest.mark.parametrize("name", T.MINIMISER_OBJECTIVES)
def test_minimiser_sets_inside_and_outside(name: str, data: str) -> None:
    tree, pairs, _ = _setting(data)
    beta = 0.5
    mset = T.minimiser_set(name, tree, pairs, beta=beta)
    rep = T.identifiability(tree, pairs)
    # Inside: the witness plus any null(A) direction keeps the loss.
    moves = rep.null_basis @ _rand((rep.null_basis.shape[1], 20), 11, 3.0)
    inside = mset.witness_logratio.unsqueeze(0) + moves.T
    torch.testing.assert_close(
        _loss_of_logratio(name, pairs, inside, beta),
        torch.full((20,), mset.infimum, dtype=D),
        rtol=1e-9,
        atol=1e-9,
    )
    # Outside: random log-ratio vectors never beat the infimum.
    outside = _rand((200, tree.n_responses), 12, 3.0)
    assert bool((_loss_of_logratio(name, pairs, outside, beta) >= mset.infimum - 1e-12).all())
    # The witness is at distance 0; random margins are at positive distance, and for the
    # attained sets distance 0 ⇔ the infimum.
    h_out = outside @ mset.query.T
    if name == "dpo" and not mset.attained:
        assert math.isnan(float(T.margin_distance(mset, mset.witness_margins)))
        return
    assert float(T.margin_distance(mset, mset.witness_margins)) == pytest.approx(0.0, abs=1e-6)
    dist = T.margin_distance(mset, h_out[:10])
    excess = _loss_of_logratio(name, pairs, outside[:10], beta) - mset.infimum
    assert bool(((dist > 1e-6) == (excess > 1e-9)).all())


def test_minimiser_set_descriptions() -> None:
    tree = Tree.complete(3, 2)
    beta = 0.25
    one = _pairs(tree, [0], [1])
    ipo = T.minimiser_set("ipo", tree, one, beta=beta)
    assert ipo.attained and "target on every pair" in ipo.description
    torch.testing.assert_close(ipo.target_margins, torch.tensor([2.0], dtype=D))  # 1/(2β)
    assert ipo.infimum == pytest.approx(0.0, abs=1e-24)
    slic = T.minimiser_set("slic", tree, one, beta=beta)
    assert slic.infimum == 0.0 and "≥ 1/β" in slic.description
    # SLiC: margins ≥ 1/β = 4 inside (loss 0), below 4 outside.
    for h, inside in ((4.0, True), (10.0, True), (3.9, False)):
        value = objectives.loss(
            "slic", torch.tensor([h], dtype=D), *torch.zeros(3, 1, dtype=D), beta=beta
        )
        assert (float(value) == 0.0) == inside
    dpo = T.minimiser_set("dpo", tree, one, beta=beta)
    assert not dpo.attained and dpo.infimum == 0.0 and dpo.target_margins is None
    # DPO: the loss only approaches 0 as the margin grows.
    h = torch.tensor([1.0, 10.0, 100.0, 1000.0], dtype=D)
    values = objectives.loss("dpo", h, *torch.zeros(3, 4, dtype=D), beta=beta)
    assert bool((values > 0).all()) and bool((values[1:] < values[:-1]).all())


def test_bad_arguments() -> None:
    tree, pairs, ref_logp = _setting("one pair")
    with pytest.raises(ValueError, match="name must be one of"):
        T.minimiser_set("kto", tree, pairs, beta=0.5)
    with pytest.raises(ValueError, match="beta"):
        T.minimiser_set("dpo", tree, pairs, beta=-1.0)
    mset = T.minimiser_set("dpo", tree, pairs, beta=0.5)
    with pytest.raises(ValueError, match="ood_targets"):
        T.extreme_minimisers(mset, tree, pairs, ref_logp, ood_targets=(1.0,))
    with pytest.raises(ValueError, match="rewards"):
        T.optimal_response_logprobs(tree, ref_logp[None], torch.zeros(3), beta=0.5)


# ------------------------------------------------------------------------------ the paper's case


def test_three_response_example() -> None:
    ex = T.three_response_example(beta=0.1)
    assert ex.tree.n_responses == 3
    # (½, ½, 0): both margins are log(3/2) − log(3/2) = 0, so the loss is −log σ(0) = log 2.
    assert ex.half_loss == math.log(2.0)
    # (ε, ε, 1 − 2ε) → (0, 0, 1): margins log 3ε − log 3ε = 0 exactly for every ε.
    assert torch.equal(ex.family_losses, torch.full((4,), math.log(2.0), dtype=D))
    torch.testing.assert_close(ex.family_ood, 1 - 2 * torch.tensor(ex.epsilons, dtype=D))
    assert ex.infimum == pytest.approx(math.log(2.0), rel=1e-15)
    mset = T.minimiser_set("dpo", ex.tree, ex.pairs, beta=0.1)
    assert mset.attained
    torch.testing.assert_close(mset.target_margins, torch.zeros(2, dtype=D))
    rep = T.identifiability(ex.tree, ex.pairs)
    assert (rep.rank, rep.dim_policies, rep.unconstrained.tolist()) == (1, 1, [2])
    assert T.ood_mass_range(ex.tree, ex.pairs) == (0.0, 1.0)
