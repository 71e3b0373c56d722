"""The LLM side of the toy-vs-LLM bridge on a tree problem: SFT a GPT-NeoX on samples of the toy's
π_ref, then train a DAA from it on the problem's pairs and evaluate every checkpoint exactly.

Used by ``experiments/llm_confirm.py`` (one setting) and ``experiments/confirm_grid.py`` (a grid).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import torch

from llm.data import Example
from llm.eval_run import evaluate_run
from llm.evaluate import EvalSettings, EvalTask, TreeTask
from llm.judges import GoldJudge
from llm.model import PYTHIA_SHAPES, build_model, load_model
from llm.train import DAALoss, TrainConfig, sft_loss, train
from llm.tree_language import TreeLanguage
from treemdp.problem import Problem
from treemdp.runs import atomic_write

__all__ = ["daa_llm", "sft_llm"]


def _write_json(path: Path, data: dict) -> None:
    text = json.dumps(data, indent=2) + "\n"
    atomic_write(path, lambda p: p.write_text(text))


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
) -> Path:
    """SFT a GPT-NeoX of shape ``model`` (or a hub name / folder) on ``samples`` samples of run
    ``run``'s π_ref (``problem.ref_logp[run]``, drawn with ``seed``) into ``out``; resumes a
    killed run; returns the final checkpoint folder."""
    tree = problem.tree
    language = TreeLanguage(tree)
    tok = language.tokenizer()
    gen = torch.Generator().manual_seed(seed)
    probs = torch.exp(problem.ref_logp[run])
    leaves = torch.multinomial(probs, samples, replacement=True, generator=gen).tolist()
    examples = []
    for i, y in enumerate(leaves):
        prompt, tokens = language.prompt(int(tree.leaf_prompt[y])), language.response(y)
        examples.append(Example(prompt, tokens, tokens, i + 1))  # SFT reads only ``chosen``
    if model in PYTHIA_SHAPES:
        # built directly on the device: initialising a 1b model on a GPU takes a fraction of the
        # seconds it takes on a CPU (the weights then come from that device's generator)
        policy = build_model(model, seed=seed, vocab_size=len(tok), device=device)
    else:
        policy = load_model(model)
        if policy.config.vocab_size < len(tok):
            raise ValueError(f"--model {model} has fewer tokens than the tree language")
    batch = min(batch_size, len(examples))
    tcfg = TrainConfig(
        lr=lr,
        warmup_steps=0,
        batch_size=batch,
        micro_batch_size=batch,
        epochs=epochs,
        checkpoint_every=0,
        seed=seed,
    )
    _write_json(
        out / "config.json",
        {"stage": "sft", "model": model, "seed": seed, "source": "tree",
         "batch_size": batch, "lr": lr},
    )  # fmt: skip
    _write_json(out / "data.json", {"pairs": len(examples), "skipped": 0})
    policy.to(device)
    return train(
        policy, examples, sft_loss, tcfg, out, pad_id=tok.pad_token_id, tokenizer=tok,
        resume=True, progress=progress,
    )  # fmt: skip


def daa_llm(
    task: TreeTask,
    sft: Path,
    objective: str,
    beta: float,
    out: Path,
    *,
    lr: float,
    batch_size: int,
    epochs: float,
    checkpoints: int,
    seed: int,
    size: str,
    eval_samples: int,
    device: str,
    progress: bool,
    data_seed: int | None = None,
) -> pd.DataFrame:
    """Train ``objective`` at ``beta`` from the SFT folder (a frozen copy as reference) on the
    task's pairs into ``out``, with ``checkpoints`` evenly spaced checkpoints, and evaluate every
    checkpoint (exact and sampled, gold judge). Full batch (``batch_size`` = P, ``epochs`` =
    steps) is the toy's regime; ``batch_size`` < P with one epoch is the paper's.
    ``data_seed`` (default ``seed``) fixes the pair order: epoch e visits ``randperm(P,
    data_seed + e)`` (``llm.train``), the order ``treemdp.batching.EpochSchedule(P, batch,
    seed=data_seed)`` gives the toy in its first epoch.

    Returns:
        The eval table with ``objective``, ``beta``, ``side`` ("llm"), ``step`` and ``fraction``
        (of all training steps) added.
    """
    tree = task.tree
    language = TreeLanguage(tree)
    tok = language.tokenizer()
    examples, _ = language.examples(task.chosen, task.rejected)
    P = len(examples)
    batch = min(batch_size, P)
    steps = math.ceil(epochs * P / batch)
    every = max(1, steps // checkpoints)
    policy = load_model(sft).to(device)
    run_config = {
        "stage": "daa", "objective": objective, "beta": beta, "model": str(sft),
        "size": size, "n_params": sum(p.numel() for p in policy.parameters()),
        "seed": seed, "source": "tree", "tree_branching": tree.branching,
        "tree_depth": tree.max_depth, "batch_size": batch, "lr": lr, "reference": "",
    }  # fmt: skip
    _write_json(out / "config.json", run_config)
    _write_json(out / "data.json", {"pairs": P, "skipped": 0})
    task.write(out)
    reference = load_model(sft).to(device).requires_grad_(False)
    tcfg = TrainConfig(
        lr=lr,
        warmup_steps=0,
        batch_size=batch,
        micro_batch_size=batch,
        epochs=epochs,
        checkpoint_every=every * batch,
        seed=seed if data_seed is None else data_seed,
    )
    train(
        policy, examples, DAALoss(objective, beta, reference=reference), tcfg, out,
        pad_id=tok.pad_token_id, tokenizer=tok, resume=True, progress=progress,
    )  # fmt: skip
    del policy, reference
    eval_task = EvalTask(
        prompts=language.prompts(eval_samples),
        pairs=examples,
        tokenizer=tok,
        eos_id=None,
        pad_id=tok.pad_token_id,
        objective=objective,
        beta=beta,
        tree=task,
    )
    settings = EvalSettings(samples=eval_samples, max_new_tokens=tree.max_depth, seed=seed)
    frame = evaluate_run(
        out, eval_task, settings, GoldJudge(tree, task.rewards), device=device,
        progress=progress,
    )  # fmt: skip
    return frame.assign(
        objective=objective, beta=beta, side="llm", step=frame["checkpoint"],
        fraction=frame["checkpoint"] / steps,
    )  # fmt: skip
