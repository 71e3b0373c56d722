"""Every registry entry: documented, hand-computed values, limits, swap relations, finiteness,
gradients (gradcheck in float64) and the generated table."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest
import torch

from treemdp import objectives
from treemdp.objectives import REGISTRY, REQUIRED, loss

D = torch.float64
NAMES = objectives.names()


def sp(x: float) -> float:
    """−log σ(x) = log(1 + e^{−x}) (softplus of −x), the hand-computation building block."""
    return math.log1p(math.exp(-x))


def sig(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def t(*xs: float) -> torch.Tensor:
    return torch.tensor(xs, dtype=D)


# Lengths for the entries that need them (chosen 2 tokens, rejected 4).
LENS = {"len_chosen": 2.0, "len_rejected": 4.0}


def required(name: str) -> dict[str, float]:
    """The required hyperparameters of an entry, filled with LENS."""
    return {k: LENS[k] for k, v in REGISTRY[name].hyper.items() if v is REQUIRED}


# The common point: log π(y_w) = −1, log π(y_l) = −3, log π_ref = −1.5 for both, so
# ℓ_w = 0.5, ℓ_l = −1.5, h = 2; with β = 0.5, z = β h = 1; with β = 0.25, z = 0.5.
POINT = (t(-1.0), t(-3.0), t(-1.5), t(-1.5))

HAND = [
    # (name, β, hyper, expected, derivation)
    ("dpo", 0.5, {}, sp(1.0)),  # −log σ(1)
    ("cdpo", 0.5, {"epsilon": 0.1}, 0.9 * sp(1.0) + 0.1 * sp(-1.0)),  # −.9 logσ(1) −.1 logσ(−1)
    ("robust_dpo", 0.5, {"epsilon": 0.1}, (0.9 * sp(1.0) - 0.1 * sp(-1.0)) / 0.8),
    ("ipo", 0.5, {}, 1.0),  # (h − 1/(2β))² = (2 − 1)²
    # h̄ = 0.5/2 − (−1.5)/4 = 0.625; (0.625 − 1)² = 0.140625
    ("ipo_mean", 0.5, LENS, 0.140625),
    ("ipo_paper", 0.25, {}, 0.25),  # (βh − 1)² = (0.5 − 1)²
    ("slic", 0.25, {}, 0.5),  # max(0, 1 − 0.5)
    # −log σ(βh + α(|y_w| − |y_l|)) = −log σ(1 + 0.01·(2 − 4)) = −log σ(0.98)
    ("rdpo", 0.5, {"alpha": 0.01, **LENS}, sp(0.98)),
    ("ln_dpo", 0.5, LENS, sp(0.5 * 0.625)),  # −log σ(β h̄), h̄ = 0.625
    # reference-free: β(−1/2 − (−3/4)) − γ = 0.5·0.25 − 0.5 = −0.375
    ("simpo", 0.5, {"gamma": 0.5, **LENS}, sp(-0.375)),
    # −log σ(1) − α·log π(y_w)/|y_w| = sp(1) − (−1/2)
    ("rpo", 0.5, {"alpha": 1.0, "len_chosen": 2.0}, sp(1.0) + 0.5),
    # β[(e^{0.5} − e^{−1.5}) + (0.5 + 1.5)] = 0.5·(e^{.5} − e^{−1.5} + 2) ≈ 1.7128 < 2R = 2
    ("chipo", 0.5, {"r_max": 1.0}, sp(0.5 * (math.exp(0.5) - math.exp(-1.5) + 2.0))),
    ("chipo", 0.5, {"r_max": 0.5}, sp(1.0)),  # the same link clipped at 2R = 1
    # σ(1)[log σ(1) − log(1−ε)] + σ(−1)[log σ(−1) − log ε], ε = 1e-3
    (
        "exo",
        0.5,
        {"epsilon": 1e-3},
        sig(1) * (math.log(sig(1)) - math.log(0.999))
        + sig(-1) * (math.log(sig(-1)) - math.log(1e-3)),
    ),
    # βℓ_w = 0.25, βℓ_l = −0.75: −logσ(.25) − ½logσ(−.25) − ½logσ(.75)
    ("nca", 0.5, {}, sp(0.25) + 0.5 * sp(-0.25) + 0.5 * sp(0.75)),
    # −logσ(0.25 − 0.1) − logσ(−(−0.75 − 0.1)) = sp(0.15) + sp(0.85)
    ("bco", 0.5, {"delta": 0.1}, sp(0.15) + sp(0.85)),
    # δ = batch mean of (0.25, −0.75) = −0.25: sp(0.5) + sp(0.5)
    ("bco", 0.5, {}, 2 * sp(0.5)),
    ("sppo_hard", 0.5, {}, 0.5),  # (0.5 − 1)² + (−1.5 + 1)²
    ("apo_zero", 0.5, {}, 1 - sig(0.25) + sig(-0.75)),
    ("apo_down", 0.5, {}, sig(0.25) + 1 - sig(1.0)),
    # (1 − σ(z/τ))·(−log σ(z)) + σ(z/τ)·e^{−z}, z = 1, τ = 0.05
    ("discopop", 0.5, {"tau": 0.05}, (1 - sig(20)) * sp(1.0) + sig(20) * math.exp(-1)),
    # 1 − σ(β(ℓ_w − z₀)) + 1 − σ(β(z₀ − ℓ_l)), z₀ = 0.1: 2 − σ(0.2) − σ(0.8)
    ("kto", 0.5, {"reference_point": 0.1}, 2 - sig(0.2) - sig(0.8)),
    # z₀ = max(0, mean(0.5, −1.5)) = 0: 2 − σ(0.25) − σ(0.75)
    ("kto", 0.5, {}, 2 - sig(0.25) - sig(0.75)),
]


def test_every_entry_is_documented_and_listed() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "treemdp.objectives"], capture_output=True, text=True, check=True
    ).stdout
    assert out.splitlines()[0].startswith("| name |")
    for name, o in REGISTRY.items():
        assert o.name == name
        assert o.formula and o.source
        assert o.logp_form in ("sum", "mean")
        assert isinstance(o.needs_reference, bool)
        if o.logp_form == "mean":
            assert {"len_chosen", "len_rejected"} <= set(o.hyper)
        assert f"| `{name}` |" in out


def test_every_entry_has_a_hand_computed_value() -> None:
    assert {case[0] for case in HAND} == set(NAMES)


@pytest.mark.parametrize(("name", "beta", "hyper", "expected"), HAND)
def test_hand_computed(name: str, beta: float, hyper: dict, expected: float) -> None:
    got = loss(name, *POINT, beta=beta, **{**required(name), **hyper})
    assert got.item() == pytest.approx(expected, rel=1e-12, abs=1e-14)


# ------------------------------------------------------------------------------ limits


def _rand(n: int = 6, seed: int = 0) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    return tuple(-3 * torch.rand(n, generator=g, dtype=D) for _ in range(4))


def test_limits_that_reduce_to_dpo() -> None:
    x = _rand()
    dpo = loss("dpo", *x, beta=0.3)
    ones = {"len_chosen": torch.ones(6, dtype=D), "len_rejected": torch.ones(6, dtype=D)}
    same = {"len_chosen": torch.full((6,), 5.0, dtype=D), "len_rejected": 5.0}
    torch.testing.assert_close(loss("cdpo", *x, beta=0.3, epsilon=0.0), dpo, rtol=0, atol=0)
    torch.testing.assert_close(loss("robust_dpo", *x, beta=0.3, epsilon=0.0), dpo, rtol=0, atol=0)
    torch.testing.assert_close(loss("rdpo", *x, beta=0.3, alpha=0.7, **same), dpo)
    torch.testing.assert_close(loss("ln_dpo", *x, beta=0.3, **ones), dpo)
    torch.testing.assert_close(loss("rpo", *x, beta=0.3, alpha=0.0, len_chosen=3.0), dpo)
    torch.testing.assert_close(loss("ipo_mean", *x, beta=0.3, **ones), loss("ipo", *x, beta=0.3))
    # SimPO is DPO with a zero reference at γ = 0 and unit lengths, whatever reference is passed.
    lc, lr, rc, rr = x
    zero = torch.zeros_like(lc)
    torch.testing.assert_close(
        loss("simpo", lc, lr, rc, rr, beta=0.3, gamma=0.0, **ones),
        loss("dpo", lc, lr, zero, zero, beta=0.3),
    )
    # χPO: φ(u) = u + log u → log u as u → 0; with ratios e^{−40} the u term is < 1e-17.
    far = (lc - 40.0, lr - 40.0, rc, rr)
    torch.testing.assert_close(
        loss("chipo", *far, beta=0.3, r_max=1e6), loss("dpo", *far, beta=0.3), rtol=1e-14, atol=0
    )


def test_other_limits_and_optima() -> None:
    x = _rand()
    h = (x[0] - x[2]) - (x[1] - x[3])
    # ipo_paper is β²(h − 1/β)²: the same parabola as Azar's with twice the target margin.
    torch.testing.assert_close(loss("ipo_paper", *x, beta=0.3), 0.09 * (h - 1 / 0.3) ** 2)
    # cDPO at ε = ½ cannot tell chosen from rejected: symmetric in h.
    swapped = (x[1], x[0], x[3], x[2])
    torch.testing.assert_close(
        loss("cdpo", *x, beta=0.3, epsilon=0.5), loss("cdpo", *swapped, beta=0.3, epsilon=0.5)
    )
    # Known optima: IPO stops at h = 1/(2β); EXO at βh = log((1−ε)/ε) with loss 0; SPPO at
    # ℓ_w = 1/(2β), ℓ_l = −1/(2β).
    beta, eps = 0.3, 1e-3
    for name, h_star, hyper in (
        ("ipo", 1 / (2 * beta), {}),
        ("exo", math.log((1 - eps) / eps) / beta, {"epsilon": eps}),
    ):
        hh = torch.tensor(h_star, dtype=D, requires_grad=True)
        value = loss(name, hh, t(0.0), t(0.0), t(0.0), beta=beta, **hyper)
        (grad,) = torch.autograd.grad(value.sum(), hh)
        assert value.item() == pytest.approx(0.0, abs=1e-12)
        assert grad.item() == pytest.approx(0.0, abs=1e-9)
    c = 0.5 / beta
    sppo = loss("sppo_hard", t(c - 1), t(-c - 2), t(-1.0), t(-2.0), beta=beta)
    assert sppo.item() == pytest.approx(0.0, abs=1e-24)


# ------------------------------------------------------------------------------ swap


def _swap_relations(x: tuple[torch.Tensor, ...], beta: float) -> dict:
    """name → (hyper, expected L(x) − L(swap x)) or (hyper, ("sum", L + L_swap))."""
    lc, lr, rc, rr = x
    lw, ll = lc - rc, lr - rr
    h = lw - ll
    z = beta * h
    eps = 0.2
    gap = LENS["len_chosen"] - LENS["len_rejected"]
    phi = torch.exp(lw) - torch.exp(ll) + h
    return {
        # −log σ(z) + log σ(−z) = −z, so every logistic loss in h is antisymmetric up to −z.
        "dpo": ({}, -z),
        "cdpo": ({"epsilon": eps}, -(1 - 2 * eps) * z),
        "robust_dpo": ({"epsilon": eps}, -z / (1 - 2 * eps)),
        "ipo": ({}, -2 * h / beta),  # (h − c)² − (h + c)² = −4ch, c = 1/(2β)
        "ipo_paper": ({}, -4 * z),  # (z − 1)² − (z + 1)²
        "ipo_mean": (LENS, None),  # lengths swap too: checked through h̄ below
        "rdpo": ({"alpha": 0.3, **LENS}, -(z + 0.3 * gap)),
        "ln_dpo": (LENS, -beta * (lw / 2.0 - ll / 4.0)),
        "sppo_hard": ({}, -2 * h / beta),  # −4c ℓ_w + 4c ℓ_l
        "bco": ({"delta": 0.1}, -z),  # the two −z terms telescope: −(r_w − δ) − (δ − r_l)
        "exo": ({"epsilon": eps}, -torch.tanh(z / 2) * math.log((1 - eps) / eps)),
        "chipo": ({"r_max": 1e6}, -beta * phi),
        "apo_zero": ({}, ("sum", 2.0)),  # σ(−x) + σ(x) = 1 twice
        "kto": ({"reference_point": 0.1}, ("sum", 2.0)),  # λ_D + λ_U when λ_D = λ_U
    }


def test_swap_relations() -> None:
    x = _rand(seed=3)
    swapped = (x[1], x[0], x[3], x[2])
    beta = 0.7
    for name, (hyper, expected) in _swap_relations(x, beta).items():
        swap_hyper = dict(hyper)
        if "len_chosen" in hyper:
            swap_hyper["len_chosen"], swap_hyper["len_rejected"] = (
                hyper["len_rejected"],
                hyper["len_chosen"],
            )
        a = loss(name, *x, beta=beta, **hyper)
        b = loss(name, *swapped, beta=beta, **swap_hyper)
        if expected is None:  # ipo_mean: (h̄ − c)² − (h̄ + c)² = −4c h̄
            hbar = (x[0] - x[2]) / 2.0 - (x[1] - x[3]) / 4.0
            expected = -2 * hbar / beta
        if isinstance(expected, tuple):
            torch.testing.assert_close(a + b, torch.full_like(a, expected[1]), msg=name)
        else:
            torch.testing.assert_close(a - b, expected, msg=name)


# ------------------------------------------------------------------------------ numerics


@pytest.mark.parametrize("name", NAMES)
def test_finite_for_huge_margins(name: str) -> None:
    """Loss and gradient stay finite for log-ratios of ±1e4 (margins of ±1e4 and ±2e4)."""
    big = 1e4
    cases = [
        (0.0, -big, 0.0, 0.0),  # h = +1e4 (rejected log-ratio −1e4)
        (-big, 0.0, 0.0, 0.0),  # h = −1e4
        (0.0, 0.0, -big, 0.0),  # chosen log-ratio +1e4
        (0.0, -big, -big, 0.0),  # ℓ_w = +1e4, ℓ_l = −1e4
        (-big, 0.0, 0.0, -big),  # ℓ_w = −1e4, ℓ_l = +1e4
    ]
    rows = torch.tensor(cases, dtype=D).T.contiguous()
    lc, lr = rows[0].clone().requires_grad_(True), rows[1].clone().requires_grad_(True)
    for beta in (0.01, 0.1, 2.0):
        value = loss(name, lc, lr, rows[2], rows[3], beta=beta, **required(name))
        assert bool(torch.isfinite(value).all()), (name, beta, value)
        grads = torch.autograd.grad(value.sum(), (lc, lr))
        assert all(bool(torch.isfinite(g).all()) for g in grads), (name, beta, grads)


GRAD_HYPER = {"bco": {"delta": 0.05}, "kto": {"reference_point": 0.2}}


@pytest.mark.parametrize("name", NAMES)
def test_gradcheck(name: str) -> None:
    g = torch.Generator().manual_seed(7)
    inputs = tuple(
        (-2 * torch.rand(5, generator=g, dtype=D)).requires_grad_(True) for _ in range(4)
    )
    hyper = {**required(name), **GRAD_HYPER.get(name, {})}
    assert torch.autograd.gradcheck(lambda *x: loss(name, *x, beta=0.6, **hyper), inputs)


def test_batch_reference_points_equal_their_explicit_value() -> None:
    x = tuple(v.reshape(2, 3) for v in _rand())
    lw, ll = x[0] - x[2], x[1] - x[3]
    z0 = torch.cat([lw, ll], -1).mean(-1, keepdim=True).clamp(min=0)
    delta = 0.4 * torch.cat([lw, ll], -1).mean(-1, keepdim=True)
    torch.testing.assert_close(
        loss("kto", *x, beta=0.4), loss("kto", *x, beta=0.4, reference_point=z0)
    )
    torch.testing.assert_close(loss("bco", *x, beta=0.4), loss("bco", *x, beta=0.4, delta=delta))


def test_reference_free_entries_ignore_the_reference() -> None:
    x = _rand()
    other = (x[0], x[1], x[2] + 5.0, x[3] - 2.0)
    for name, o in REGISTRY.items():
        if not o.needs_reference:
            torch.testing.assert_close(
                loss(name, *x, beta=0.5, **required(name)),
                loss(name, *other, beta=0.5, **required(name)),
            )


@pytest.mark.parametrize(
    ("name", "hyper", "word"),
    [
        ("cdpo", {"epsilon": 0.6}, "epsilon"),
        ("robust_dpo", {"epsilon": 0.5}, "epsilon"),
        ("exo", {"epsilon": 0.0}, "epsilon"),
        ("discopop", {"tau": 0.0}, "tau"),
        ("chipo", {"r_max": -1.0}, "r_max"),
        ("ln_dpo", {"len_chosen": 0.0, "len_rejected": 1.0}, "len_chosen"),
        ("simpo", {"len_chosen": 1.0, "len_rejected": -1.0}, "len_rejected"),
        ("rpo", {"len_chosen": 0.0}, "len_chosen"),
        ("ipo_mean", {}, "len_chosen"),
    ],
)
def test_bad_hyperparameters_name_the_argument(name: str, hyper: dict, word: str) -> None:
    with pytest.raises(ValueError, match=word):
        loss(name, *POINT, beta=0.5, **hyper)


def test_smoke_every_entry_trains_on_a_tree() -> None:
    """Smoke: train() hands lengths to every entry that declares them, for every entry."""
    from treemdp.problem import ProblemSpec, build_problem
    from treemdp.train import RunSpec, train
    from treemdp.tree import Tree

    tree = Tree.from_sequences([(0,), (1, 0), (1, 1), (2, 0, 1), (2, 0, 0), (2, 1)])
    problem = build_problem(tree, [0], ProblemSpec(policy="tabular", reference="uniform", pairs=2))
    problem = problem.select([0] * len(NAMES))
    specs = [RunSpec(n, 0.5, 0.05) for n in NAMES]
    frame = train(problem, specs, steps=3, log_every=3).frame
    assert set(frame["objective"]) == set(NAMES)
    assert frame["loss"].notna().all()
