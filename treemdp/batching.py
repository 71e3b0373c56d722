"""Minibatches over a finite preference dataset, in epochs, so "a fraction of an epoch" means
what it does for the paper's one-epoch LLM runs (Rafailov et al. 2024: checkpoints within one
epoch of 92K pairs).

Each epoch visits every pair exactly once in a fresh seeded order, cut into batches of
``batch_size`` pairs (the last batch of an epoch may be smaller: no pair is dropped). Every run of
a batch of runs uses the same order, drawn from ``seed`` alone, so a run trains the same whether
it is trained alone or with others.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

__all__ = ["EpochSchedule"]


class EpochSchedule:
    """The pair indices of every training step, and the step → epoch bookkeeping.

    Args:
        n_pairs: P, pairs per run (>= 1).
        batch_size: pairs per step (>= 1); at least P means full batch (one step per epoch).
        seed: seed of the per-epoch shuffles.
    """

    def __init__(self, n_pairs: int, batch_size: int, *, seed: int = 0) -> None:
        if n_pairs < 1:
            raise ValueError(f"n_pairs must be >= 1; got {n_pairs}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1; got {batch_size}")
        self.n_pairs, self.batch_size, self.seed = n_pairs, min(batch_size, n_pairs), seed
        self.steps_per_epoch = math.ceil(n_pairs / self.batch_size)
        self._generator = torch.Generator().manual_seed(seed)
        self._epoch_order: list[Tensor] = []

    @property
    def full_batch(self) -> bool:
        """Whether every step sees every pair."""
        return self.batch_size >= self.n_pairs

    def _order(self, epoch: int) -> Tensor:
        while len(self._epoch_order) <= epoch:  # epochs are drawn in order, so lazily is exact
            self._epoch_order.append(
                torch.randperm(self.n_pairs, generator=self._generator, device="cpu")
            )
        return self._epoch_order[epoch]

    def batch(self, step: int) -> Tensor:
        """Pair indices used by optimiser step ``step`` (0-based). Shape (B,), B <= batch_size."""
        if step < 0:
            raise ValueError(f"step must be >= 0; got {step}")
        epoch, within = divmod(step, self.steps_per_epoch)
        lo = within * self.batch_size
        return self._order(epoch)[lo : lo + self.batch_size]

    def epoch_columns(self, steps: np.ndarray) -> dict[str, np.ndarray]:
        """``epoch`` (completed epochs) and ``fraction_of_epoch`` (pairs seen / P) after
        ``steps`` optimiser steps. Shapes (T,) each."""
        steps = np.asarray(steps, dtype=np.int64)
        epoch, within = np.divmod(steps, self.steps_per_epoch)
        seen = np.minimum(within * self.batch_size, self.n_pairs)
        return {"epoch": epoch, "fraction_of_epoch": epoch + seen / self.n_pairs}
