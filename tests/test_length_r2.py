"""weighted_r2 / logratio_length_r2: numpy's weighted polyfit as the oracle, invariants, hand
values, the undefined cases."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from treemdp.metrics import logratio_length_r2, weighted_r2
from treemdp.tree import Tree


def polyfit_r2(y: np.ndarray, x: np.ndarray, w: np.ndarray) -> float:
    """Independent oracle: np.polyfit minimises Σ (w_i' r_i)², so w' = √w gives weighted LS."""
    keep = w > 0
    y, x, w = y[keep], x[keep], w[keep]
    slope, intercept = np.polyfit(x, y, 1, w=np.sqrt(w))
    resid = y - (slope * x + intercept)
    centred = y - np.average(y, weights=w)
    return 1.0 - np.sum(w * resid**2) / np.sum(w * centred**2)


@given(st.integers(0, 2**31), st.integers(3, 30))
def test_weighted_r2_equals_numpy_weighted_polyfit(seed, n):
    rng = np.random.default_rng(seed)
    x = rng.integers(1, 6, size=(3, n)).astype(float)
    x[:, :2] = [1.0, 5.0]  # at least two distinct lengths
    y = 0.7 * x + rng.normal(size=(3, n))
    w = rng.dirichlet(np.ones(n), size=3)
    w[:, :2] += 0.1  # both distinct lengths carry weight
    got = weighted_r2(torch.tensor(y), torch.tensor(x), torch.tensor(w)).numpy()
    for r in range(3):
        assert math.isclose(got[r], polyfit_r2(y[r], x[r], w[r]), rel_tol=1e-9, abs_tol=1e-12)


def test_weighted_r2_hand_values_and_invariances():
    # y exactly linear in x on the support: R² = 1; the weight-0 entry (y = −inf) is ignored.
    x = torch.tensor([[1.0, 2.0, 3.0, 4.0]], dtype=torch.float64)
    y = torch.tensor([[2.0, 4.0, 6.0, -math.inf]], dtype=torch.float64)
    w = torch.tensor([[1.0, 1.0, 1.0, 0.0]], dtype=torch.float64)
    assert weighted_r2(y, x, w).item() == pytest.approx(1.0)
    # Hand value: x = (0, 1, 2), y = (0, 1, 0), equal weights: cov = 0, so R² = 0.
    x3 = torch.tensor([0.0, 1.0, 2.0], dtype=torch.float64)
    y3 = torch.tensor([[0.0, 1.0, 0.0]], dtype=torch.float64)
    w3 = torch.ones(1, 3, dtype=torch.float64)
    assert weighted_r2(y3, x3, w3).item() == pytest.approx(0.0, abs=1e-15)
    # Hand value: x = (0, 1, 2), y = (0, 0, 1), equal weights: x̄ = 1, ȳ = 1/3,
    # cov = (−1·−1/3 + 0 + 1·2/3)/3 = 1/3, var_x = 2/3, var_y = (1/9+1/9+4/9)/3 = 2/9
    # ⇒ R² = (1/9) / (2/3 · 2/9) = 3/4.
    y4 = torch.tensor([[0.0, 0.0, 1.0]], dtype=torch.float64)
    assert weighted_r2(y4, x3, w3).item() == pytest.approx(0.75)
    # Scaling the weights, shifting/scaling y (and x) leaves R² unchanged.
    rng = np.random.default_rng(1)
    y5 = torch.tensor(rng.normal(size=(2, 7)))
    x5 = torch.tensor(rng.normal(size=(2, 7)))
    w5 = torch.tensor(rng.random((2, 7)))
    base = weighted_r2(y5, x5, w5)
    torch.testing.assert_close(weighted_r2(3 * y5 - 2, 0.5 * x5 + 1, 10 * w5), base)


def test_weighted_r2_is_nan_where_undefined_and_rejects_bad_weights():
    x = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)
    w = torch.ones(2, 3, dtype=torch.float64)
    y = torch.tensor([[0.0, 0.0, 0.0], [5.0, 5.0, 5.0]], dtype=torch.float64)
    assert torch.isnan(weighted_r2(y, x, w)).all()  # y constant: no variance to explain
    one_length = torch.tensor([[1.0, 0.0, 0.0]], dtype=torch.float64)  # all weight on x = 1
    assert torch.isnan(weighted_r2(torch.tensor([[1.0, 2.0, 3.0]]).double(), x, one_length)).all()
    with pytest.raises(ValueError, match="weights must be >= 0"):
        weighted_r2(y, x, -w)
    with pytest.raises(ValueError, match="positive sum"):
        weighted_r2(y, x, torch.zeros_like(w))
    with pytest.raises(ValueError, match="shape"):
        weighted_r2(y, x[:2], w)


def test_logratio_length_r2_nan_at_reference_and_matches_oracle_on_a_tree():
    tree = Tree.with_stop(3, 3)
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(2, tree.n_responses, generator=gen, dtype=torch.float64)
    logp = torch.log_softmax(logits, -1)  # any distribution over responses will do
    ref = torch.log_softmax(torch.randn(2, tree.n_responses, generator=gen).double(), -1)
    assert torch.isnan(logratio_length_r2(tree, ref, ref)).all()  # π = π_ref: log-ratio ≡ 0
    got = logratio_length_r2(tree, logp, ref)
    length = tree.response_length.double().numpy()
    for r in range(2):
        want = polyfit_r2((logp[r] - ref[r]).numpy(), length, torch.exp(logp[r]).numpy())
        assert math.isclose(float(got[r]), want, rel_tol=1e-9)
    # A log-ratio that is exactly a linear function of length gives R² = 1.
    tilted = torch.log_softmax(ref + 0.3 * tree.response_length.double(), -1)
    torch.testing.assert_close(logratio_length_r2(tree, tilted, ref), torch.ones(2).double())


def test_uniform_weights_give_the_ordinary_r_squared():
    """The LLM evaluation's R² of log-ratio on length over samples (every sample weighted alike)."""

    def r2(y, x):
        return float(weighted_r2(y[None].double(), x[None].double(), torch.ones(1, len(y)))[0])

    x = torch.arange(50.0)
    assert math.isclose(r2(3 * x - 2, x), 1.0, rel_tol=1e-12)
    # hand value: y = (1, 0, 1, 0), x = (0, 1, 2, 3): corr = -0.4472, R² = 0.2
    assert math.isclose(r2(torch.tensor([1.0, 0, 1, 0]), torch.arange(4.0)), 0.2)
    assert math.isnan(r2(x, torch.ones(50)))
