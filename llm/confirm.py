"""The LLM side of the toy-vs-LLM bridge on a tree problem: SFT a GPT-NeoX on samples of the toy's
π_ref, then train a DAA from it on the problem's pairs and evaluate every checkpoint exactly.

Used by ``experiments/llm_confirm.py`` (one setting) and ``experiments/confirm_grid.py`` (a grid).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import nn

from llm.data import Example
from llm.eval_run import RunEvaluation, evaluate_run
from llm.evaluate import EvalSettings, EvalTask, TreeTask
from llm.judges import GoldJudge
from llm.losses import DAALoss, sft_loss
from llm.model import PYTHIA_SHAPES, build_model, load_model, parse_dtype, progress_bars_off
from llm.precision import precision as parse_precision
from llm.train import TrainConfig, train
from llm.tree_language import TreeLanguage
from treemdp.problem import Problem
from treemdp.runs import atomic_write
from treemdp.runs.eval_table import EVAL_TABLE

__all__ = ["DAARun", "daa_llm", "sft_llm"]

SFT_MODEL = "model"
"""The SFT's weights-only model folder (``sft_llm(keep_state=False)``)."""
DONE = "done"
"""Marks a finished weights-only folder or an in-memory run's finished eval.csv."""


def _write_json(path: Path, data: dict) -> None:
    text = json.dumps(data, indent=2) + "\n"
    atomic_write(path, lambda p: p.write_text(text))


def _train_config(
    *,
    lr: float,
    batch: int,
    epochs: float,
    seed: int,
    checkpoints: int = 0,
    warmup_steps: int = 0,
    precision: str = "fp32",
) -> TrainConfig:
    """The bridge's optimisation settings: RMSProp with ``warmup_steps`` of linear warm-up, no
    gradient accumulation (a micro-batch is the whole ``batch``); ``checkpoints`` evenly spread
    over the run, the last at its end (0: the final one only); the optimizer of ``precision``
    (``llm.precision.PRECISIONS``)."""
    return TrainConfig(
        optimizer=parse_precision(precision).optimizer, lr=lr, warmup_steps=warmup_steps,
        batch_size=batch, micro_batch_size=batch, epochs=epochs,
        checkpoint_every=0, checkpoints=checkpoints, seed=seed,
    )  # fmt: skip


# ------------------------------------------------------------------------------------ SFT
def _sft_examples(
    problem: Problem, language: TreeLanguage, *, samples: int, seed: int, run: int
) -> list[Example]:
    """``samples`` responses drawn (with replacement, generator seeded with ``seed``) from run
    ``run``'s π_ref (``problem.ref_logp[run]``, shape (L,)), each an SFT example of its
    prompt; SFT reads only ``chosen``, so ``rejected`` repeats it."""
    tree = problem.tree
    gen = torch.Generator().manual_seed(seed)
    probs = torch.exp(problem.ref_logp[run])
    leaves = torch.multinomial(probs, samples, replacement=True, generator=gen).tolist()
    examples = []
    for i, y in enumerate(leaves):
        prompt, tokens = language.prompt(int(tree.leaf_prompt[y])), language.response(y)
        examples.append(Example(prompt, tokens, tokens, i + 1))
    return examples


def _sft_start(
    model: str, *, seed: int, vocab_size: int, device: str, dtype: torch.dtype = torch.float32
) -> nn.Module:
    """The model SFT starts from, in ``dtype``: a Pythia shape built with ``seed``, or a hub name
    / folder (ValueError when its vocabulary cannot hold the tree language's ``vocab_size``
    tokens)."""
    if model in PYTHIA_SHAPES:
        # built directly on the device: initialising a 1b model on a GPU takes a fraction of the
        # seconds it takes on a CPU (the weights then come from that device's generator)
        return build_model(model, seed=seed, vocab_size=vocab_size, device=device, dtype=dtype)
    policy = load_model(model, dtype=dtype)
    if policy.config.vocab_size < vocab_size:
        raise ValueError(f"--model {model} has fewer tokens than the tree language")
    return policy


def _save_weights_only(policy: nn.Module, tok: Any, folder: Path) -> Path:
    """Write ``policy`` and ``tok`` as a loadable model folder, then its ``DONE`` marker."""
    with progress_bars_off():
        policy.save_pretrained(folder)
    tok.save_pretrained(folder)
    (folder / DONE).write_text("")
    return folder


