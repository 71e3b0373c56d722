"""The objective registry: one table from a name to a per-pair loss, shared by treemdp and llm.

Every direct alignment objective is a function of four log-probability tensors (policy and
reference, chosen and rejected response) and keyword hyperparameters. The margin

    h = [log π(y_w|x) − log π_ref(y_w|x)] − [log π(y_l|x) − log π_ref(y_l|x)]

is built once (``Margins``) and each registry entry turns it into per-pair losses. Adding an
objective is adding one ``Objective`` to ``REGISTRY`` and its tests; training code never branches
on the name.

One entry point: ``bind(name, beta=..., **hyper)`` checks the name, β and the hyperparameters
once and returns a ``BoundObjective`` whose ``loss(margins)`` gives per-pair losses and whose
``rewards(margins)`` gives the implicit rewards in the entry's own log-prob form; response lengths
join with ``.with_lengths(len_chosen, len_rejected)``. ``loss(name, ...)`` is the one-call form.

Notation used in every formula (also in ``python -m treemdp.objectives`` and docs/objectives.md):

    ℓ_w = log π(y_w|x) − log π_ref(y_w|x)   chosen log-ratio (summed over tokens)
    ℓ_l = log π(y_l|x) − log π_ref(y_l|x)   rejected log-ratio
    h   = ℓ_w − ℓ_l                          the DAA margin; z = β h
    |y| = response length (tokens; the leaf depth in a tree)
    ℓ̄   = ℓ / |y|, h̄ = ℓ̄_w − ℓ̄_l             per-token-mean log-ratios and margin

Log-prob forms. Every entry takes *summed* response log-probs. An entry whose ``logp_form`` is
"mean" uses per-token means inside its formula and declares ``len_chosen``/``len_rejected``
(REQUIRED) in its ``hyper``: mean = sum / length, exactly the per-token mean TRL computes from its
token mask.

Sign conventions. Losses are minimised; a positive margin h means the policy prefers y_w more than
the reference does. Length terms follow each paper (see the entry's ``source``).

Inputs may have any common (broadcastable) shape, e.g. ``(B,)`` pairs for the llm package or
``(R, P)`` runs × pairs for the tree engine; ``beta`` may be a float or a tensor that broadcasts
against them (one β per run). The result has the broadcast shape; callers reduce. Entries whose
reference point is a batch statistic (KTO, BCO) take it over the last axis (the pairs of a run).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "REGISTRY",
    "REQUIRED",
    "BoundObjective",
    "Margins",
    "Objective",
    "bind",
    "check_beta",
    "get",
    "length_hyper",
    "loss",
    "markdown_table",
    "names",
]

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

    def select(self, index: slice | Tensor) -> Margins:
        """The four tensors indexed along their first axis (e.g. a group of runs)."""
        x = (self.logp_chosen, self.logp_rejected, self.ref_logp_chosen, self.ref_logp_rejected)
        return Margins(*(t[index] for t in x))

    @cached_property
    def chosen_logratio(self) -> Tensor:
        """ℓ_w = log π(y_w|x)/π_ref(y_w|x)."""
        return self.logp_chosen - self.ref_logp_chosen

    @cached_property
    def rejected_logratio(self) -> Tensor:
        """ℓ_l = log π(y_l|x)/π_ref(y_l|x)."""
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
        formula: the loss in one line, in the module's notation (h, ℓ_w, ℓ_l, β, ...).
        source: where the formula comes from.
        logp_form: "sum" if the formula uses summed response log-probs, "mean" if it uses
            per-token means (computed inside from the sums and ``len_chosen``/``len_rejected``).
        needs_reference: whether π_ref's log-probs enter the loss.
        hyper: hyperparameter names and defaults (``REQUIRED`` where there is none).
        notes: what the hyperparameters mean and where the defaults come from.
    """

    name: str
    fn: LossFn
    formula: str
    source: str
    logp_form: Literal["sum", "mean"] = "sum"
    needs_reference: bool = True
    hyper: Mapping[str, Any] = field(default_factory=dict)
    notes: str = ""


# ------------------------------------------------------------------------------ helpers


