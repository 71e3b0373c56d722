"""The objective registry: one table from a name to a per-pair loss, shared by treemdp and llm.

Every direct alignment objective is a function of four log-probability tensors (policy and
reference, chosen and rejected response) and keyword hyperparameters. The margin

    h = [log π(y_w|x) − log π_ref(y_w|x)] − [log π(y_l|x) − log π_ref(y_l|x)]

is built once (``Margins``) and each registry entry turns it into per-pair losses. Adding an
objective is adding one ``Objective`` to ``REGISTRY`` and its tests; training code never branches
on the name.

Inputs may have any common (broadcastable) shape, e.g. ``(B,)`` pairs for the llm package or
``(R, P)`` runs × pairs for the tree engine; ``beta`` may be a float or a tensor that broadcasts
against them (one β per run). The result has the broadcast shape; callers reduce.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["REGISTRY", "REQUIRED", "Margins", "Objective", "get", "loss", "names"]

REQUIRED: Any = object()
"""Marks a hyperparameter with no default: the caller must pass it."""


@dataclass(frozen=True)
class Margins:
    """The four log-probability tensors of a batch of pairs and the quantities derived from them.

    Attributes:
        logp_chosen: log π(y_w|x). Shape (...,).
        logp_rejected: log π(y_l|x). Shape (...,).
        ref_logp_chosen: log π_ref(y_w|x). Shape (...,).
        ref_logp_rejected: log π_ref(y_l|x). Shape (...,).
    """

    logp_chosen: Tensor
    logp_rejected: Tensor
    ref_logp_chosen: Tensor
    ref_logp_rejected: Tensor

    @cached_property
    def chosen_logratio(self) -> Tensor:
        """log π(y_w|x)/π_ref(y_w|x)."""
        return self.logp_chosen - self.ref_logp_chosen

    @cached_property
    def rejected_logratio(self) -> Tensor:
        """log π(y_l|x)/π_ref(y_l|x)."""
        return self.logp_rejected - self.ref_logp_rejected

    @cached_property
    def h(self) -> Tensor:
        """The DAA margin h (Rafailov et al. 2024, §1): chosen log-ratio − rejected log-ratio."""
        return self.chosen_logratio - self.rejected_logratio


LossFn = Callable[..., Tensor]


@dataclass(frozen=True)
class Objective:
    """One registry entry.

    Attributes:
        name: registry key.
        fn: ``fn(margins, beta=..., **hyper) -> per-pair loss``.
        formula: the loss in one line, in terms of h, β and the hyperparameters.
        source: where the formula comes from.
        logp_form: "sum" if it expects summed response log-probs, "mean" for per-token means.
        needs_reference: whether π_ref's log-probs enter the loss.
        hyper: hyperparameter names and defaults (``REQUIRED`` where there is none).
    """

    name: str
    fn: LossFn
    formula: str
    source: str
    logp_form: Literal["sum", "mean"] = "sum"
    needs_reference: bool = True
    hyper: Mapping[str, Any] = field(default_factory=dict)


def _dpo(m: Margins, *, beta: Tensor) -> Tensor:
    return -F.logsigmoid(beta * m.h)


def _ipo(m: Margins, *, beta: Tensor) -> Tensor:
    return (m.h - 1.0 / (2.0 * beta)) ** 2


def _slic(m: Margins, *, beta: Tensor) -> Tensor:
    return torch.relu(1.0 - beta * m.h)


def _rdpo(
    m: Margins, *, beta: Tensor, alpha: float, len_chosen: Tensor, len_rejected: Tensor
) -> Tensor:
    length_gap = torch.as_tensor(len_chosen, dtype=m.h.dtype, device=m.h.device) - torch.as_tensor(
        len_rejected, dtype=m.h.dtype, device=m.h.device
    )
    return -F.logsigmoid(beta * m.h + alpha * length_gap)


REGISTRY: dict[str, Objective] = {
    o.name: o
    for o in [
        Objective(
            name="dpo",
            fn=_dpo,
            formula="-log σ(β h)",
            source="Rafailov et al. 2023, Eq. 7 (DPO)",
        ),
        Objective(
            name="ipo",
            fn=_ipo,
            formula="(h - 1/(2β))²",
            source="Azar et al. 2023, Eq. 17, summed log-probs as in the DPO reference code",
        ),
        Objective(
            name="slic",
            fn=_slic,
            formula="max(0, 1 - β h)",
            source="Zhao et al. 2023 (SLiC-HF) calibration hinge, without the optional SFT term",
        ),
        Objective(
            name="rdpo",
            fn=_rdpo,
            formula="-log σ(β h + α (|y_w| - |y_l|))",
            source=(
                "Park et al. 2024, Eq. 9 (R-DPO): the optimum of max E[r] - α|y| - β KL; "
                "Rafailov et al. 2024 print it with α of the opposite sign"
            ),
            hyper={"alpha": 0.01, "len_chosen": REQUIRED, "len_rejected": REQUIRED},
        ),
    ]
}


def names() -> list[str]:
    """Registered objective names, in registry order."""
    return list(REGISTRY)


def get(name: str) -> Objective:
    """The registry entry for ``name``; ValueError naming the known objectives otherwise."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise ValueError(f"objective must be one of {', '.join(REGISTRY)}; got {name!r}") from None


