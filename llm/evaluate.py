"""Evaluate one policy against its reference: KL to the reference, lengths, implicit-reward
accuracy and loss on held-out pairs, length dependence of the log-ratio, and a judge's win rate.

Estimators (Rafailov et al. 2024, §3 of PAPER.md), on n held-out prompts with one sample of the
policy π and one of the reference π_ref per prompt, at temperature 1:

* reverse KL(π‖π_ref) ≈ mean over y ~ π of Σ_t [log π(y_t|·) − log π_ref(y_t|·)] (the summed
  log-ratio), with its standard error std/√n;
* forward KL(π_ref‖π) ≈ the same with y ~ π_ref and the ratio inverted;
* ``logratio_length_r2``: R² of the least-squares line of the per-sample log-ratio on the sample's
  length in tokens (NaN when every sample has one length);
* ``reward_accuracy`` / ``loss``: on held-out pairs, the share whose chosen response's implicit
  reward is above the rejected one's, and the objective's mean loss, both from the run's
  objective bound once (``treemdp.objectives.bind``): rewards β·log π/π_ref in the entry's own
  log-prob form (summed or per-token mean; β·log π for reference-free entries), in float64;
* ``win_rate``: a judge's mean score of the policy sample against a baseline (the reference sample
  for the same prompt by default, or the pair's chosen response), with its standard error.

On the tree language (``TreeTask``) the model is decoded on the tree (``llm.sampling``), the
samples are scored with the exact leaf log-probs, and the exact metrics of ``treemdp.metrics``
are added as ``exact_*`` columns next to the sampled estimates.

``llm.eval_run.evaluate_run`` applies ``evaluate_model`` to the reference and every checkpoint of
a run and writes the table.
"""

from __future__ import annotations

import hashlib
import json
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from llm.data import Batch, Example, _collate, collate_pairs
from llm.judges import Comparison, Judge
from llm.logprobs import PairLogps, concatenated_logps, response_logps
from llm.sampling import (
    TreeDecoding,
    generate,
    tree_full_logprobs,
    tree_logprobs,
)
from llm.tree_language import TreeLanguage
from treemdp import objectives
from treemdp.data import Pairs
from treemdp.metrics import MetricContext, metrics, weighted_r2
from treemdp.objectives import Margins
from treemdp.runs import atomic_write
from treemdp.tree import Tree

__all__ = [
    "SAMPLED_EXACT_MAX_Z",
    "EvalSettings",
    "EvalTask",
    "SampledExactWarning",
    "TreeTask",
    "evaluate_model",
    "mean_se",
    "sampled_vs_exact",
    "sequence_logps",
]

TREE_PROBLEM = "tree_problem.json"