def _as(x: Any, like: Tensor) -> Tensor:
    return torch.as_tensor(x, dtype=like.dtype, device=like.device)


def _lengths(m: Margins, len_chosen: Any, len_rejected: Any) -> tuple[Tensor, Tensor]:
    """Response lengths as tensors like the log-probs; ValueError unless every length is > 0."""
    out = []
    for name, value in (("len_chosen", len_chosen), ("len_rejected", len_rejected)):
        t = _as(value, m.logp_chosen)
        if not bool(torch.all(t > 0)):
            raise ValueError(f"{name} must be > 0 (a response has at least one token)")
        out.append(t)
    return out[0], out[1]


def _mean_logratios(m: Margins, len_chosen: Any, len_rejected: Any) -> tuple[Tensor, Tensor]:
    """(ℓ̄_w, ℓ̄_l): per-token-mean log-ratios."""
    lc, lr = _lengths(m, len_chosen, len_rejected)
    return m.chosen_logratio / lc, m.rejected_logratio / lr


def _check_range(name: str, value: float, lo: float, hi: float, *, closed_hi: bool) -> None:
    ok = lo <= value <= hi if closed_hi else lo <= value < hi
    if not ok:
        bracket = "]" if closed_hi else ")"
        raise ValueError(f"{name} must lie in [{lo}, {hi}{bracket}; got {value}")


def _batch_mean(x: Tensor) -> Tensor:
    """Mean over the last axis (the pairs of a run), kept for broadcasting, without gradient."""
    return x.detach().mean(-1, keepdim=True)


# ------------------------------------------------------------------------------ losses


def _dpo(m: Margins, *, beta: Tensor) -> Tensor:
    return -F.logsigmoid(beta * m.h)


def _cdpo(m: Margins, *, beta: Tensor, epsilon: float) -> Tensor:
    _check_range("epsilon", epsilon, 0.0, 0.5, closed_hi=True)
    z = beta * m.h
    return -(1.0 - epsilon) * F.logsigmoid(z) - epsilon * F.logsigmoid(-z)


def _robust_dpo(m: Margins, *, beta: Tensor, epsilon: float) -> Tensor:
    _check_range("epsilon", epsilon, 0.0, 0.5, closed_hi=False)
    z = beta * m.h
    return (-(1.0 - epsilon) * F.logsigmoid(z) + epsilon * F.logsigmoid(-z)) / (1.0 - 2.0 * epsilon)


def _ipo(m: Margins, *, beta: Tensor) -> Tensor:
    return (m.h - 1.0 / (2.0 * beta)) ** 2


def _ipo_mean(m: Margins, *, beta: Tensor, len_chosen: Any, len_rejected: Any) -> Tensor:
    cw, cl = _mean_logratios(m, len_chosen, len_rejected)
    return (cw - cl - 1.0 / (2.0 * beta)) ** 2


def _ipo_paper(m: Margins, *, beta: Tensor) -> Tensor:
    return (beta * m.h - 1.0) ** 2


def _slic(m: Margins, *, beta: Tensor) -> Tensor:
    return torch.relu(1.0 - beta * m.h)


def _rdpo(
    m: Margins, *, beta: Tensor, alpha: float, len_chosen: Tensor, len_rejected: Tensor
) -> Tensor:
    length_gap = _as(len_chosen, m.h) - _as(len_rejected, m.h)
    return -F.logsigmoid(beta * m.h + alpha * length_gap)


def _ln_dpo(m: Margins, *, beta: Tensor, len_chosen: Any, len_rejected: Any) -> Tensor:
    cw, cl = _mean_logratios(m, len_chosen, len_rejected)
    return -F.logsigmoid(beta * (cw - cl))


def _simpo(m: Margins, *, beta: Tensor, gamma: float, len_chosen: Any, len_rejected: Any) -> Tensor:
    lc, lr = _lengths(m, len_chosen, len_rejected)
    return -F.logsigmoid(beta * (m.logp_chosen / lc - m.logp_rejected / lr) - gamma)


