"""The step losses of ``llm.train``: what one micro-batch contributes to the gradient.

``sft_loss`` (summed NLL of the chosen response, as in the DPO code) and ``DAALoss`` (a registry
objective, bound once with ``treemdp.objectives.bind``, on summed response log-probs against a
reference model or against reference log-probs computed once with ``precompute_reference``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import Tensor, nn
from tqdm import tqdm

from llm.data import Batch, Example, collate_pairs, collate_sft
from llm.logprobs import PairLogps, check_packing, concatenated_logps, response_logps
from llm.packing import PACKINGS
from treemdp import objectives

__all__ = ["DAALoss", "SFTLoss", "StepLoss", "precompute_reference", "sft_loss"]


class StepLoss(Protocol):
    """Σ over a micro-batch's examples of the per-example loss, plus metric sums.

    Losses whose ``packing`` is not ``off`` run padding-free forwards (``llm.packing``);
    ``check_packing`` compares them with padded forwards on one batch and raises
    ``PackingMismatchError`` if they differ.
    """

    packing: str

    def collate(self, examples: Sequence[Example], pad_id: int) -> Batch: ...

    def check_packing(self, policy: nn.Module, batch: Batch) -> None: ...

    def __call__(
        self, policy: nn.Module, batch: Batch, index: Tensor
    ) -> tuple[Tensor, dict[str, Tensor]]: ...


@dataclass(frozen=True)
class SFTLoss:
    """Supervised fine-tuning on the chosen responses: −Σ_t log π(y_w,t | x, y_w,<t) per example
    (the DPO code's SFT loss: summed, not per-token, negative log-likelihood).

    Attributes:
        packing: ``off`` or ``rows`` (padding-free forwards, ``llm.packing``); an SFT row has
            one response, so there are no pairs to share a prompt.
    """

    packing: str = "off"

    def __post_init__(self) -> None:
        if self.packing not in ("off", "rows"):
            raise ValueError(f"SFT packing must be 'off' or 'rows'; got {self.packing!r}")

    def collate(self, examples: Sequence[Example], pad_id: int) -> Batch:
        return collate_sft(examples, pad_id)

    def check_packing(self, policy: nn.Module, batch: Batch) -> None:
        check_packing(policy, *batch.tensors(), packing=self.packing)

    def __call__(
        self, policy: nn.Module, batch: Batch, index: Tensor
    ) -> tuple[Tensor, dict[str, Tensor]]:
        logp, n = response_logps(policy, *batch.tensors(), packing=self.packing)
        metrics = {"logps_chosen": logp.detach().sum(), "tokens_chosen": n.sum().float()}
        return -logp.sum(), metrics


sft_loss = SFTLoss()


@dataclass(frozen=True)
class DAALoss:
    """A registry objective on summed response log-probs (``treemdp.objectives.bind``).

    Attributes:
        objective: a name in ``treemdp.objectives.names()``.
        beta: β > 0.
        hyper: the objective's hyperparameters (e.g. ``alpha`` for rdpo); response lengths
            ``len_chosen``/``len_rejected`` are filled in from the batch when the entry takes them.
        reference: the frozen reference model, used when ``ref_table`` is None.
        ref_table: precomputed reference log-probs of the whole dataset (``precompute_reference``),
            indexed by example position.
        packing: ``off``, ``rows`` (padding-free forwards) or ``pairs`` (also one prompt per
            pair) for the policy and the reference model (``llm.packing``).
        bound: the objective bound to β and ``hyper`` (checked once, at construction).
    """

    objective: str
    beta: float
    hyper: dict[str, Any] = field(default_factory=dict)
    reference: nn.Module | None = None
    ref_table: PairLogps | None = None
    packing: str = "off"
    bound: objectives.BoundObjective = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.packing not in PACKINGS:
            raise ValueError(f"packing must be one of {', '.join(PACKINGS)}; got {self.packing!r}")
        bound = objectives.bind(self.objective, beta=self.beta, **self.hyper)
        object.__setattr__(self, "bound", bound)  # a frozen dataclass's derived field
        if bound.objective.needs_reference and self.reference is None and self.ref_table is None:
            raise ValueError(f"objective {self.objective!r} needs a reference model or ref_table")

    def collate(self, examples: Sequence[Example], pad_id: int) -> Batch:
        return collate_pairs(examples, pad_id)

    def check_packing(self, policy: nn.Module, batch: Batch) -> None:
        """The packed forward of the policy (and of the reference model, if any) against the
        padded one on ``batch``."""
        for model in (policy, self.reference):
            if model is not None:
                check_packing(model, *batch.tensors(), packing=self.packing)

    def reference_logps(self, batch: Batch, index: Tensor, like: PairLogps) -> PairLogps:
        """π_ref's log-probs of the batch: looked up, computed without gradient, or zeros for a
        reference-free objective."""
        if not self.bound.objective.needs_reference:
            zero = torch.zeros_like(like.chosen)
            return PairLogps(zero, zero, like.len_chosen, like.len_rejected)
        if self.ref_table is not None:  # kept on the CPU; the batch may live on a GPU
            t, i, dev = self.ref_table, index.cpu(), like.chosen.device
            return PairLogps(
                t.chosen[i].to(dev), t.rejected[i].to(dev), like.len_chosen, like.len_rejected
            )
        with torch.no_grad():
            ref = concatenated_logps(self.reference, *batch.tensors(), packing=self.packing)
        return PairLogps(
            *(x.to(like.chosen.device) for x in (ref.chosen, ref.rejected)),
            like.len_chosen,
            like.len_rejected,
        )

    def __call__(
        self, policy: nn.Module, batch: Batch, index: Tensor
    ) -> tuple[Tensor, dict[str, Tensor]]:
        pol = concatenated_logps(policy, *batch.tensors(), packing=self.packing)
        ref = self.reference_logps(batch, index, pol)
        margins = pol.margins(ref)
        # The registry takes summed log-probs; "mean" entries divide by the lengths themselves.
        bound = self.bound.with_lengths(pol.len_chosen, pol.len_rejected)
        losses = bound.loss(margins)
        with torch.no_grad():
            reward_c, reward_r = bound.rewards(margins)
            metrics = {
                "rewards_chosen": reward_c.sum(),
                "rewards_rejected": reward_r.sum(),
                "margins": (reward_c - reward_r).sum(),
                "reward_accuracy": (reward_c > reward_r).float().sum(),
                "logps_chosen": pol.chosen.sum(),
                "logps_rejected": pol.rejected.sum(),
            }
        return losses.sum(), metrics


def precompute_reference(
    reference: nn.Module,
    examples: Sequence[Example],
    *,
    micro_batch_size: int,
    pad_id: int,
    packing: str = "off",
) -> PairLogps:
    """Reference log-probs of every example once, before training (``packing``: see
    ``DAALoss``). Shapes (N,), on the CPU."""
    parts = []
    with torch.no_grad():
        for i in tqdm(range(0, len(examples), micro_batch_size), desc="reference", leave=False):
            b = collate_pairs(examples[i : i + micro_batch_size], pad_id)
            parts.append(concatenated_logps(reference, *b.tensors(), packing=packing))
    return PairLogps(
        *(
            torch.cat([getattr(p, k).cpu() for p in parts])
            for k in ("chosen", "rejected", "len_chosen", "len_rejected")
        )
    )


# ------------------------------------------------------------------------------------ loop