@dataclass(frozen=True)
class EvalSettings:
    """How a checkpoint is evaluated (recorded in ``eval.json``).

    Attributes:
        samples: held-out prompts, one policy and one reference sample each.
        max_new_tokens: sample length limit (the tree language stops at a leaf anyway).
        temperature: sampling temperature (1.0 in the paper).
        batch_size: sequences per forward (generation and scoring).
        seed: sampling seed; checkpoint c samples with a seed derived from (seed, step of c).
        baseline: the win rate's opponent: "reference" (a π_ref sample for the same prompt) or
            "chosen" (the held-out pair's chosen response).
    """

    samples: int = 256
    max_new_tokens: int = 64
    temperature: float = 1.0
    batch_size: int = 64
    seed: int = 0
    baseline: str = "reference"

    def __post_init__(self) -> None:
        for name in ("samples", "max_new_tokens", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1; got {getattr(self, name)}")
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0; got {self.temperature}")
        if self.baseline not in ("reference", "chosen"):
            raise ValueError(f"baseline must be 'reference' or 'chosen'; got {self.baseline!r}")


@dataclass(frozen=True, eq=False)
class TreeTask:
    """A tree-language problem: the tree, its gold rewards and its preference pairs.

    Attributes:
        tree: the tree.
        rewards: gold reward of every response. Shape (L,).
        chosen: chosen response indices of the pairs. Shape (P,).
        rejected: rejected response indices. Shape (P,).
    """

    tree: Tree
    rewards: Tensor
    chosen: Tensor
    rejected: Tensor

    def to_json(self) -> dict[str, Any]:
        """A JSON-able description: complete trees (branching, depth, prompts) and trees with a
        stop action (``Tree.with_stop``: ``"stop": true``, depth = the longest response)."""
        t = self.tree
        if _is_stop_tree(t):  # checked first: a stop tree's nodes all have b children too
            shape: dict[str, Any] = {"stop": True}
        elif t.is_complete and int(t.depth[t.leaves].min()) == t.max_depth:
            shape = {}
        else:
            raise ValueError(
                "only complete trees and Tree.with_stop trees can be written to tree_problem.json"
            )
        return {
            "branching": t.branching,
            "depth": t.max_depth,
            "n_prompts": t.n_prompts,
            **shape,
            "rewards": self.rewards.tolist(),
            "chosen": self.chosen.tolist(),
            "rejected": self.rejected.tolist(),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TreeTask:
        """Inverse of ``to_json``."""
        build = Tree.with_stop if data.get("stop") else Tree.complete
        tree = build(data["branching"], data["depth"], n_prompts=data.get("n_prompts", 1))
        return cls(
            tree,
            torch.tensor(data["rewards"], dtype=torch.float64),
            torch.tensor(data["chosen"], dtype=torch.long),
            torch.tensor(data["rejected"], dtype=torch.long),
        )

    def write(self, folder: Path) -> Path:
        """Write ``folder/tree_problem.json`` atomically."""
        text = json.dumps(self.to_json()) + "\n"
        return atomic_write(Path(folder) / TREE_PROBLEM, lambda p: p.write_text(text))

    @classmethod
    def read(cls, folder: Path) -> TreeTask | None:
        """``folder/tree_problem.json``, or None when there is none."""
        path = Path(folder) / TREE_PROBLEM
        return cls.from_json(json.loads(path.read_text())) if path.is_file() else None

    @property
    def context(self) -> MetricContext:
        """treemdp's metric context (one run)."""
        pairs = Pairs(self.chosen[None], self.rejected[None])
        return MetricContext.build(self.tree, self.rewards[None], pairs)


def _is_stop_tree(tree: Tree) -> bool:
    """Whether ``tree`` is ``Tree.with_stop(branching, max_depth, n_prompts)``."""
    try:
        stop = Tree.with_stop(tree.branching, tree.max_depth, n_prompts=tree.n_prompts)
    except ValueError:
        return False
    return stop.n_nodes == tree.n_nodes and bool(
        torch.equal(stop.children, tree.children) and torch.equal(stop.parent, tree.parent)
    )


@dataclass(frozen=True, eq=False)
class EvalTask:
    """What a run is evaluated on.

    Attributes:
        prompts: one prompt (token ids) per sample; held-out prompts, or a tree's roots repeated.
        pairs: held-out preference pairs (may be empty: accuracy and loss are then NaN); with the
            "chosen" baseline, pair i's chosen response is prompt i's opponent.
        tokenizer: decodes tokens to text for the judge.
        eos_id: a sample ends on this token (None for the tree language).
        pad_id: padding token id.
        objective: registry objective for the held-out loss.
        beta: its β.
        hyper: its other hyperparameters (lengths are filled in).
        tree: the tree-language problem, for decoding on the tree and exact metrics.
    """

    prompts: list[tuple[int, ...]]
    pairs: list[Example]
    tokenizer: Any
    eos_id: int | None
    pad_id: int
    objective: str = "dpo"
    beta: float = 0.1
    hyper: dict[str, Any] = field(default_factory=dict)
    tree: TreeTask | None = None

    def bound(self) -> objectives.BoundObjective:
        """The held-out loss's objective, bound to ``beta`` and ``hyper``."""
        return objectives.bind(self.objective, beta=self.beta, **self.hyper)

    def fingerprint(self) -> str:
        """A hash of the prompts, pairs, objective and tree problem (resume checks)."""
        data = [
            self.prompts,
            [(e.prompt, e.chosen, e.rejected) for e in self.pairs],
            self.objective,
            self.beta,
            sorted(self.hyper.items()),
            None if self.tree is None else self.tree.to_json(),
        ]
        return hashlib.sha256(json.dumps(data).encode()).hexdigest()[:16]


# ------------------------------------------------------------------------------ statistics
def mean_se(x: Tensor) -> tuple[float, float]:
    """Mean and standard error (sample std / √n; NaN for n < 2) of a 1-D tensor."""
    n = x.numel()
    if n == 0:
        return math.nan, math.nan
    x = x.double()
    return float(x.mean()), (float(x.std(unbiased=True)) / math.sqrt(n) if n > 1 else math.nan)


def sequence_logps(
    model: nn.Module,
    prompts: Sequence[tuple[int, ...]],
    responses: Sequence[tuple[int, ...]],
    *,
    pad_id: int,
    batch_size: int,
) -> Tensor:
    """Σ_t log π(y_t|x, y_<t) of each (prompt, response), full vocabulary. Shape (n,), float64."""
    out = []
    with torch.no_grad():
        for s in range(0, len(prompts), batch_size):
            rows = list(
                zip(prompts[s : s + batch_size], responses[s : s + batch_size], strict=True)
            )
            b = _collate(rows, pad_id)
            logp, _ = response_logps(model, *b.tensors())  # moved to the model's device there
            out.append(logp.double().cpu())
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.float64)


def _pair_metrics(
    policy: nn.Module, reference: nn.Module, task: EvalTask, batch_size: int
) -> dict[str, float]:
    """Implicit-reward accuracy and mean loss on the held-out pairs, in float64."""
    if not task.pairs:
        return {"reward_accuracy": math.nan, "loss": math.nan, "n_pairs": 0}
    objective = task.bound()
    acc, losses = [], []
    with torch.no_grad():
        for s in range(0, len(task.pairs), batch_size):
            b = collate_pairs(task.pairs[s : s + batch_size], task.pad_id)
            pol, ref = (_pair_logps(m, b) for m in (policy, reference))
            margins = pol.margins(ref)
            bound = objective.with_lengths(pol.len_chosen.double(), pol.len_rejected.double())
            losses.append(bound.loss(margins))
            reward_c, reward_r = bound.rewards(margins)
            acc.append((reward_c > reward_r).double())
    return {
        "reward_accuracy": float(torch.cat(acc).mean()),
        "loss": float(torch.cat(losses).mean()),
        "n_pairs": len(task.pairs),
    }


def _pair_logps(model: nn.Module, batch: Batch) -> PairLogps:
    """Summed log-probs of a batch of pairs under ``model``, as float64 on the CPU."""
    lp = concatenated_logps(model, *batch.tensors())  # moved to the model's device there
    chosen, rejected = lp.chosen.double().cpu(), lp.rejected.double().cpu()
    return PairLogps(chosen, rejected, lp.len_chosen.cpu(), lp.len_rejected.cpu())


# ------------------------------------------------------------------------------ one model
@dataclass(frozen=True)
class ReferenceSamples:
    """The reference's samples (one per prompt) and their log-probs under π_ref. Shape (n,)."""

    responses: list[tuple[int, ...]]
    logp: Tensor


def _sample(
    model: nn.Module, task: EvalTask, settings: EvalSettings, seed: int
) -> list[tuple[int, ...]]:
    device = next(model.parameters()).device
    gen = torch.Generator(device=device).manual_seed(seed)
    tree = task.tree.tree if task.tree is not None else None
    return generate(
        model,
        task.prompts,
        max_new_tokens=settings.max_new_tokens if tree is None else tree.max_depth,
        eos_id=task.eos_id,
        pad_id=task.pad_id,
        generator=gen,
        temperature=settings.temperature,
        batch_size=settings.batch_size,
        decoding=None if tree is None else TreeDecoding(tree),
    ).responses


class _Scorer:
    """Summed log-probs of (prompt, response) under a model: exact leaf table on the tree,
    else a forward over the full vocabulary."""

    def __init__(self, model: nn.Module, task: EvalTask, batch_size: int) -> None:
        self.model, self.task, self.batch_size = model, task, batch_size
        if task.tree is not None:
            self.table = tree_logprobs(model, task.tree.tree)
            self.leaf = TreeLanguage(task.tree.tree).leaf_index

    def __call__(self, responses: Sequence[tuple[int, ...]]) -> Tensor:
        prompts = self.task.prompts
        if self.task.tree is not None:
            idx = [self.leaf[(*p, *r)] for p, r in zip(prompts, responses, strict=True)]
            return self.table[torch.tensor(idx)]
        return sequence_logps(
            self.model, prompts, responses, pad_id=self.task.pad_id, batch_size=self.batch_size
        )


def _seed(*parts: Any) -> int:
    return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:7], "little")