def _rpo(m: Margins, *, beta: Tensor, alpha: float, len_chosen: Any) -> Tensor:
    lc = _as(len_chosen, m.logp_chosen)
    if not bool(torch.all(lc > 0)):
        raise ValueError("len_chosen must be > 0 (a response has at least one token)")
    return -F.logsigmoid(beta * m.h) - alpha * m.logp_chosen / lc


def _chipo(m: Margins, *, beta: Tensor, r_max: float) -> Tensor:
    if not r_max > 0:
        raise ValueError(f"r_max must be > 0; got {r_max}")
    # φ(u) = u + log u at u = π/π_ref = exp(ℓ). exp overflows past log(finfo.max) ≈ 709 (float64);
    # capping ℓ a little below keeps φ finite, and the cap only acts where the clip to ±2R_max
    # has long saturated (its gradient is 0 there, so the cap changes nothing that trains).
    cap = math.log(torch.finfo(m.h.dtype).max) - 20.0
    lw, ll = m.chosen_logratio.clamp(max=cap), m.rejected_logratio.clamp(max=cap)
    link = (torch.exp(lw) - torch.exp(ll)) + (lw - ll)
    return -F.logsigmoid(torch.clamp(beta * link, -2.0 * r_max, 2.0 * r_max))


def _exo(m: Margins, *, beta: Tensor, epsilon: float) -> Tensor:
    if not 0.0 < epsilon < 1.0:
        raise ValueError(f"epsilon must lie in (0, 1); got {epsilon}")
    z = beta * m.h
    # KL( (σ(z), σ(−z)) ‖ (1−ε, ε) ): the model's pair distribution against the smoothed label.
    return torch.sigmoid(z) * (F.logsigmoid(z) - math.log1p(-epsilon)) + torch.sigmoid(-z) * (
        F.logsigmoid(-z) - math.log(epsilon)
    )


def _nca(m: Margins, *, beta: Tensor) -> Tensor:
    rw, rl = beta * m.chosen_logratio, beta * m.rejected_logratio
    return -F.logsigmoid(rw) - 0.5 * F.logsigmoid(-rw) - 0.5 * F.logsigmoid(-rl)


def _bco(m: Margins, *, beta: Tensor, delta: float | Tensor | None) -> Tensor:
    rw, rl = beta * m.chosen_logratio, beta * m.rejected_logratio
    # δ = None: the batch's mean reward, without gradient (TRL keeps a running mean of it).
    d = _batch_mean(torch.cat([rw, rl], dim=-1)) if delta is None else _as(delta, rw)
    return -F.logsigmoid(rw - d) - F.logsigmoid(-(rl - d))


def _sppo_hard(m: Margins, *, beta: Tensor) -> Tensor:
    return (m.chosen_logratio - 0.5 / beta) ** 2 + (m.rejected_logratio + 0.5 / beta) ** 2


def _apo_zero(m: Margins, *, beta: Tensor) -> Tensor:
    # 1 − σ(x) is written σ(−x): it keeps its digits where σ(x) is close to 1.
    return torch.sigmoid(-beta * m.chosen_logratio) + torch.sigmoid(beta * m.rejected_logratio)


def _apo_down(m: Margins, *, beta: Tensor) -> Tensor:
    return torch.sigmoid(beta * m.chosen_logratio) + torch.sigmoid(-beta * m.h)


def _discopop(m: Margins, *, beta: Tensor, tau: float) -> Tensor:
    if not tau > 0:
        raise ValueError(f"tau must be > 0; got {tau}")
    z = beta * m.h
    # exp(−z)·σ(z/τ) as one exp of a sum: the product form gives inf·0 = NaN for z ≪ 0.
    exp_part = torch.exp(-z + F.logsigmoid(z / tau))
    return -F.logsigmoid(z) * torch.sigmoid(-z / tau) + exp_part


def _kto(
    m: Margins,
    *,
    beta: Tensor,
    lambda_d: float,
    lambda_u: float,
    reference_point: float | Tensor | None,
) -> Tensor:
    lw, ll = m.chosen_logratio, m.rejected_logratio
    if reference_point is None:  # z0: batch estimate of KL(π‖π_ref), clamped at 0, no gradient
        z0 = _batch_mean(torch.cat([lw, ll], dim=-1)).clamp(min=0.0)
    else:
        z0 = _as(reference_point, lw)
    return lambda_d * torch.sigmoid(-beta * (lw - z0)) + lambda_u * torch.sigmoid(-beta * (z0 - ll))


