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
from llm.eval_run import RunEvaluation, evaluate_run
from llm.evaluate import EvalSettings, EvalTask, TreeTask
from llm.judges import GoldJudge
from llm.losses import DAALoss, sft_loss
from llm.model import PYTHIA_SHAPES, build_model, load_model, parse_dtype, progress_bars_off
from llm.train import TrainConfig, train
from llm.tree_language import TreeLanguage
from treemdp.problem import Problem
from treemdp.runs import atomic_write

__all__ = ["daa_llm", "sft_llm"]

SFT_MODEL = "model"
"""The SFT's weights-only model folder (``sft_llm(keep_state=False)``)."""
DONE = "done"
"""Marks a finished weights-only folder or an in-memory run's finished eval.csv."""


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
    keep_state: bool = True,
) -> Path:
    """SFT a GPT-NeoX of shape ``model`` (or a hub name / folder) on ``samples`` samples of run
    ``run``'s π_ref (``problem.ref_logp[run]``, drawn with ``seed``) into ``out``; resumes a
    killed run; returns the final checkpoint folder.

    ``keep_state=False`` writes no trainer checkpoint (weights + RMSProp state: ~56 GB at 6.9b)
    but only the final weights, ``out/model`` (a loadable model folder, ~28 GB at 6.9b in
    fp32); a finished ``out/model`` is reused, a killed run starts over."""
    if not keep_state and (Path(out) / SFT_MODEL / DONE).is_file():
        return Path(out) / SFT_MODEL
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
    final = train(
        policy, examples, sft_loss, tcfg, out, pad_id=tok.pad_token_id, tokenizer=tok,
        resume=True, progress=progress, save=keep_state,
    )  # fmt: skip
    if keep_state:
        assert final is not None
        return final
    folder = Path(out) / SFT_MODEL
    with progress_bars_off():
        policy.save_pretrained(folder)
    tok.save_pretrained(folder)
    (folder / DONE).write_text("")
    return folder


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
    hyper: dict | None = None,
    keep_weights: bool = True,
    reference_dtype: str = "fp32",
    held_out: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> pd.DataFrame:
    """Train ``objective`` at ``beta`` from the SFT folder (a frozen copy as reference) on the
    task's pairs into ``out``, with ``checkpoints`` evenly spaced checkpoints, and evaluate every
    checkpoint (exact and sampled, gold judge). Full batch (``batch_size`` = P, ``epochs`` =
    steps) is the toy's regime; ``batch_size`` < P with one epoch is the paper's.
    ``data_seed`` (default ``seed``) fixes the pair order: epoch e visits ``randperm(P,
    data_seed + e)`` (``llm.train``), the order ``treemdp.batching.EpochSchedule(P, batch,
    seed=data_seed)`` gives the toy in its first epoch. ``hyper``: the objective's other
    hyperparameters (e.g. R-DPO's α; lengths come from the pairs' token counts).
    ``held_out``: (chosen, rejected) response indices of the pairs the evaluation's accuracy and
    loss are measured on (default: the training pairs).

    ``keep_weights=False`` writes no checkpoint: each is evaluated in memory at its step
    (``llm.train.train(save=False, on_checkpoint=...)`` into ``llm.eval_run.RunEvaluation``),
    giving the rows a kept checkpoint would get but for ``checkpoint_path`` ("in-memory") and
    ``checkpoint_sha256`` (of the parameters, not of a file); a killed run starts over, a
    finished one (``out/done``) is read back. ``reference_dtype``: the frozen reference's
    precision in the loss and the evaluation (``llm.model.DTYPES``; fp16 halves its memory on a
    GPU).

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
    hyper = dict(hyper or {})
    eval_pairs = examples if held_out is None else language.examples(*held_out)[0]
    eval_task = EvalTask(
        prompts=language.prompts(eval_samples),
        pairs=eval_pairs,
        tokenizer=tok,
        eos_id=None,
        pad_id=tok.pad_token_id,
        objective=objective,
        beta=beta,
        hyper=hyper,
        tree=task,
    )
    settings = EvalSettings(samples=eval_samples, max_new_tokens=tree.max_depth, seed=seed)
    judge = GoldJudge(tree, task.rewards)

    def finish(frame: pd.DataFrame) -> pd.DataFrame:
        return frame.assign(
            objective=objective, beta=beta, side="llm", step=frame["checkpoint"],
            fraction=frame["checkpoint"] / steps,
        )  # fmt: skip

    if not keep_weights and (out / DONE).is_file():
        return finish(RunEvaluation(out, eval_task, settings, judge, device=device).table())
    policy = load_model(sft).to(device)
    run_config = {
        "stage": "daa", "objective": objective, "beta": beta, "model": str(sft),
        "size": size, "n_params": sum(p.numel() for p in policy.parameters()),
        "seed": seed, "source": "tree", "tree_branching": tree.branching,
        "tree_depth": tree.max_depth, "batch_size": batch, "lr": lr, "reference": "",
        "hyper": hyper, "keep_weights": keep_weights, "reference_dtype": reference_dtype,
    }  # fmt: skip
    _write_json(out / "config.json", run_config)
    _write_json(out / "data.json", {"pairs": P, "skipped": 0})
    task.write(out)
    dtype = parse_dtype(reference_dtype)
    reference = load_model(sft, dtype=dtype).to(device).requires_grad_(False).eval()
    tcfg = TrainConfig(
        lr=lr,
        warmup_steps=0,
        batch_size=batch,
        micro_batch_size=batch,
        epochs=epochs,
        checkpoint_every=every * batch,
        seed=seed if data_seed is None else data_seed,
    )
    loss = DAALoss(objective, beta, hyper=hyper, reference=reference)
    if keep_weights:
        train(
            policy, examples, loss, tcfg, out, pad_id=tok.pad_token_id, tokenizer=tok,
            resume=True, progress=progress,
        )  # fmt: skip
        del policy
        frame = evaluate_run(
            out, eval_task, settings, judge, device=device, progress=progress,
            reference=reference,
        )  # fmt: skip
        return finish(frame)
    # In memory: the reference's row and samples first (the very ones evaluate_run draws), then
    # a row per checkpoint step as training reaches it; no weights are written.
    evaluation = RunEvaluation(
        out, eval_task, settings, judge, device=device, force=True, reference=reference
    )
    evaluation.add(0, reference, path="reference", digest="reference")
    train(
        policy, examples, loss, tcfg, out, pad_id=tok.pad_token_id, tokenizer=tok,
        progress=progress, save=False, on_checkpoint=lambda step, m: evaluation.add(step, m),
    )  # fmt: skip
    (out / DONE).write_text("")
    return finish(evaluation.table())