def reference_samples(
    reference: nn.Module, task: EvalTask, settings: EvalSettings
) -> ReferenceSamples:
    """Sample the reference once per prompt and score the samples under it."""
    responses = _sample(reference, task, settings, _seed(settings.seed, "reference"))
    return ReferenceSamples(responses, _Scorer(reference, task, settings.batch_size)(responses))


def _text(task: EvalTask, prompt: tuple[int, ...], response: tuple[int, ...]) -> tuple[str, str]:
    tok = task.tokenizer
    p = tok.decode(list(prompt))
    full = tok.decode([*prompt, *response])
    return p, full[len(p) :] if full.startswith(p) else tok.decode(list(response))


def evaluate_model(
    policy: nn.Module,
    reference: nn.Module,
    ref: ReferenceSamples,
    task: EvalTask,
    settings: EvalSettings,
    judge: Judge | None,
    *,
    step: int,
) -> dict[str, Any]:
    """Every metric of one policy (see the module docstring); a dict of column → value."""
    n = len(task.prompts)
    responses = _sample(policy, task, settings, _seed(settings.seed, "policy", step))
    pol_score = _Scorer(policy, task, settings.batch_size)
    ref_score = _Scorer(reference, task, settings.batch_size)
    logratio = pol_score(responses) - ref_score(responses)  # on policy samples
    fwd = ref.logp - pol_score(ref.responses)  # on reference samples
    lengths = torch.tensor([len(r) for r in responses], dtype=torch.float64)
    ref_lengths = torch.tensor([len(r) for r in ref.responses], dtype=torch.float64)
    row: dict[str, Any] = {"n_samples": n}
    row["kl_reverse"], row["kl_reverse_se"] = mean_se(logratio)
    row["kl_forward"], row["kl_forward_se"] = mean_se(fwd)
    row["length_mean"], row["length_se"] = mean_se(lengths)
    row["length_reference_mean"] = mean_se(ref_lengths)[0]
    # R² of the least-squares line log-ratio ≈ a + b·length, every sample weighted alike.
    uniform = torch.ones(1, logratio.numel(), dtype=torch.float64)
    r2 = weighted_r2(logratio.double()[None], lengths.double()[None], uniform)
    row["logratio_length_r2"] = float(r2[0])
    row.update(_pair_metrics(policy, reference, task, settings.batch_size))
    if settings.baseline == "chosen" and len(task.pairs) < n:
        raise ValueError(
            f"baseline 'chosen' needs a held-out pair per prompt ({n}); got {len(task.pairs)}"
        )
    if judge is not None:
        comparisons = []
        for i, (p, y) in enumerate(zip(task.prompts, responses, strict=True)):
            y0 = ref.responses[i] if settings.baseline == "reference" else task.pairs[i].chosen
            pt, yt = _text(task, p, y)
            comparisons.append(Comparison(pt, yt, _text(task, p, y0)[1], p, y, y0))
        verdicts = judge.judge(comparisons)
        row["win_rate"], row["win_rate_se"], row["judged"] = verdicts.win_rate()
        row.update(
            judge=judge.name,
            ties=verdicts.ties,
            unparsable=verdicts.unparsable,
            judge_errors=verdicts.errors,
        )
    else:
        row.update(win_rate=math.nan, win_rate_se=math.nan, judged=0, judge="none")
    if task.tree is not None:
        row.update(_exact(policy, task, responses, pol_score.table, ref_score.table))
        gold_vs_reference = judge is not None and judge.name == "gold"
        gold_vs_reference &= settings.baseline == "reference"
        row.update(sampled_vs_exact(row, task, with_win_rate=gold_vs_reference))
        if row["sampled_exact_flag"]:
            warnings.warn(
                f"step {step}: sampled estimates off their exact values by more than "
                f"{SAMPLED_EXACT_MAX_Z:g} standard errors: {row['sampled_exact_flag']} "
                f"(largest |z| = {row['sampled_exact_z']:.1f})",
                SampledExactWarning,
                stacklevel=2,
            )
    return row