_LEN = {"len_chosen": REQUIRED, "len_rejected": REQUIRED}

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
            name="cdpo",
            fn=_cdpo,
            formula="-(1-ε) log σ(β h) - ε log σ(-β h)",
            source=(
                "Mitchell 2023, 'A note on DPO with noisy preferences' (conservative DPO); "
                "TRL loss_type='sigmoid' with label_smoothing=ε"
            ),
            hyper={"epsilon": 0.1},
            notes="ε ∈ [0, 0.5]: probability a label is flipped; ε = 0 is DPO. Default 0.1 [open].",
        ),
        Objective(
            name="robust_dpo",
            fn=_robust_dpo,
            formula="[-(1-ε) log σ(β h) + ε log σ(-β h)] / (1 - 2ε)",
            source="Chowdhury et al. 2024, 'Provably Robust DPO' (rDPO); TRL loss_type='robust'",
            hyper={"epsilon": 0.1},
            notes=(
                "ε ∈ [0, 0.5): label-flip rate; unbiased for flipped labels, so it is not "
                "bounded below (→ -∞ as h → ∞ when ε > 0). ε = 0 is DPO. Default 0.1 [open]."
            ),
        ),
        Objective(
            name="ipo",
            fn=_ipo,
            formula="(h - 1/(2β))²",
            source="Azar et al. 2023, Eq. 17, summed log-probs as in the DPO reference code",
            notes="The default IPO form (the form the paper's code ran); β is Azar's τ.",
        ),
        Objective(
            name="ipo_mean",
            fn=_ipo_mean,
            formula="(h̄ - 1/(2β))²,  h̄ = ℓ_w/|y_w| - ℓ_l/|y_l|",
            source="Azar et al. 2023, Eq. 17 on per-token-mean log-probs (TRL loss_type='ipo')",
            logp_form="mean",
            hyper=dict(_LEN),
            notes="Equals ipo when both responses have length 1.",
        ),
        Objective(
            name="ipo_paper",
            fn=_ipo_paper,
            formula="(β h - 1)²",
            source="Rafailov et al. 2024, §3 table: g(z) = (z - 1)² at z = β h",
            notes="Equals β²(h - 1/β)²: its target margin is 1/β, twice Azar's 1/(2β).",
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
            hyper={"alpha": 0.01, **_LEN},
            notes=(
                "α > 0 penalises length: a longer y_w needs less margin, so the policy's own "
                "margin is not spent on length. Equal lengths give DPO. Default α = 0.01 [open]."
            ),
        ),
        Objective(
            name="ln_dpo",
            fn=_ln_dpo,
            formula="-log σ(β (ℓ_w/|y_w| - ℓ_l/|y_l|))",
            source="Meng et al. 2024 (SimPO), §4 'LN-DPO'; Lambert et al. 2024 (Tülu 3, dpo_norm)",
            logp_form="mean",
            hyper=dict(_LEN),
            notes="Length-normalised DPO; lengths 1 give DPO.",
        ),
        Objective(
            name="simpo",
            fn=_simpo,
            formula="-log σ(β (log π(y_w)/|y_w| - log π(y_l)/|y_l|) - γ)",
            source="Meng et al. 2024, Eq. 6 (SimPO); TRL CPOTrainer loss_type='simpo'",
            logp_form="mean",
            needs_reference=False,
            hyper={"gamma": 0.5, **_LEN},
            notes=(
                "Reference-free: the reference log-probs are ignored. γ is the target reward "
                "margin (γ, not TRL's γ/β). Default γ = 0.5 (TRL's simpo_gamma); the paper tunes "
                "β ∈ [2, 2.5] and γ ∈ [0.3β, 1.6]."
            ),
        ),
        Objective(
            name="rpo",
            fn=_rpo,
            formula="-log σ(β h) - α log π(y_w)/|y_w|",
            source="Pang et al. 2024 (iterative RPO: DPO + NLL); TRL rpo_alpha",
            hyper={"alpha": 1.0, "len_chosen": REQUIRED},
            notes=(
                "The NLL term is per token of the chosen response (Pang et al. normalise by "
                "length). α = 1 as recommended there; α = 0 is DPO."
            ),
        ),
        Objective(
            name="chipo",
            fn=_chipo,
            formula="-log σ(clip_{±2R}(β [φ(e^{ℓ_w}) - φ(e^{ℓ_l})])),  φ(u) = u + log u",
            source="Huang et al. 2024, Algorithm 1 (χPO, χ²-regularised preference optimization)",
            hyper={"r_max": 1.0},
            notes=(
                "R = r_max bounds the reward; the clip is to [-2R, 2R]. The paper leaves R to "
                "the user; default 1.0 [open]. Without the e^ℓ term this is DPO."
            ),
        ),
        Objective(
            name="exo",
            fn=_exo,
            formula="σ(βh)[log σ(βh) - log(1-ε)] + σ(-βh)[log σ(-βh) - log ε]",
            source="Ji et al. 2024, Eq. 16 (EXO, pairwise); TRL loss_type='exo_pair'",
            hyper={"epsilon": 1e-3},
            notes=(
                "Reverse KL from the model's pair probabilities to the ε-smoothed label; its "
                "minimum 0 is at β h = log((1-ε)/ε). Default ε = 1e-3 (the paper's)."
            ),
        ),
        Objective(
            name="nca",
            fn=_nca,
            formula="-log σ(β ℓ_w) - ½ log σ(-β ℓ_w) - ½ log σ(-β ℓ_l)",
            source="Chen et al. 2024 (NCA, noise contrastive alignment), pairwise; TRL 'nca_pair'",
            notes="Uses the two log-ratios separately, not only h.",
        ),
        Objective(
            name="bco",
            fn=_bco,
            formula="-log σ(β ℓ_w - δ) - log σ(-(β ℓ_l - δ))",
            source="Jung et al. 2024 (BCO, binary classifier optimization); TRL 'bco_pair'",
            hyper={"delta": None},
            notes=(
                "δ: the reward shift (reference point). None (default): the mean of β ℓ over the "
                "batch's chosen and rejected responses, without gradient (TRL keeps a running "
                "mean of this over batches). Pass a float to fix it."
            ),
        ),
        Objective(
            name="sppo_hard",
            fn=_sppo_hard,
            formula="(ℓ_w - 1/(2β))² + (ℓ_l + 1/(2β))²",
            source="Wu et al. 2024, Eq. 4.7 (SPPO) with hard labels P = 1/0; TRL 'sppo_hard'",
            notes="SPPO's η is 1/β. Pulls each log-ratio to its own target, ±1/(2β).",
        ),
        Objective(
            name="apo_zero",
            fn=_apo_zero,
            formula="1 - σ(β ℓ_w) + σ(β ℓ_l)",
            source="D'Oosterlinck et al. 2024, Eq. 7 (APO-zero); TRL loss_type='apo_zero'",
            notes="Raises π(y_w), lowers π(y_l), each against the anchor ℓ = 0.",
        ),
        Objective(
            name="apo_down",
            fn=_apo_down,
            formula="σ(β ℓ_w) + 1 - σ(β h)",
            source="D'Oosterlinck et al. 2024, Eq. 8 (APO-down); TRL loss_type='apo_down'",
            notes="Lowers π(y_w) and lowers π(y_l) more.",
        ),
        Objective(
            name="discopop",
            fn=_discopop,
            formula="(1 - σ(βh/τ))·(-log σ(βh)) + σ(βh/τ)·exp(-βh)",
            source="Lu et al. 2024, Eq. 5 (DiscoPOP, log-ratio modulated loss); TRL 'discopop'",
            hyper={"tau": 0.05},
            notes="τ: temperature of the blend; default 0.05 (the paper's).",
        ),
        Objective(
            name="kto",
            fn=_kto,
            formula="λ_D (1 - σ(β (ℓ_w - z₀))) + λ_U (1 - σ(β (z₀ - ℓ_l)))",
            source=(
                "Ethayarajh et al. 2024 (KTO, §4) on paired data, y_w desirable and y_l "
                "undesirable; TRL's former loss_type='kto_pair'"
            ),
            hyper={"lambda_d": 1.0, "lambda_u": 1.0, "reference_point": None},
            notes=(
                "z₀: the reference point, an estimate of KL(π‖π_ref). None (default): the mean "
                "log-ratio over the batch's responses, clamped at 0, without gradient (the paper "
                "uses mismatched pairs). Pass a float (e.g. the exact KL on a tree). λ_D = λ_U = 1 "
                "as in the paper."
            ),
        ),
    ]
}