def sft_llm(
    problem: Problem,
    out: Path,
    *,
    model: str,
    seed: int,
    samples: int,
    epochs: float,
    lr: float,
    batch_size: int,
    device: str,
    progress: bool,
    run: int = 0,
    keep_state: bool = True,
    precision: str = "fp32",
) -> Path:
    """SFT a GPT-NeoX of shape ``model`` (or a hub name / folder) on ``samples`` samples of run
    ``run``'s π_ref (``problem.ref_logp[run]``, drawn with ``seed``) into ``out``; resumes a
    killed run; returns the final checkpoint folder.

    ``keep_state=False`` writes no trainer checkpoint (weights + RMSProp state: ~56 GB at 6.9b)
    but only the final weights, ``out/model`` (a loadable model folder, ~28 GB at 6.9b in
    fp32); a finished ``out/model`` is reused, a killed run starts over. ``precision``
    (``llm.precision.PRECISIONS``): the weights' dtype (the folder's too) and the optimizer."""
    if not keep_state and (Path(out) / SFT_MODEL / DONE).is_file():
        return Path(out) / SFT_MODEL
    language = TreeLanguage(problem.tree)
    tok = language.tokenizer()
    examples = _sft_examples(problem, language, samples=samples, seed=seed, run=run)
    prec = parse_precision(precision)
    policy = _sft_start(model, seed=seed, vocab_size=len(tok), device=device, dtype=prec.weights)
    batch = min(batch_size, len(examples))
    _write_json(
        out / "config.json",
        {"stage": "sft", "model": model, "seed": seed, "source": "tree",
         "batch_size": batch, "lr": lr, "precision": precision},
    )  # fmt: skip
    _write_json(out / "data.json", {"pairs": len(examples), "skipped": 0})
    policy.to(device)
    final = train(
        policy, examples, sft_loss,
        _train_config(lr=lr, batch=batch, epochs=epochs, seed=seed, precision=precision),
        out, pad_id=tok.pad_token_id, tokenizer=tok, resume=True, progress=progress,
        save=keep_state,
    )  # fmt: skip
    if keep_state:
        assert final is not None
        return final
    return _save_weights_only(policy, tok, Path(out) / SFT_MODEL)


# ------------------------------------------------------------------------------------ DAA
@dataclass(frozen=True)
class DAARun:
    """One DAA run of the bridge: what it optimises, how, and how its checkpoints are evaluated.

    Full batch (``batch_size`` >= the number of pairs P, ``epochs`` = steps) is the toy's
    regime; ``batch_size`` < P with one epoch is the paper's. Epoch e visits the pairs in
    ``randperm(P, data_seed + e)`` (``llm.train``), the order
    ``treemdp.batching.EpochSchedule(P, batch, seed=data_seed)`` gives the toy in its first epoch.
    """

    objective: str  # a registry objective (treemdp.objectives)
    beta: float  # β
    lr: float  # RMSProp learning rate (after warm-up)
    batch_size: int  # pairs per step (at most P are used)
    epochs: float  # passes over the pairs (full batch: the number of steps)
    checkpoints: int  # checkpoints at steps ⌈i·steps/checkpoints⌉ (llm.train.checkpoint_steps)
    seed: int  # the evaluation's sampling seed, and the pair order unless data_seed is set
    size: str  # the model's shape name (recorded in config.json; the figures read it)
    eval_samples: int  # samples per checkpoint for the sampled estimates
    warmup_steps: int = 0  # linear warm-up of the lr (llm.train: lr·(s+1)/(warmup+1))
    data_seed: int | None = None  # the pair order's seed (None: seed)
    hyper: Mapping[str, Any] = field(default_factory=dict)  # the objective's other hyperparameters
    keep_weights: bool = True  # write checkpoints (False: evaluate each in memory)
    reference_dtype: str = "fp32"  # the frozen reference's precision (llm.model.DTYPES)
    precision: str = "fp32"  # the policy's weights and optimizer (llm.precision.PRECISIONS)

    def batch(self, n_pairs: int) -> int:
        """Pairs per step on ``n_pairs`` pairs."""
        return min(self.batch_size, n_pairs)

    def steps(self, n_pairs: int) -> int:
        """Optimizer steps on ``n_pairs`` pairs: ceil(epochs · P / batch)."""
        return math.ceil(self.epochs * n_pairs / self.batch(n_pairs))

    def train_config(self, n_pairs: int) -> TrainConfig:
        """``llm.train``'s settings on ``n_pairs`` pairs."""
        batch = self.batch(n_pairs)
        return _train_config(
            lr=self.lr, batch=batch, epochs=self.epochs, warmup_steps=self.warmup_steps,
            checkpoints=self.checkpoints,
            seed=self.seed if self.data_seed is None else self.data_seed,
            precision=self.precision,
        )  # fmt: skip

    def config_json(self, sft: Path, task: TreeTask, *, n_pairs: int, n_params: int) -> dict:
        """The run folder's ``config.json``."""
        tree = task.tree
        config = {
            "stage": "daa", "objective": self.objective, "beta": self.beta, "model": str(sft),
            "size": self.size, "n_params": n_params, "seed": self.seed, "source": "tree",
            "tree_branching": tree.branching, "tree_depth": tree.max_depth,
            "batch_size": self.batch(n_pairs), "lr": self.lr, "reference": "",
            "hyper": dict(self.hyper), "keep_weights": self.keep_weights,
            "reference_dtype": self.reference_dtype,
        }  # fmt: skip
        if self.warmup_steps:  # absent at 0, so earlier run folders keep their config
            config["warmup_steps"] = self.warmup_steps
        if self.precision != "fp32":  # absent at fp32, for the same reason
            config["precision"] = self.precision
        return config

    def labelled(self, frame: pd.DataFrame, *, n_pairs: int) -> pd.DataFrame:
        """The eval table with ``objective``, ``beta``, ``side`` ("llm"), ``step`` (its
        ``checkpoint``) and ``fraction`` (of all training steps) added."""
        return frame.assign(
            objective=self.objective, beta=self.beta, side="llm", step=frame["checkpoint"],
            fraction=frame["checkpoint"] / self.steps(n_pairs),
        )  # fmt: skip


