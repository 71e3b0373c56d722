"""Diagnostics of any DPO-family checkpoint against its reference (the math; no files written).

Teacher-forced, on preference pairs (x, y⁺, y⁻):

* the change of each response's summed log-prob, Δ⁺ = log π(y⁺|x) − log π_ref(y⁺|x) and Δ⁻ the
  same for y⁻; "likelihood displacement" is Δ⁺ < 0, and "both fall" is Δ⁺ < 0 and Δ⁻ < 0;
* the objective's own implicit reward margin and accuracy (``treemdp.objectives``);
* CHES, the centred hidden-embedding similarity of Razin et al. (ICLR 2025, "Unintentional
  Unalignment: Likelihood Displacement in Direct Preference Optimization", Def. 2), on the
  reference: with h⁺ = Σ_k h_{x, y⁺_<k} and h⁻ = Σ_k h_{x, y⁻_<k} the sums of the final hidden
  states that predict each response token,

      CHES = ⟨h⁺, h⁻⟩ − ‖h⁺‖²,
      CHES_normalised = ⟨h⁺, h⁻⟩ / (|y⁺| |y⁻|) − ‖h⁺‖² / |y⁺|²;

  a pair with a larger CHES is predicted to displace its chosen response more.

Sampled, on prompts (one policy sample each, at temperature 1): the reverse KL(π‖π_ref) with two
estimators of Schulman (2020): k1 = log π(y)/π_ref(y) and k3 = r − 1 − log r with
r = π_ref(y)/π(y) (unbiased, never negative), each with its standard error; the mean length; an
entropy proxy (−log π(y)/|y|, nats per token); ``ood_proxy``: the share of samples whose
reference log-prob falls below the 5% quantile of the data's chosen responses' reference
log-probs, and ``ood_proxy_per_token``, the same per token (so that length alone does not make a
sample look out of distribution). How well each tracks the exact OOD mass on the tree language is
measured in docs/diagnose.md.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from llm.data import Example, collate_pairs
from llm.evaluate import mean_se
from llm.logprobs import _padded_scoring, concatenated_logps
from treemdp import objectives
from treemdp.claims import statistics
from treemdp.diagnostics import OOD_QUANTILE, ches, pair_signals
from treemdp.objectives import Margins

__all__ = [
    "OOD_QUANTILE",
    "PairLogps64",
    "ches",
    "ches_scores",
    "kl_estimates",
    "ood_threshold",
    "pair_logps",
    "spearman",
    "teacher_forced",
]


@dataclass(frozen=True)
class PairLogps64:
    """Summed response log-probs of P pairs, float64 on the CPU, and the lengths in tokens.

    Attributes:
        chosen: Σ log π(y⁺|x). Shape (P,).
        rejected: Σ log π(y⁻|x). Shape (P,).
        len_chosen: |y⁺|. Shape (P,), int64.
        len_rejected: |y⁻|. Shape (P,), int64.
    """

    chosen: Tensor
    rejected: Tensor
    len_chosen: Tensor
    len_rejected: Tensor


@torch.no_grad()
def pair_logps(
    model: nn.Module, examples: Sequence[Example], *, pad_id: int, batch_size: int = 32
) -> PairLogps64:
    """Summed chosen and rejected log-probs of every pair under ``model`` (``llm.logprobs``)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1; got {batch_size}")
    parts = []
    for s in range(0, len(examples), batch_size):
        lp = concatenated_logps(
            model, *collate_pairs(examples[s : s + batch_size], pad_id).tensors()
        )
        parts.append((lp.chosen, lp.rejected, lp.len_chosen, lp.len_rejected))
    if not parts:
        raise ValueError("examples must be non-empty")
    c, r, lc, lr = (torch.cat([p[i].cpu() for p in parts]) for i in range(4))
    return PairLogps64(c.double(), r.double(), lc, lr)