LENGTH_KEYS = ("len_chosen", "len_rejected")
"""Hyperparameters that callers fill from the data (response lengths), not from the user."""


def length_hyper(name: str, len_chosen: Any, len_rejected: Any) -> dict[str, Any]:
    """The response lengths that objective ``name`` declares, ready to pass as ``**hyper``.

    Only the keys the entry takes come back, so nothing branches on the name. Shapes as the
    log-probs.
    """
    values = {"len_chosen": len_chosen, "len_rejected": len_rejected}
    return {k: v for k, v in values.items() if k in get(name).hyper}


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
    """β as a tensor, after checking every entry is finite and > 0 (ValueError naming the first
    entry that is not)."""
    # A Python float goes straight to float64: as_tensor would round it to float32 first.
    b = beta if isinstance(beta, Tensor) else torch.as_tensor(beta, dtype=torch.float64)
    if not b.is_floating_point():
        b = b.to(torch.float64)
    bad = ~(torch.isfinite(b) & (b > 0))
    if bool(bad.any()):
        raise ValueError(f"beta must be finite and > 0; got {float(b[bad].flatten()[0])!r}")
    return b


@dataclass(frozen=True)
class BoundObjective:
    """A registry entry with its β and hyperparameters checked once (``bind``).

    Attributes:
        objective: the registry entry.
        beta: β, checked finite and > 0; a 0-d tensor or one that broadcasts against the
            log-probs (one per run). Converted to the log-probs' dtype and device at each call.
        hyper: the entry's hyperparameters, defaults merged in; the response lengths stay
            ``REQUIRED`` until ``with_lengths`` fills them.
    """

    objective: Objective
    beta: Tensor
    hyper: Mapping[str, Any]

    def with_lengths(self, len_chosen: Any, len_rejected: Any) -> BoundObjective:
        """The same objective on responses of these lengths (kept only where the entry takes
        them; nothing is checked again). Shapes as the log-probs, e.g. (B,)."""
        lengths = length_hyper(self.objective.name, len_chosen, len_rejected)
        return replace(self, hyper={**self.hyper, **lengths})

    def loss(self, margins: Margins) -> Tensor:
        """Per-pair loss on summed log-probs (``Margins``, shapes (...,)); the broadcast shape."""
        like = margins.logp_chosen
        return self.objective.fn(margins, beta=self._beta_like(like), **self._complete_hyper())

    def rewards(self, margins: Margins) -> tuple[Tensor, Tensor]:
        """Implicit rewards (chosen, rejected) in the entry's own log-prob form.

        β·(log π(y|x) − log π_ref(y|x)) on summed log-probs, or on per-token means (sum /
        length) for entries of ``logp_form`` "mean"; without the π_ref term for reference-free
        entries (SimPO's reward is β·mean log π). Shapes: the broadcast shape of the inputs.
        """
        chosen, rejected = self._form(margins.logp_chosen, margins.logp_rejected)
        if self.objective.needs_reference:
            ref_chosen, ref_rejected = self._form(
                margins.ref_logp_chosen, margins.ref_logp_rejected
            )
            chosen, rejected = chosen - ref_chosen, rejected - ref_rejected
        beta = self._beta_like(chosen)
        return beta * chosen, beta * rejected

    def _form(self, chosen: Tensor, rejected: Tensor) -> tuple[Tensor, Tensor]:
        """Summed log-probs as they are, or divided by the response lengths for "mean" entries."""
        if self.objective.logp_form == "sum":
            return chosen, rejected
        hyper = self._complete_hyper()
        return chosen / hyper["len_chosen"], rejected / hyper["len_rejected"]

    def _beta_like(self, like: Tensor) -> Tensor:
        return self.beta.to(dtype=like.dtype, device=like.device)

    def _complete_hyper(self) -> Mapping[str, Any]:
        missing = [k for k, v in self.hyper.items() if v is REQUIRED]
        if missing:
            raise ValueError(f"objective {self.objective.name!r} needs hyperparameters {missing}")
        return self.hyper


