"""Optima and solution sets of direct alignment objectives: Proposition 1 made computable.

Three parts (Rafailov et al. 2024, §2 "Theory"; see docs/theory.md):

1. The KL-regularised optimum π*(y|x) ∝ π_ref(y|x) exp(r(x, y)/β), computed twice: directly over
   all responses, and as per-node logits through the soft value recursion
   V(s) = β log Σ_a π_ref(a|s) exp(V(s·a)/β), V(leaf) = r(leaf) (Rafailov et al. 2024b, "From r to
   Q*", Eq. 5–6), level by level bottom-up with a leading run axis. ``kl_to_optimum`` measures a
   policy's distance to it.
2. Identifiability: a dataset's query matrix A (pairs × responses, +1 at y_w, −1 at y_l). Every
   objective of the family sees an implicit log-ratio vector ℓ = log π/π_ref only through the
   margins h = A ℓ, so the minimisers form ℓ* + null(A): a set of dimension L − rank(A) (the
   per-prompt normalising constants take n_prompts of those directions, so the set of minimising
   *policies* has dimension L − rank(A) − n_prompts). rank(A) = (#responses compared) −
   (#components of the comparison graph): rewards are identified up to one constant per
   component, and not at all on responses no pair mentions.
3. Minimiser sets of DPO, IPO and SLiC on a dataset (``minimiser_set``), the distance of a
   margin vector to them, and two minimisers of equal loss whose OOD mass is near 0 and near 1
   (``extreme_minimisers``), including the three-response example of the paper.

Modules: ``optimum`` (part 1), ``identifiability`` (part 2), ``minimisers`` (part 3); every public
name is importable from ``treemdp.theory``. Everything is float64 and exact up to rounding, except
the DPO infimum on datasets with preference cycles (Newton's method, to ~1e-12) and SLiC (a linear
program via scipy).
"""

from treemdp.theory.identifiability import (
    Identifiability,
    identifiability,
    ood_mass,
    ood_mass_range,
    query_matrix,
)
from treemdp.theory.minimisers import (
    MINIMISER_OBJECTIVES,
    Minimiser,
    MinimiserSet,
    ThreeResponseExample,
    extreme_minimisers,
    margin_distance,
    minimiser_set,
    three_response_example,
)
from treemdp.theory.optimum import (
    kl_to_optimum,
    optimal_logits,
    optimal_response_logprobs,
    soft_values,
)

__all__ = [
    "MINIMISER_OBJECTIVES",
    "Identifiability",
    "Minimiser",
    "MinimiserSet",
    "ThreeResponseExample",
    "extreme_minimisers",
    "identifiability",
    "kl_to_optimum",
    "margin_distance",
    "minimiser_set",
    "ood_mass",
    "ood_mass_range",
    "optimal_logits",
    "optimal_response_logprobs",
    "query_matrix",
    "soft_values",
    "three_response_example",
]
