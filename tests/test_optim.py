"""The batched optimisers equal torch.optim's, one learning rate per run."""

import pytest
import torch

from treemdp.optim import make_optimizer


def quadratic_grads(theta):
    """Gradient of Σ (θ − 1)⁴ + sin θ: non-trivial curvature, deterministic."""
    return 4 * (theta - 1) ** 3 + torch.cos(theta)


@pytest.mark.parametrize(
    ("name", "reference"),
    [
        ("sgd", lambda p, lr: torch.optim.SGD([p], lr=lr)),
        ("adam", lambda p, lr: torch.optim.Adam([p], lr=lr)),
        ("rmsprop", lambda p, lr: torch.optim.RMSprop([p], lr=lr)),
    ],
)
def test_matches_torch_optim_per_run(name, reference):
    gen = torch.Generator().manual_seed(0)
    start = torch.randn(3, 4, dtype=torch.float64, generator=gen)
    lrs = [0.01, 0.003, 0.02]
    mine = start.clone()
    opt = make_optimizer(name, torch.tensor(lrs, dtype=torch.float64), 3)
    theirs = [start[r].clone().requires_grad_(True) for r in range(3)]
    ref_opts = [reference(p, lr) for p, lr in zip(theirs, lrs, strict=True)]
    for _ in range(25):
        opt.step(mine, quadratic_grads(mine))
        for p, o in zip(theirs, ref_opts, strict=True):
            o.zero_grad()
            p.grad = quadratic_grads(p.detach())
            o.step()
    torch.testing.assert_close(mine, torch.stack([p.detach() for p in theirs]), rtol=0, atol=1e-13)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("adagrad", 0.1, 2), "optimizer must be one of"),
        (("adam", 0.0, 2), "lr must be finite and > 0"),
        (("adam", [0.1, 0.2, 0.3], 2), "one per run"),
    ],
)
def test_bad_arguments(args, message):
    with pytest.raises(ValueError, match=message):
        make_optimizer(*args)
