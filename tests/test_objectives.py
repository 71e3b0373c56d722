"""The paper's objectives (dpo, ipo, slic, rdpo): values, invariants, gradients, bad input."""

import math

import pytest
import torch
from hypothesis import assume, given
from hypothesis import strategies as st

from treemdp import objectives
from treemdp.objectives import loss

finite = st.floats(-30, 30)


def margins_to_inputs(h: torch.Tensor):
    """Log-probs with margin h: policy chosen = h, everything else 0."""
    zero = torch.zeros_like(h)
    return h, zero, zero, zero


@given(st.sampled_from(["dpo", "ipo", "slic"]), finite, finite, finite, finite, st.floats(0.01, 5))
def test_swapping_chosen_and_rejected_negates_h(name, a, b, c, d, beta):
    t = [torch.tensor([v], dtype=torch.float64) for v in (a, b, c, d)]
    m = objectives.Margins(*t)
    swapped = objectives.Margins(t[1], t[0], t[3], t[2])
    torch.testing.assert_close(swapped.h, -m.h)


def test_dpo_is_log2_at_zero_margin_and_matches_a_hand_value():
    h = torch.tensor([0.0, 2.0], dtype=torch.float64)
    out = loss("dpo", *margins_to_inputs(h), beta=0.5)
    # β h = 1 → −log σ(1) = log(1 + e^{−1}) = 0.31326168751822286.
    torch.testing.assert_close(
        out, torch.tensor([math.log(2), 0.31326168751822286], dtype=torch.float64)
    )


def test_ipo_hand_value_and_vanishing_gradient_at_target():
    beta = 0.1  # target margin 1/(2β) = 5
    h = torch.tensor([5.0, 3.0], dtype=torch.float64, requires_grad=True)
    out = loss("ipo", *margins_to_inputs(h), beta=beta)
    torch.testing.assert_close(
        out.detach(), torch.tensor([0.0, 4.0], dtype=torch.float64)
    )  # (3−5)²
    (grad,) = torch.autograd.grad(out.sum(), h)
    assert grad[0].item() == 0.0 and grad[1].item() == pytest.approx(-4.0)


@given(st.floats(0.01, 10), st.floats(0, 100))
def test_slic_loss_and_gradient_vanish_once_beta_h_reaches_one(beta, extra):
    h = torch.tensor([1.0 / beta + extra], dtype=torch.float64, requires_grad=True)
    assume(beta * h.item() >= 1.0)  # 1/β rounded may fall a hair short of the hinge
    out = loss("slic", *margins_to_inputs(h), beta=beta)
    (grad,) = torch.autograd.grad(out.sum(), h)
    assert out.item() == 0.0 and grad.item() == 0.0


def test_slic_hand_value():
    h = torch.tensor([2.0], dtype=torch.float64)
    assert loss("slic", *margins_to_inputs(h), beta=0.1).item() == pytest.approx(0.8)  # 1 − 0.2


@given(finite, st.floats(0.01, 5), st.integers(1, 20))
def test_rdpo_with_equal_lengths_is_dpo(h, beta, length):
    t = torch.tensor([h], dtype=torch.float64)
    n = torch.tensor([float(length)])
    rdpo = loss("rdpo", *margins_to_inputs(t), beta=beta, alpha=0.3, len_chosen=n, len_rejected=n)
    torch.testing.assert_close(rdpo, loss("dpo", *margins_to_inputs(t), beta=beta))


def test_rdpo_sign_convention():
    # A longer chosen response gets α(|y_w| − |y_l|) added to β h (Park et al. 2024, Eq. 9).
    h = torch.zeros(1, dtype=torch.float64)
    out = loss(
        "rdpo",
        *margins_to_inputs(h),
        beta=1.0,
        alpha=0.5,
        len_chosen=torch.tensor([4.0]),
        len_rejected=torch.tensor([2.0]),
    )
    assert out.item() == pytest.approx(-math.log(1 / (1 + math.exp(-1.0))))


@pytest.mark.parametrize("name", ["dpo", "ipo", "slic", "rdpo"])
def test_gradcheck_float64(name):
    gen = torch.Generator().manual_seed(0)
    inputs = [
        torch.randn(5, dtype=torch.float64, generator=gen, requires_grad=True) for _ in range(4)
    ]
    if name == "slic":  # keep away from the hinge's kink, where the derivative is not defined
        inputs[0] = (inputs[0].detach() + torch.tensor([-3, -2, 30, 40, -5.0])).requires_grad_(True)
    hyper = (
        {"len_chosen": torch.arange(5.0), "len_rejected": torch.ones(5)} if name == "rdpo" else {}
    )
    assert torch.autograd.gradcheck(lambda *x: loss(name, *x, beta=0.7, **hyper), inputs)


@pytest.mark.parametrize("name", ["dpo", "ipo", "slic"])
def test_losses_and_gradients_stay_finite_for_huge_margins(name):
    h = torch.tensor([-1e4, 1e4], dtype=torch.float64, requires_grad=True)
    out = loss(name, *margins_to_inputs(h), beta=1.0)
    (grad,) = torch.autograd.grad(out.sum(), h)
    assert bool(torch.isfinite(out).all()) and bool(torch.isfinite(grad).all())


def test_beta_may_be_one_per_run():
    h = torch.zeros(3, 2, dtype=torch.float64)
    beta = torch.tensor([[0.1], [1.0], [10.0]], dtype=torch.float64)
    out = loss("ipo", *margins_to_inputs(h), beta=beta)
    torch.testing.assert_close(out, (1 / (2 * beta)).expand(3, 2) ** 2)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"name": "nope", "beta": 0.1}, "objective must be one of"),
        ({"name": "dpo", "beta": 0.0}, "beta must be finite and > 0"),
        ({"name": "dpo", "beta": -1.0}, "beta must be finite and > 0"),
        ({"name": "dpo", "beta": float("nan")}, "beta must be finite and > 0"),
        ({"name": "dpo", "beta": 0.1, "alpha": 1.0}, "unknown"),
        ({"name": "rdpo", "beta": 0.1}, "needs hyperparameters"),
    ],
)
def test_bad_arguments_name_the_argument(kwargs, message):
    z = torch.zeros(2, dtype=torch.float64)
    name = kwargs.pop("name")
    with pytest.raises(ValueError, match=message):
        loss(name, z, z, z, z, **kwargs)


def test_every_entry_documents_itself():
    for entry in objectives.REGISTRY.values():
        assert entry.formula and entry.source and entry.logp_form in ("sum", "mean")
