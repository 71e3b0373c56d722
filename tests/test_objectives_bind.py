"""The one entry to an objective: ``bind`` checks β and the hyperparameters once; the bound
objective's loss is the registry function's and its implicit rewards are the callers' former
recomputation, bit for bit."""

from __future__ import annotations

import pytest
import torch

from treemdp import objectives
from treemdp.objectives import REGISTRY, Margins

NAMES = list(REGISTRY)


def _random_pairs(dtype: torch.dtype, seed: int) -> tuple[Margins, torch.Tensor, torch.Tensor]:
    """Summed log-probs of 16 pairs (policy and reference) and their lengths in tokens."""
    g = torch.Generator().manual_seed(seed)
    logps = [-10 * torch.rand(16, generator=g, dtype=torch.float64).to(dtype) for _ in range(4)]
    lengths = [torch.randint(1, 9, (16,), generator=g) for _ in range(2)]
    return Margins(*logps), lengths[0], lengths[1]


def _old_rewards(name: str, beta: float, m: Margins, lc: torch.Tensor, lr: torch.Tensor):
    """What llm/train.py computed itself before ``BoundObjective.rewards``: β·(π − π_ref) in the
    entry's form (``PairLogps.form``), with zeros for π_ref when the entry is reference-free."""
    entry = REGISTRY[name]
    ref_c, ref_r = m.ref_logp_chosen, m.ref_logp_rejected
    if not entry.needs_reference:
        ref_c = ref_r = torch.zeros_like(m.logp_chosen)

    def form(c, r):
        return (c, r) if entry.logp_form == "sum" else (c / lc, r / lr)

    (pc, pr), (rc, rr) = form(m.logp_chosen, m.logp_rejected), form(ref_c, ref_r)
    return beta * (pc - rc), beta * (pr - rr)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name", NAMES)
def test_bound_rewards_equal_the_old_recomputation_bit_for_bit(name, dtype):
    for seed in range(3):
        m, lc, lr = _random_pairs(dtype, seed)
        bound = objectives.bind(name, beta=0.37).with_lengths(lc, lr)
        got = bound.rewards(m)
        for new, old in zip(got, _old_rewards(name, 0.37, m, lc, lr), strict=True):
            assert new.dtype == dtype
            assert torch.equal(new, old)


@pytest.mark.parametrize("name", NAMES)
def test_bound_loss_is_the_registry_function(name):
    m, lc, lr = _random_pairs(torch.float64, 7)
    lengths = objectives.length_hyper(name, lc, lr)
    beta = torch.tensor(0.8, dtype=torch.float64)
    expected = REGISTRY[name].fn(m, beta=beta, **{**REGISTRY[name].hyper, **lengths})
    bound = objectives.bind(name, beta=0.8).with_lengths(lc, lr)
    assert torch.equal(bound.loss(m), expected)
    args = (m.logp_chosen, m.logp_rejected, m.ref_logp_chosen, m.ref_logp_rejected)
    assert torch.equal(objectives.loss(name, *args, beta=0.8, **lengths), expected)


def test_reference_free_rewards_ignore_the_reference():
    m, lc, lr = _random_pairs(torch.float64, 1)
    shifted = Margins(m.logp_chosen, m.logp_rejected, m.ref_logp_chosen + 5, m.ref_logp_rejected)
    simpo = objectives.bind("simpo", beta=2.0).with_lengths(lc, lr)
    pairs = zip(simpo.rewards(m), simpo.rewards(shifted), strict=True)
    assert all(torch.equal(a, b) for a, b in pairs)
    # β·mean log π: SimPO's implicit reward (Meng et al. 2024, Eq. 4).
    assert torch.equal(simpo.rewards(m)[0], 2.0 * (m.logp_chosen / lc))


@pytest.mark.parametrize(
    ("beta", "shown"),
    [(0.0, "0.0"), (-1.0, "-1.0"), (float("nan"), "nan"), (float("inf"), "inf")],
)
def test_beta_out_of_range_is_refused_naming_argument_and_range(beta, shown):
    with pytest.raises(ValueError, match=f"beta must be finite and > 0; got {shown}$"):
        objectives.bind("dpo", beta=beta)


def test_a_tensor_of_betas_names_its_first_bad_entry():
    with pytest.raises(ValueError, match=r"beta must be finite and > 0; got -2.0$"):
        objectives.bind("ipo", beta=torch.tensor([[0.1], [-2.0], [0.0]]))


def test_beta_is_checked_once_per_bind_and_never_per_call(monkeypatch):
    calls = []
    check = objectives.check_beta
    monkeypatch.setattr(objectives, "check_beta", lambda b: calls.append(b) or check(b))
    bound = objectives.bind("ln_dpo", beta=0.5)
    m, lc, lr = _random_pairs(torch.float64, 2)
    for _ in range(3):
        step = bound.with_lengths(lc, lr)
        step.loss(m), step.rewards(m)
    assert len(calls) == 1


def test_bind_refuses_unknown_hyperparameters_and_loss_needs_the_lengths():
    with pytest.raises(ValueError, match=r"objective 'dpo' takes hyperparameters \[none\]"):
        objectives.bind("dpo", beta=0.1, gamma=1.0)
    with pytest.raises(ValueError, match="objective must be one of"):
        objectives.bind("ppo", beta=0.1)
    bound = objectives.bind("ipo_mean", beta=0.1)  # lengths may come later ...
    m, _, _ = _random_pairs(torch.float64, 3)
    with pytest.raises(ValueError, match=r"needs hyperparameters \['len_chosen', 'len_rejected'\]"):
        bound.loss(m)  # ... but must come before a loss
    with pytest.raises(ValueError, match="needs hyperparameters"):
        bound.rewards(m)  # a per-token-mean reward needs them too


def test_with_lengths_keeps_only_the_lengths_the_entry_takes():
    _, lc, lr = _random_pairs(torch.float64, 4)
    assert "len_chosen" not in objectives.bind("dpo", beta=0.1).with_lengths(lc, lr).hyper
    rpo = objectives.bind("rpo", beta=0.1).with_lengths(lc, lr).hyper
    assert rpo["len_chosen"] is lc and "len_rejected" not in rpo