@dataclass(frozen=True)
class _Evaluation:
    """How every checkpoint of a DAA run is evaluated: on what (``task``), how (``settings``),
    judged by whom (``judge``), on which ``device``."""

    task: EvalTask
    settings: EvalSettings
    judge: GoldJudge
    device: str

    def read_back(self, out: Path) -> pd.DataFrame:
        """The eval table a finished run folder ``out`` holds."""
        return RunEvaluation(out, self.task, self.settings, self.judge, device=self.device).table()

    def start_fresh(self, out: Path, reference: nn.Module) -> RunEvaluation:
        """A new evaluation of run folder ``out`` (earlier rows dropped) against ``reference``."""
        return RunEvaluation(
            out, self.task, self.settings, self.judge, device=self.device, force=True,
            reference=reference,
        )  # fmt: skip

    def of_checkpoints(self, out: Path, *, reference: nn.Module, progress: bool) -> pd.DataFrame:
        """Every checkpoint ``out`` holds, from disk (``evaluate_run``); the eval table."""
        return evaluate_run(
            out, self.task, self.settings, self.judge, device=self.device, progress=progress,
            reference=reference,
        )  # fmt: skip


def _daa_evaluation(
    task: TreeTask,
    language: TreeLanguage,
    tok: Any,
    pairs: list[Example],
    run: DAARun,
    *,
    device: str,
) -> _Evaluation:
    """Gold-judged evaluation on ``pairs`` (accuracy, held-out loss of the run's objective at
    its β) and ``run.eval_samples`` prompts cycling through the tree's roots (sampled with
    ``run.seed``, each as long as the tree is deep), with exact metrics on ``task``'s tree."""
    eval_task = EvalTask(
        prompts=language.prompts(run.eval_samples), pairs=pairs, tokenizer=tok, eos_id=None,
        pad_id=tok.pad_token_id, objective=run.objective, beta=run.beta, hyper=dict(run.hyper),
        tree=task,
    )  # fmt: skip
    settings = EvalSettings(
        samples=run.eval_samples, max_new_tokens=task.tree.max_depth, seed=run.seed
    )
    return _Evaluation(eval_task, settings, GoldJudge(task.tree, task.rewards), device)


def _write_daa_run(out: Path, task: TreeTask, run_config: dict, *, pairs: int) -> None:
    """The run folder's ``config.json``, ``data.json`` (``pairs`` pairs, none skipped) and the
    tree problem (``TreeTask.write``)."""
    _write_json(out / "config.json", run_config)
    _write_json(out / "data.json", {"pairs": pairs, "skipped": 0})
    task.write(out)