@torch.no_grad()
def ches_scores(
    model: nn.Module, examples: Sequence[Example], *, pad_id: int, batch_size: int = 32
) -> tuple[Tensor, Tensor]:
    """``ches`` of every pair under ``model`` (the reference), from the final hidden states
    (``base_model``'s last_hidden_state, what the output projection reads) at the positions
    that predict each response token, summed in float64. Shapes (P,), (P,)."""
    out_c, out_n = [], []
    for s in range(0, len(examples), batch_size):
        chunk = examples[s : s + batch_size]
        b = collate_pairs(chunk, pad_id)
        device = next(model.parameters()).device
        tensors = [t.to(device) for t in b.tensors()]
        rows, h, _ = _padded_scoring(model, *tensors)
        n = 2 * len(chunk)
        sums = torch.zeros(n, h.shape[-1], dtype=torch.float64)
        sums.index_add_(0, rows.cpu(), h.double().cpu())
        counts = torch.bincount(rows.cpu(), minlength=n)
        c, cn = ches(
            sums[: len(chunk)], sums[len(chunk) :], counts[: len(chunk)], counts[len(chunk) :]
        )
        out_c.append(c)
        out_n.append(cn)
    return torch.cat(out_c), torch.cat(out_n)


def spearman(x: Tensor, y: Tensor) -> float:
    """Spearman rank correlation of two 1-D tensors: ``treemdp.claims.statistics.spearman``
    (average ranks for ties; NaN with fewer than 3 finite pairs or a constant variable)."""
    return statistics.spearman(x.double().numpy(), y.double().numpy())


def teacher_forced(
    policy: PairLogps64,
    reference: PairLogps64,
    *,
    objective: str = "dpo",
    beta: float = 0.1,
    hyper: dict | None = None,
) -> dict[str, float]:
    """The teacher-forced signals of one checkpoint from its and the reference's pair log-probs.

    Returns:
        ``chosen_logp_change``, ``rejected_logp_change`` (means over pairs of Δ⁺ and Δ⁻),
        ``chosen_falls_share``, ``both_fall_share``, ``margin`` (mean implicit-reward margin
        r(y⁺) − r(y⁻) of the objective, in its own log-prob form) and ``accuracy`` (share of
        pairs with a positive margin).
    """
    dc = policy.chosen - reference.chosen
    dr = policy.rejected - reference.rejected
    bound = objectives.bind(objective, beta=beta, **(hyper or {}))
    bound = bound.with_lengths(policy.len_chosen.double(), policy.len_rejected.double())
    rc, rr = bound.rewards(
        Margins(policy.chosen, policy.rejected, reference.chosen, reference.rejected)
    )
    return {name: float(v) for name, v in pair_signals(dc, dr, rc - rr).items()}


def kl_estimates(logp_policy: Tensor, logp_reference: Tensor) -> dict[str, float]:
    """Reverse KL(π‖π_ref) from samples y ~ π: k1 = log π(y) − log π_ref(y) and
    k3 = r − 1 − log r, r = π_ref(y)/π(y) (Schulman 2020), means with standard errors.

    Args:
        logp_policy: Σ log π(y) of each sample. Shape (n,).
        logp_reference: Σ log π_ref(y) of the same samples. Shape (n,).
    """
    log_r = (logp_reference - logp_policy).double()
    k1 = -log_r
    k3 = torch.expm1(log_r) - log_r
    out: dict[str, float] = {}
    out["kl_k1"], out["kl_k1_se"] = mean_se(k1)
    out["kl_k3"], out["kl_k3_se"] = mean_se(k3)
    return out


def ood_threshold(reference_chosen: Tensor, len_chosen: Tensor, *, per_token: bool) -> float:
    """The ``OOD_QUANTILE`` quantile of the data's chosen responses' reference log-prob: summed
    over the response (``per_token=False``, ``ood_proxy``) or per token (``ood_proxy_per_token``).
    Shapes (P,), (P,)."""
    x = reference_chosen.double()
    if per_token:
        x = x / len_chosen.double()
    return float(torch.quantile(x, OOD_QUANTILE))