def check_beta(beta: float | Tensor) -> Tensor:
    """β as a tensor, after checking every entry is finite and > 0."""
    # A Python float goes straight to float64: as_tensor would round it to float32 first.
    b = beta if isinstance(beta, Tensor) else torch.as_tensor(beta, dtype=torch.float64)
    if not b.is_floating_point():
        b = b.to(torch.float64)
    if not bool(torch.all(torch.isfinite(b) & (b > 0))):
        raise ValueError(f"beta must be finite and > 0; got {beta!r}")
    return b


def resolve_hyper(objective: Objective, hyper: Mapping[str, Any]) -> dict[str, Any]:
    """Defaults merged with ``hyper``; ValueError for unknown or missing hyperparameters."""
    unknown = sorted(set(hyper) - set(objective.hyper))
    if unknown:
        allowed = ", ".join(objective.hyper) or "none"
        raise ValueError(
            f"objective {objective.name!r} takes hyperparameters [{allowed}]; got unknown {unknown}"
        )
    merged = {**objective.hyper, **hyper}
    missing = [k for k, v in merged.items() if v is REQUIRED]
    if missing:
        raise ValueError(f"objective {objective.name!r} needs hyperparameters {missing}")
    return merged


def loss(
    name: str,
    logp_chosen: Tensor,
    logp_rejected: Tensor,
    ref_logp_chosen: Tensor,
    ref_logp_rejected: Tensor,
    *,
    beta: float | Tensor,
    **hyper: Any,
) -> Tensor:
    """Per-pair loss of objective ``name``.

    Args:
        name: a key of ``REGISTRY`` (``names()`` lists them).
        logp_chosen: log π(y_w|x), summed or per-token mean as the entry's ``logp_form`` says.
            Shape (...,), broadcastable with the other three.
        logp_rejected: log π(y_l|x). Shape (...,).
        ref_logp_chosen: log π_ref(y_w|x). Shape (...,).
        ref_logp_rejected: log π_ref(y_l|x). Shape (...,).
        beta: β > 0, a float or a tensor broadcastable against the log-probs (one per run).
        **hyper: the entry's hyperparameters (see ``REGISTRY[name].hyper``).

    Returns:
        Per-pair losses with the broadcast shape of the inputs, e.g. (B,).
    """
    objective = get(name)
    b = check_beta(beta).to(dtype=torch.as_tensor(logp_chosen).dtype)
    kwargs = resolve_hyper(objective, hyper)
    margins = Margins(logp_chosen, logp_rejected, ref_logp_chosen, ref_logp_rejected)
    return objective.fn(margins, beta=b.to(device=margins.logp_chosen.device), **kwargs)