SAMPLED_EXACT_MAX_Z = 5.0
"""A sampled estimate further than this many standard errors from its exact value is flagged."""

SAMPLED_EXACT = (
    ("kl_reverse", "exact_kl_reverse"),
    ("kl_forward", "exact_kl_forward"),
    ("ood_fraction", "exact_mass_ood"),
    ("win_rate", "exact_win_rate"),
)
"""(sampled column, exact column) pairs that estimate the same quantity on tree tasks."""

SHARES = ("ood_fraction", "win_rate")
"""Sampled estimates that are means of values in [0, 1]."""


class SampledExactWarning(UserWarning):
    """A sampled estimate disagrees with its exact value (``sampled_exact_flag``)."""


def sampled_vs_exact(
    row: dict[str, Any], task: EvalTask, *, with_win_rate: bool
) -> dict[str, float | str]:
    """Each sampled estimate against its exact value, in standard errors.

    Returns ``sampled_exact_z`` (the largest |sampled − exact| / SE; NaN when the prompts do not
    weight every root alike, so the estimates target another average than the exact values) and
    ``sampled_exact_flag`` (the estimates beyond ``SAMPLED_EXACT_MAX_Z``, comma-separated; ""
    when none). The share-valued estimates (OOD fraction, win rate) use the larger of their
    sample SE and the binomial SE √(p(1−p)/n) at the exact value p, so n samples that all agree
    (sample SE 0) are judged by how likely that is; likewise the KL estimates use at least the
    exact SE (``exact_kl_*_sd`` / √n) where the row has it, and an estimate whose SE is still 0
    counts as off when it differs from the exact value by more than 1e-6. The win rate is
    compared only for the gold judge against reference samples.
    """
    tree = task.tree.tree
    root = TreeLanguage(tree).root
    roots = torch.tensor([root(p) for p in task.prompts])
    per_root = torch.bincount(roots, minlength=tree.n_prompts)
    if bool((per_root != per_root[0]).any()):
        return {"sampled_exact_z": math.nan, "sampled_exact_flag": ""}
    worst, flagged = 0.0, []
    for sampled, exact in SAMPLED_EXACT:
        if sampled == "win_rate" and not with_win_rate:
            continue
        gap = abs(row[sampled] - row[exact])
        se = row[f"{sampled}_se"]
        if sampled in SHARES:
            p = min(max(row[exact], 0.0), 1.0)
            se = max(se, math.sqrt(p * (1 - p) / row["n_samples"]))
        elif f"{exact}_sd" in row:  # the estimator's exact spread
            se = max(se, row[f"{exact}_sd"] / math.sqrt(row["n_samples"]))
        z = gap / se if se > 0 else (0.0 if gap <= 1e-6 else math.inf)
        if not math.isfinite(gap):
            z = math.inf
        worst = max(worst, z)
        if z > SAMPLED_EXACT_MAX_Z:
            flagged.append(sampled)
    return {"sampled_exact_z": worst, "sampled_exact_flag": ",".join(flagged)}


