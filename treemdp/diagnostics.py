"""The diagnostics of ``experiments/diagnose.py``, exact on the toy: every response is scored.

What a practitioner can measure on a DPO run, computed from log π and log π_ref of every response
(no sampling), for a batch of runs:

* ``chosen_logp_change``, ``rejected_logp_change``: the mean over pairs of
  Δ⁺ = log π(y⁺|x) − log π_ref(y⁺|x) and Δ⁻ the same for y⁻; ``chosen_falls_share`` (Δ⁺ < 0,
  "likelihood displacement") and ``both_fall_share`` (Δ⁺ < 0 and Δ⁻ < 0);
* ``margin`` and ``accuracy``: the objective's own implicit-reward margin, its mean over pairs
  and the share of pairs where it is positive (given by the caller: ``treemdp.train``'s
  ``implicit_margin``);
* ``kl``: KL(π‖π_ref);
* ``ood_proxy``: the policy's mass on responses whose reference log-prob is below the
  ``OOD_QUANTILE`` quantile of the data's chosen responses' (the expected share of samples that
  diagnose.py's ``ood_proxy`` counts), and ``ood_proxy_per_token``, the same per token;
* ``argmax_mass``: the mass of the policy's most likely response (per prompt, averaged): the
  "squeezing effect" of Ren & Sutherland (ICLR 2025), where pushing down an unlikely rejected
  response moves mass onto the already most likely one.

And per pair, before training, ``gradient_ches``: the CHES score of Razin et al. (ICLR 2025,
Def. 2) in the toy's parameter space. Their hidden-embedding sums h± are the directions in which
one gradient step moves log π(y±); on the toy those directions are exact:
g± = ∇_θ log π_ref(y±) (for the log-linear policy, the centred features along the path,
Σ_k φ(s_k, a_k) − E_π φ(s_k, ·): feature space), and
CHES = ⟨g⁺, g⁻⟩ − ‖g⁺‖², the first-order rate at which a gradient step on the pair alone lowers
log π(y⁺) (up to the objective's positive weight). With prompts weighted uniformly, every mass
and KL is averaged over prompts.
"""

from __future__ import annotations

import torch
from torch import Tensor

from treemdp.data import Pairs
from treemdp.policy import Policy
from treemdp.tree import Tree

__all__ = [
    "OOD_QUANTILE",
    "SIGNAL_ORIENTATION",
    "ches",
    "exact_signals",
    "gradient_ches",
    "ood_masks",
    "pair_changes",
    "pair_signals",
]

OOD_QUANTILE = 0.05
"""A response is "out of distribution" for ``ood_proxy`` when its reference log-prob is below
this quantile of the data's chosen responses' reference log-probs."""

SIGNAL_ORIENTATION = {
    # name: +1 when a larger value means "more over-optimized", −1 when a smaller one does
    "chosen_logp_change": -1,
    "rejected_logp_change": -1,
    "chosen_falls_share": +1,
    "both_fall_share": +1,
    "margin": +1,
    "accuracy": +1,
    "kl": +1,
    "ood_proxy": +1,
    "ood_proxy_per_token": +1,
    "argmax_mass": +1,
}
"""The signals of ``exact_signals`` and the direction in which each would warn."""


def ches(
    h_chosen: Tensor, h_rejected: Tensor, n_chosen: Tensor, n_rejected: Tensor
) -> tuple[Tensor, Tensor]:
    """CHES and its length-normalised form (Razin et al. 2025, Def. 2 and §3.2).

    Args:
        h_chosen: Σ_k h_{x,y⁺_<k}, the summed hidden states predicting y⁺'s tokens (or, on the
            toy, ∇_θ log π_ref(y⁺)). Shape (..., P, H).
        h_rejected: the same for y⁻. Shape (..., P, H).
        n_chosen: |y⁺|. Shape (..., P).
        n_rejected: |y⁻|. Shape (..., P).

    Returns:
        ``(ches, ches_normalised)``, each shape (..., P), in h's dtype:
        ⟨h⁺, h⁻⟩ − ‖h⁺‖² and ⟨h⁺, h⁻⟩/(|y⁺||y⁻|) − ‖h⁺‖²/|y⁺|².
    """
    if h_chosen.shape != h_rejected.shape or h_chosen.dim() < 2:
        raise ValueError(
            f"h_chosen and h_rejected must share one (..., P, H) shape; got "
            f"{tuple(h_chosen.shape)} and {tuple(h_rejected.shape)}"
        )
    cross = (h_chosen * h_rejected).sum(-1)
    own = (h_chosen * h_chosen).sum(-1)
    nc, nr = n_chosen.to(h_chosen.dtype), n_rejected.to(h_chosen.dtype)
    return cross - own, cross / (nc * nr) - own / (nc * nc)


def _gather(x: Tensor, index: Tensor) -> Tensor:
    """``x[..., r, index[r, p]]``: x (..., R, L), index (R, P) → (..., R, P)."""
    return x.gather(-1, index.expand(*x.shape[:-2], *index.shape))