def _frozen_reference(sft: Path, dtype: str, device: str) -> nn.Module:
    """The SFT model in ``dtype`` (``llm.model.DTYPES``) on ``device``, frozen, in eval mode."""
    return load_model(sft, dtype=parse_dtype(dtype)).to(device).requires_grad_(False).eval()


def _train_evaluating_in_memory(
    policy: nn.Module,
    examples: list[Example],
    loss: DAALoss,
    tcfg: TrainConfig,
    out: Path,
    *,
    tok: Any,
    evaluation: _Evaluation,
    reference: nn.Module,
    progress: bool,
) -> pd.DataFrame:
    """Train without writing weights, evaluating the policy in memory at each checkpoint step;
    the reference's row and samples come first (the very ones ``evaluate_run`` draws). Marks
    ``out`` ``DONE``; returns the eval table."""
    (out / DONE).unlink(missing_ok=True)  # a stale marker must not outlive a rerun's kill
    run = evaluation.start_fresh(out, reference)
    run.add(0, reference, path="reference", digest="reference")
    train(
        policy, examples, loss, tcfg, out, pad_id=tok.pad_token_id, tokenizer=tok,
        progress=progress, save=False, on_checkpoint=lambda step, m: run.add(step, m),
    )  # fmt: skip
    (out / DONE).write_text("")
    return run.table()


def daa_llm(
    task: TreeTask,
    sft: Path,
    run: DAARun,
    out: Path,
    *,
    device: str,
    progress: bool,
    held_out: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> pd.DataFrame:
    """Train ``run`` (an objective at β, ``DAARun``) from the SFT folder (a frozen copy as
    reference) on the task's pairs into ``out``, and evaluate every checkpoint (exact and
    sampled, gold judge) on ``device``.

    ``held_out``: (chosen, rejected) response indices of the pairs the evaluation's accuracy and
    loss are measured on (default: the training pairs). With ``run.keep_weights`` False no
    checkpoint is written: each is evaluated in memory at its step
    (``llm.train.train(save=False, on_checkpoint=...)`` into ``llm.eval_run.RunEvaluation``),
    giving the rows a kept checkpoint would get but for ``checkpoint_path`` ("in-memory") and
    ``checkpoint_sha256`` (of the parameters, not of a file); a killed run starts over, a
    finished one (``out/done``) is read back. ``run.precision`` (``llm.precision.PRECISIONS``):
    the policy's weights and optimizer (``bf16-weights``: bf16 weights, float32 RMSProp state;
    half the memory of ``fp32``).

    Returns:
        The eval table with ``objective``, ``beta``, ``side`` ("llm"), ``step`` and ``fraction``
        (of all training steps) added.
    """
    language = TreeLanguage(task.tree)
    tok = language.tokenizer()
    examples, _ = language.examples(task.chosen, task.rejected)
    measured_on = examples if held_out is None else language.examples(*held_out)[0]
    evaluation = _daa_evaluation(task, language, tok, measured_on, run, device=device)
    if not run.keep_weights and (out / DONE).is_file() and (out / EVAL_TABLE).is_file():
        # (a deleted eval.csv, as a corrupt one's error advises, is recomputed)
        return run.labelled(evaluation.read_back(out), n_pairs=len(examples))

    policy = load_model(sft, dtype=parse_precision(run.precision).weights).to(device)
    n_params = sum(p.numel() for p in policy.parameters())
    _write_daa_run(out, task, run.config_json(sft, task, n_pairs=len(examples), n_params=n_params),
                   pairs=len(examples))  # fmt: skip
    reference = _frozen_reference(sft, run.reference_dtype, device)
    loss = DAALoss(run.objective, run.beta, hyper=dict(run.hyper), reference=reference)
    tcfg = run.train_config(len(examples))
    if run.keep_weights:
        train(
            policy, examples, loss, tcfg, out, pad_id=tok.pad_token_id, tokenizer=tok,
            resume=True, progress=progress,
        )  # fmt: skip
        del policy  # the trained weights leave memory before evaluate_run loads each checkpoint
        frame = evaluation.of_checkpoints(out, reference=reference, progress=progress)
    else:
        frame = _train_evaluating_in_memory(
            policy, examples, loss, tcfg, out, tok=tok, evaluation=evaluation,
            reference=reference, progress=progress,
        )  # fmt: skip
    return run.labelled(frame, n_pairs=len(examples))