def bind(name: str, *, beta: float | Tensor, **hyper: Any) -> BoundObjective:
    """Objective ``name`` with β and its hyperparameters, checked here and only here.

    Args:
        name: a key of ``REGISTRY`` (``names()`` lists them).
        beta: β > 0, a float or a tensor broadcastable against the log-probs (one per run).
        **hyper: the entry's hyperparameters (see ``REGISTRY[name].hyper``); the response
            lengths may be given here or later with ``BoundObjective.with_lengths``.

    Returns:
        The bound objective: ``.loss(margins)`` and ``.rewards(margins)``.

    Raises:
        ValueError: unknown name, β not finite and > 0, unknown hyperparameters, or a required
            one other than the lengths missing. Ranges of the other hyperparameters (e.g. ε) are
            checked by the entry's formula, at each call.
    """
    objective = get(name)
    b = check_beta(beta)
    unknown = sorted(set(hyper) - set(objective.hyper))
    if unknown:
        allowed = ", ".join(objective.hyper) or "none"
        raise ValueError(
            f"objective {objective.name!r} takes hyperparameters [{allowed}]; got unknown {unknown}"
        )
    merged = {**objective.hyper, **hyper}
    missing = [k for k, v in merged.items() if v is REQUIRED and k not in LENGTH_KEYS]
    if missing:
        raise ValueError(f"objective {objective.name!r} needs hyperparameters {missing}")
    return BoundObjective(objective, b, merged)


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
    """Per-pair loss of objective ``name`` in one call: ``bind(name, ...).loss(Margins(...))``.

    Args:
        name: a key of ``REGISTRY`` (``names()`` lists them).
        logp_chosen: log π(y_w|x), summed over the response's tokens (entries of
            ``logp_form`` "mean" divide by ``len_chosen`` themselves). Shape (...,),
            broadcastable with the other three.
        logp_rejected: log π(y_l|x). Shape (...,).
        ref_logp_chosen: log π_ref(y_w|x) (ignored by reference-free entries). Shape (...,).
        ref_logp_rejected: log π_ref(y_l|x). Shape (...,).
        beta: β > 0, a float or a tensor broadcastable against the log-probs (one per run).
        **hyper: the entry's hyperparameters (see ``REGISTRY[name].hyper``).

    Returns:
        Per-pair losses with the broadcast shape of the inputs, e.g. (B,).
    """
    margins = Margins(logp_chosen, logp_rejected, ref_logp_chosen, ref_logp_rejected)
    return bind(name, beta=beta, **hyper).loss(margins)


def _format_hyper(hyper: Mapping[str, Any]) -> str:
    if not hyper:
        return "—"
    parts = [f"{k} (required)" if v is REQUIRED else f"{k}={v}" for k, v in hyper.items()]
    return ", ".join(parts)


def markdown_table() -> str:
    """The registry as a Markdown table: name, loss, log-prob form, π_ref, hyperparameters,
    source, notes (what ``python -m treemdp.objectives`` prints)."""
    head = "| name | loss per pair | log-probs | needs π_ref | hyperparameters | source | notes |"
    rows = [head, "|---|---|---|---|---|---|---|"]
    for o in REGISTRY.values():
        cells = [
            f"`{o.name}`",
            f"`{o.formula}`",
            "per-token mean" if o.logp_form == "mean" else "summed",
            "yes" if o.needs_reference else "no",
            _format_hyper(o.hyper),
            o.source,
            o.notes or "—",
        ]
        rows.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(rows)


if __name__ == "__main__":
    print(markdown_table())
