"""Element-wise optimisers over a batch of runs, with one learning rate per run.

``torch.optim`` applies one learning rate to a whole tensor; a sweep needs one per run, so the
three update rules are written out here. Each is element-wise, so R runs stepped together are
exactly R runs stepped alone. Defaults follow torch.optim (Adam: β1 = 0.9, β2 = 0.999, ε = 1e-8;
RMSProp: α = 0.99, ε = 1e-8).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

__all__ = ["OPTIMIZERS", "Optimizer", "make_optimizer"]

OPTIMIZERS = ("sgd", "adam", "rmsprop")


@dataclass
class Optimizer:
    """State of one optimiser over parameters θ of shape (R, ...).

    Attributes:
        name: "sgd", "adam" or "rmsprop".
        lr: learning rate per run. Shape (R,).
        betas: Adam's moment decays.
        alpha: RMSProp's square-average decay.
        eps: denominator guard.
    """

    name: str
    lr: Tensor
    betas: tuple[float, float] = (0.9, 0.999)
    alpha: float = 0.99
    eps: float = 1e-8
    step_count: int = 0
    state: dict[str, Tensor] = field(default_factory=dict)

    @torch.no_grad()
    def step(self, theta: Tensor, grad: Tensor) -> None:
        """Update θ in place from its gradient. Both shape (R, ...)."""
        lr = self.lr.view(-1, *([1] * (theta.dim() - 1))).to(theta.dtype)
        self.step_count += 1
        if self.name == "sgd":
            theta.sub_(lr * grad)
        elif self.name == "adam":
            b1, b2 = self.betas
            m = self.state.setdefault("m", torch.zeros_like(theta))
            v = self.state.setdefault("v", torch.zeros_like(theta))
            m.mul_(b1).add_(grad, alpha=1 - b1)
            v.mul_(b2).addcmul_(grad, grad, value=1 - b2)
            m_hat = m / (1 - b1**self.step_count)
            v_hat = v / (1 - b2**self.step_count)
            theta.sub_(lr * m_hat / (v_hat.sqrt() + self.eps))
        else:  # rmsprop
            v = self.state.setdefault("v", torch.zeros_like(theta))
            v.mul_(self.alpha).addcmul_(grad, grad, value=1 - self.alpha)
            theta.sub_(lr * grad / (v.sqrt() + self.eps))


def make_optimizer(name: str, lr: float | Sequence[float] | Tensor, n_runs: int) -> Optimizer:
    """An optimiser for ``n_runs`` runs; ``lr`` is one value or one per run (all > 0)."""
    if name not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {', '.join(OPTIMIZERS)}; got {name!r}")
    if isinstance(lr, Tensor) and lr.dtype != torch.float64:
        raise ValueError(f"lr must be a float, floats or a float64 tensor; got {lr.dtype}")
    lr_t = torch.as_tensor(lr, dtype=torch.float64).flatten()
    if lr_t.numel() == 1:
        lr_t = lr_t.expand(n_runs).clone()
    if lr_t.numel() != n_runs:
        raise ValueError(
            f"lr must be one value or {n_runs} values (one per run); got {lr_t.numel()}"
        )
    if not bool(torch.all(torch.isfinite(lr_t) & (lr_t > 0))):
        raise ValueError(f"lr must be finite and > 0; got {lr!r}")
    return Optimizer(name, lr_t)
