"""Evaluate every checkpoint of a training run: KL to the reference, lengths, implicit-reward
accuracy and loss on held-out pairs, length dependence of the log-ratio, and a judge's win rate.

Estimators (Rafailov et al. 2024, §3 of PAPER.md), on n held-out prompts with one sample of the
policy π and one of the reference π_ref per prompt, at temperature 1:

* reverse KL(π‖π_ref) ≈ mean over y ~ π of Σ_t [log π(y_t|·) − log π_ref(y_t|·)] (the summed
  log-ratio), with its standard error std/√n;
* forward KL(π_ref‖π) ≈ the same with y ~ π_ref and the ratio inverted;
* ``logratio_length_r2``: R² of the least-squares line of the per-sample log-ratio on the sample's
  length in tokens (NaN when every sample has one length);
* ``reward_accuracy`` / ``loss``: on held-out pairs, the share with implicit reward
  β·log π/π_ref of the chosen response above the rejected one's, and the objective's mean loss
  (``treemdp.objectives.loss``, in the entry's own log-prob form);
* ``win_rate``: a judge's mean score of the policy sample against a baseline (the reference sample
  for the same prompt by default, or the pair's chosen response), with its standard error.

On the tree language (``TreeTask``) the model is decoded on the tree (``llm.sampling``), the
samples are scored with the exact leaf log-probs, and the exact metrics of ``treemdp.metrics``
are added as ``exact_*`` columns next to the sampled estimates.

``evaluate_run`` writes one row per checkpoint (step 0 = the reference) to ``<run>/eval.csv``
after each checkpoint (atomically), so a killed evaluation resumes where it stopped: checkpoints
already in the table are not loaded again. ``eval.json`` records the settings; resuming with other
settings is refused. The reference's samples are kept in ``eval_reference.pt``.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import Tensor, nn
from tqdm import tqdm

from llm.data import Example, _collate, collate_pairs
from llm.judges import Comparison, Judge
from llm.logprobs import concatenated_logps, response_logps
from llm.model import PYTHIA_SHAPES, build_model, load_model
from llm.sampling import (
    TreeDecoding,
    generate,
    leaf_of_tokens,
    tree_full_logprobs,
    tree_logprobs,
)
from treemdp import objectives
from treemdp.data import Pairs
from treemdp.metrics import MetricContext, metrics
from treemdp.results import atomic_write, read_table, write_table
from treemdp.tree import Tree

__all__ = [
    "COLUMNS",
    "EVAL_TABLE",
    "EvalSettings",
    "EvalTask",
    "TreeTask",
    "checkpoints",
    "evaluate_model",
    "evaluate_run",
    "load_reference",
    "mean_se",
    "r_squared",
    "sequence_logps",
]

EVAL_TABLE = "eval.csv"
EVAL_SETTINGS = "eval.json"
REFERENCE_SAMPLES = "eval_reference.pt"
TREE_PROBLEM = "tree_problem.json"

COLUMNS = (
    "checkpoint",
    "examples_seen",
    "fraction_of_epoch",
    "kl_reverse",
    "kl_reverse_se",
    "kl_forward",
    "kl_forward_se",
    "length_mean",
    "logratio_length_r2",
    "reward_accuracy",
    "loss",
    "win_rate",
    "win_rate_se",
)
"""The columns every ``eval.csv`` has (the figure scripts' contract); more follow them."""


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
        """A JSON-able description (complete trees only: branching, depth, prompts)."""
        t = self.tree
        if not t.is_complete:
            raise ValueError("only complete trees can be written to tree_problem.json")
        return {
            "branching": t.branching,
            "depth": t.max_depth,
            "n_prompts": t.n_prompts,
            "rewards": self.rewards.tolist(),
            "chosen": self.chosen.tolist(),
            "rejected": self.rejected.tolist(),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TreeTask:
        """Inverse of ``to_json``."""
        tree = Tree.complete(data["branching"], data["depth"], n_prompts=data.get("n_prompts", 1))
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


def r_squared(y: Tensor, x: Tensor) -> float:
    """R² of the least-squares line y ≈ a + b·x (= squared Pearson correlation); NaN when x or
    y is constant. Shapes (n,)."""
    x, y = x.double(), y.double()
    dx, dy = x - x.mean(), y - y.mean()
    sxx, syy = float((dx * dx).sum()), float((dy * dy).sum())
    if x.numel() < 2 or sxx <= 1e-12 * max(1.0, float((x * x).sum())) or syy == 0:
        return math.nan
    return float((dx * dy).sum()) ** 2 / (sxx * syy)


def sequence_logps(
    model: nn.Module,
    prompts: Sequence[tuple[int, ...]],
    responses: Sequence[tuple[int, ...]],
    *,
    pad_id: int,
    batch_size: int,
) -> Tensor:
    """Σ_t log π(y_t|x, y_<t) of each (prompt, response), full vocabulary. Shape (n,), float64."""
    device = next(model.parameters()).device
    out = []
    with torch.no_grad():
        for s in range(0, len(prompts), batch_size):
            rows = list(
                zip(prompts[s : s + batch_size], responses[s : s + batch_size], strict=True)
            )
            b = _collate(rows, pad_id)
            logp, _ = response_logps(
                model,
                b.input_ids.to(device),
                b.attention_mask.to(device),
                b.response_mask.to(device),
            )
            out.append(logp.double().cpu())
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.float64)


def _pair_metrics(
    policy: nn.Module, reference: nn.Module, task: EvalTask, batch_size: int
) -> dict[str, float]:
    """Implicit-reward accuracy and mean loss on the held-out pairs."""
    if not task.pairs:
        return {"reward_accuracy": math.nan, "loss": math.nan, "n_pairs": 0}
    entry = objectives.get(task.objective)
    acc, losses = [], []
    with torch.no_grad():
        for s in range(0, len(task.pairs), batch_size):
            b = collate_pairs(task.pairs[s : s + batch_size], task.pad_id)
            lp = []
            for m in (policy, reference):
                dev = next(m.parameters()).device
                lp.append(
                    concatenated_logps(
                        m, b.input_ids.to(dev), b.attention_mask.to(dev), b.response_mask.to(dev)
                    )
                )
            pol, ref = lp
            lengths = objectives.length_hyper(task.objective, pol.len_chosen, pol.len_rejected)
            losses.append(
                objectives.loss(
                    task.objective,
                    pol.chosen.double().cpu(),
                    pol.rejected.double().cpu(),
                    ref.chosen.double().cpu(),
                    ref.rejected.double().cpu(),
                    beta=task.beta,
                    **task.hyper,
                    **{k: v.double().cpu() for k, v in lengths.items()},
                )
            )
            pc, pr = pol.form(entry.logp_form)
            rc, rr = ref.form(entry.logp_form)
            acc.append(((pc - rc) > (pr - rr)).double().cpu())
    return {
        "reward_accuracy": float(torch.cat(acc).mean()),
        "loss": float(torch.cat(losses).mean()),
        "n_pairs": len(task.pairs),
    }


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
            self.leaf = leaf_of_tokens(task.tree.tree)

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
    row["logratio_length_r2"] = r_squared(logratio, lengths)
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
    return row


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
    extra = objectives.length_hyper(task.objective, lengths[tt.chosen], lengths[tt.rejected])
    loss = objectives.loss(task.objective, lc, lr, rc, rr, beta=task.beta, **task.hyper, **extra)
    h = (lc - rc) - (lr - rr)
    exact = metrics(ctx, logp[None], ref_logp[None], h[None], loss[None])
    out = {f"exact_{k}": float(v[0]) for k, v in exact.items()}
    # The unrestricted model: mass that leaves the tree, and in-distribution mass without the
    # decoding constraint (its OOD mass is 1 minus it: off-tree sequences mention no pair).
    full = torch.exp(tree_full_logprobs(policy, tt.tree))
    w = 1.0 / tt.tree.n_prompts
    out["exact_off_tree"] = float(1.0 - full.sum() * w)
    out["exact_full_mass_in_dist"] = float((full * ctx.in_dist[0]).sum() * w)
    leaf = leaf_of_tokens(tt.tree)
    idx = torch.tensor([leaf[(*p, *r)] for p, r in zip(task.prompts, responses, strict=True)])
    ood = (~ctx.in_dist[0][idx]).double()
    out["ood_fraction"], out["ood_fraction_se"] = mean_se(ood)
    return out


# ------------------------------------------------------------------------------- a run
def checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoint folders (``step-NNNNNNN`` with a trainer state), by step."""
    found = [p for p in Path(run_dir).glob("step-*") if (p / "trainer_state.pt").is_file()]
    return sorted(found, key=lambda p: int(p.name.split("-")[1]))


def load_reference(run_config: dict[str, Any], *, vocab_size: int, dtype: torch.dtype) -> nn.Module:
    """The run's reference model: ``reference`` if the run named one, else its starting
    ``model`` (a named Pythia shape is rebuilt from the run's seed, as training built it)."""
    name = run_config.get("reference") or run_config["model"]
    if name in PYTHIA_SHAPES:
        return build_model(
            name, seed=int(run_config.get("seed", 0)), vocab_size=vocab_size, dtype=dtype
        )
    return load_model(name, dtype=dtype)


def _read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.is_file() else {}


def evaluate_run(
    run_dir: Path,
    task: EvalTask,
    settings: EvalSettings,
    judge: Judge | None,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    load: Callable[[Path], nn.Module] | None = None,
    force: bool = False,
    progress: bool = True,
    on_row: Callable[[dict[str, Any]], None] | None = None,
) -> pd.DataFrame:
    """Evaluate the reference (step 0) and every checkpoint of ``run_dir``; write ``eval.csv``.

    Args:
        run_dir: a run folder of ``llm.train`` (``config.json``, ``step-*`` checkpoints).
        task: prompts, held-out pairs, objective, and the tree problem if any.
        settings: sampling and estimation settings.
        judge: the win-rate judge (None: no win rate).
        device: where the models run.
        dtype: model dtype for evaluation.
        load: loads a checkpoint folder as a model (default ``load_model``; tests count calls).
        force: start over even if an ``eval.csv`` with other settings exists.
        progress: show a progress bar.
        on_row: called with each new row after it is written (tests kill the process there).

    Returns:
        The whole table, one row per checkpoint, ordered by step.
    """
    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # "Loading weights" bars per checkpoint: noise
    try:
        return _evaluate_run(
            run_dir, task, settings, judge, device=device, dtype=dtype, load=load, force=force,
            progress=progress, on_row=on_row,
        )  # fmt: skip
    finally:
        if bars:
            hf_logging.enable_progress_bar()


def _evaluate_run(
    run_dir: Path,
    task: EvalTask,
    settings: EvalSettings,
    judge: Judge | None,
    *,
    device: str | torch.device,
    dtype: torch.dtype,
    load: Callable[[Path], nn.Module] | None,
    force: bool,
    progress: bool,
    on_row: Callable[[dict[str, Any]], None] | None,
) -> pd.DataFrame:
    run_dir = Path(run_dir)
    config = _read_json(run_dir / "config.json")
    if not config:
        raise ValueError(f"{run_dir} has no config.json: is it a run folder of llm_train?")
    data = _read_json(run_dir / "data.json")
    n_examples = data.get("pairs")
    batch = config.get("batch_size")
    load = load or (lambda p: load_model(p, dtype=dtype))
    meta = {
        "settings": asdict(settings),
        "task": task.fingerprint(),
        "judge": judge.name if judge is not None else "none",
    }
    table_path = run_dir / EVAL_TABLE
    old = _read_json(run_dir / EVAL_SETTINGS)
    rows: list[dict[str, Any]] = []
    if table_path.is_file() and not force:
        if old != meta:
            raise ValueError(
                f"{table_path} was written with other evaluation settings ({EVAL_SETTINGS}); "
                "pass --force to start over"
            )
        rows = read_table(table_path).to_dict("records")
    else:
        (run_dir / REFERENCE_SAMPLES).unlink(missing_ok=True)
    text = json.dumps(meta, indent=2) + "\n"
    atomic_write(run_dir / EVAL_SETTINGS, lambda p: p.write_text(text))
    done = {int(r["checkpoint"]) for r in rows}
    todo = [(0, None)] + [(int(c.name.split("-")[1]), c) for c in checkpoints(run_dir)]
    todo = [(s, c) for s, c in todo if s not in done]
    if not todo:
        return pd.DataFrame(rows)

    vocab = len(task.tokenizer)
    reference = load_reference(config, vocab_size=vocab, dtype=dtype).to(device).eval()
    ref_path = run_dir / REFERENCE_SAMPLES
    if ref_path.is_file():
        saved = torch.load(ref_path, weights_only=False)
        ref = ReferenceSamples(saved["responses"], saved["logp"])
    else:
        ref = reference_samples(reference, task, settings)
        # Serialised in memory first: torch.save names its archive after the file, and the
        # temporary file's random name would make the bytes differ from run to run.
        buffer = io.BytesIO()
        torch.save(asdict(ref), buffer)
        atomic_write(ref_path, lambda p: p.write_bytes(buffer.getvalue()))
    for step, folder in tqdm(todo, desc="evaluate", disable=not progress):
        policy = reference if folder is None else load(folder).to(device).eval()
        row = {
            "checkpoint": step,
            "examples_seen": step * batch if batch else math.nan,
            "fraction_of_epoch": step * batch / n_examples if batch and n_examples else math.nan,
            "checkpoint_path": str(folder) if folder is not None else "reference",
            **evaluate_model(policy, reference, ref, task, settings, judge, step=step),
        }
        rows.append(row)
        rows.sort(key=lambda r: int(r["checkpoint"]))
        frame = pd.DataFrame(rows)
        write_table(table_path, frame[[*COLUMNS, *(c for c in frame if c not in COLUMNS)]])
        if on_row is not None:
            on_row(row)
        del policy
    frame = pd.DataFrame(rows)
    return frame[[*COLUMNS, *(c for c in frame if c not in COLUMNS)]]