def _weighted_sd(x: Tensor, w: Tensor) -> float:
    """Standard deviation of x under the probability weights w (summing to 1). Shapes (L,)."""
    mean = (w * x).sum()
    return float(torch.sqrt((w * (x - mean) ** 2).sum().clamp(min=0)))


def _exact(
    policy: nn.Module,
    task: EvalTask,
    responses: list[tuple[int, ...]],
    logp: Tensor,
    ref_logp: Tensor,
) -> dict[str, float]:
    """treemdp's exact metrics of the LLM decoded on the tree (``exact_*``), and the sampled
    share of OOD responses with its standard error."""
    tt = task.tree
    ctx = tt.context
    lc, lr = logp[tt.chosen], logp[tt.rejected]
    rc, rr = ref_logp[tt.chosen], ref_logp[tt.rejected]
    lengths = tt.tree.response_length.double()
    margins = Margins(lc, lr, rc, rr)
    bound = task.bound().with_lengths(lengths[tt.chosen], lengths[tt.rejected])
    exact = metrics(ctx, logp[None], ref_logp[None], margins.h[None], bound.loss(margins)[None])
    out = {f"exact_{k}": float(v[0]) for k, v in exact.items()}
    # The exact per-sample spread of the two KL estimators (prompts drawn uniformly), which the
    # sampled-vs-exact check uses when the samples' own SE is 0 (all samples one response).
    n_prompts = tt.tree.n_prompts
    out["exact_kl_reverse_sd"] = _weighted_sd(logp - ref_logp, torch.exp(logp) / n_prompts)
    out["exact_kl_forward_sd"] = _weighted_sd(ref_logp - logp, torch.exp(ref_logp) / n_prompts)
    # The unrestricted model: mass that leaves the tree, and in-distribution mass without the
    # decoding constraint (its OOD mass is 1 minus it: off-tree sequences mention no pair).
    full = torch.exp(tree_full_logprobs(policy, tt.tree))
    w = 1.0 / tt.tree.n_prompts
    out["exact_off_tree"] = float(1.0 - full.sum() * w)
    out["exact_full_mass_in_dist"] = float((full * ctx.in_dist[0]).sum() * w)
    leaf = TreeLanguage(tt.tree).leaf_index
    idx = torch.tensor([leaf[(*p, *r)] for p, r in zip(task.prompts, responses, strict=True)])
    ood = (~ctx.in_dist[0][idx]).double()
    out["ood_fraction"], out["ood_fraction_se"] = mean_se(ood)
    return out