def pair_changes(logp: Tensor, ref_logp: Tensor, pairs: Pairs) -> tuple[Tensor, Tensor]:
    """Δ⁺ and Δ⁻ of every pair.

    Args:
        logp: log π of every response. Shape (..., R, L) (e.g. a leading checkpoint axis).
        ref_logp: log π_ref. Shape (R, L).
        pairs: each run's pairs. Shapes (R, P).

    Returns:
        ``(Δ⁺, Δ⁻)``, each shape (..., R, P).
    """
    delta = logp - ref_logp
    return _gather(delta, pairs.chosen), _gather(delta, pairs.rejected)


def pair_signals(dc: Tensor, dr: Tensor, margin: Tensor) -> dict[str, Tensor]:
    """The teacher-forced signals of a batch of pairs (the module docstring): means and shares
    over the last axis. The one definition diagnose.py (``llm.diagnose.teacher_forced``), its
    TRL callback and the exact checks share.

    Args:
        dc: Δ⁺ of every pair. Shape (..., P).
        dr: Δ⁻. Shape (..., P).
        margin: the objective's implicit-reward margin. Shape (..., P).

    Returns:
        ``chosen_logp_change``, ``rejected_logp_change``, ``chosen_falls_share``,
        ``both_fall_share``, ``margin``, ``accuracy``, each shape (...).
    """
    falls = dc < 0
    dtype = dc.dtype
    return {
        "chosen_logp_change": dc.mean(-1),
        "rejected_logp_change": dr.mean(-1),
        "chosen_falls_share": falls.to(dtype).mean(-1),
        "both_fall_share": (falls & (dr < 0)).to(dtype).mean(-1),
        "margin": margin.mean(-1),
        "accuracy": (margin > 0).to(dtype).mean(-1),
    }


def ood_masks(
    tree: Tree, ref_logp: Tensor, pairs: Pairs, *, quantile: float = OOD_QUANTILE
) -> tuple[Tensor, Tensor]:
    """The responses ``ood_proxy`` counts: reference log-prob below the ``quantile`` of the
    chosen responses' (with multiplicity), summed and per token.

    Args:
        tree: the tree (response lengths).
        ref_logp: log π_ref of every response. Shape (R, L).
        pairs: each run's pairs. Shapes (R, P).
        quantile: in [0, 1].

    Returns:
        ``(low, low_per_token)``, boolean, each shape (R, L).
    """
    if not 0 <= quantile <= 1:
        raise ValueError(f"quantile must lie in [0, 1]; got {quantile}")
    per_token = ref_logp / tree.response_length.to(ref_logp.dtype)
    masks = []
    for x in (ref_logp, per_token):
        q = torch.quantile(_gather(x, pairs.chosen), quantile, dim=-1, keepdim=True)
        masks.append(x < q)
    return masks[0], masks[1]


def exact_signals(
    tree: Tree,
    logp: Tensor,
    ref_logp: Tensor,
    pairs: Pairs,
    margin: Tensor,
) -> dict[str, Tensor]:
    """Every signal of ``SIGNAL_ORIENTATION``, exactly.

    Args:
        tree: the tree.
        logp: log π of every response. Shape (..., R, L).
        ref_logp: log π_ref. Shape (R, L).
        pairs: each run's pairs. Shapes (R, P).
        margin: the objective's implicit-reward margin of every pair at ``logp``. Shape
            (..., R, P).

    Returns:
        Name → tensor of shape (..., R).
    """
    dc, dr = pair_changes(logp, ref_logp, pairs)
    low, low_per_token = ood_masks(tree, ref_logp, pairs)
    p = torch.exp(logp)
    n = tree.n_prompts
    per_prompt_max = torch.zeros(*p.shape[:-1], n, dtype=p.dtype).scatter_reduce(
        -1, tree.leaf_prompt.expand_as(p), p, reduce="amax", include_self=False
    )
    return {
        **pair_signals(dc, dr, margin),
        "kl": (p * (logp - ref_logp)).sum(-1) / n,
        "ood_proxy": (p * low).sum(-1) / n,
        "ood_proxy_per_token": (p * low_per_token).sum(-1) / n,
        "argmax_mass": per_prompt_max.mean(-1),
    }


def gradient_ches(policy: Policy, pairs: Pairs, tree: Tree) -> tuple[Tensor, Tensor]:
    """CHES of every pair in parameter space, at the reference θ0 (see the module docstring).

    Args:
        policy: R runs' policy family and θ0.
        pairs: each run's pairs. Shapes (R, P).
        tree: the tree (response lengths for the normalised form).

    Returns:
        ``(ches, ches_normalised)``, each shape (R, P), float64.
    """
    theta = policy.theta0.detach().clone().requires_grad_(True)
    logp = policy.response_logprobs(theta)
    R = logp.shape[0]
    needed = torch.unique(pairs.responses())
    grads = torch.zeros(R, tree.n_responses, theta[0].numel(), dtype=torch.float64)
    for i, leaf in enumerate(needed.tolist()):
        last = i == len(needed) - 1
        (g,) = torch.autograd.grad(logp[:, leaf].sum(), theta, retain_graph=not last)
        grads[:, leaf] = g.reshape(R, -1).double()  # runs are independent: row r is run r's

    def rows(index: Tensor) -> Tensor:
        return grads[torch.arange(R).unsqueeze(1), index]

    lengths = tree.response_length
    return ches(rows(pairs.chosen), rows(pairs.rejected), lengths[pairs.chosen],
                lengths[pairs.rejected])  # fmt: skip
