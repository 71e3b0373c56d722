"""A run folder's evaluation: the reference (step 0) and every checkpoint, resumable.

``evaluate_run`` writes ``eval.csv`` (one row per checkpoint, ``COLUMNS`` first: the contract the
figure scripts read) and ``eval.json`` (the settings it was written with), reuses the rows of
finished checkpoints, and caches the reference's samples (``eval_reference.pt``) so a resumed
evaluation compares against the very same samples. The per-model math is ``llm.evaluate``.
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import nn
from tqdm import tqdm

from llm.checkpoint import checkpoint_digest
from llm.evaluate import (
    EvalSettings,
    EvalTask,
    ReferenceSamples,
    evaluate_model,
    reference_samples,
)
from llm.judges import Judge
from llm.model import PYTHIA_SHAPES, build_model, load_model
from treemdp.results import atomic_write, read_table, write_table

__all__ = ["COLUMNS", "EVAL_TABLE", "checkpoints", "evaluate_run", "load_reference"]

EVAL_TABLE = "eval.csv"
EVAL_SETTINGS = "eval.json"
REFERENCE_SAMPLES = "eval_reference.pt"
TREE_PROBLEM = "tree_problem.json"
DIGEST = "checkpoint_sha256"
"""The column tying each row to the weights it measured (``llm.checkpoint.checkpoint_digest``;
``reference`` for step 0)."""

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


def _digest(folder: Path | None) -> str:
    return "reference" if folder is None else checkpoint_digest(folder)


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
    # A row is reused only for the very weights it measured (their sha256): a checkpoint that
    # was rewritten since (the run retrained) is evaluated again and its row replaced.
    done = {int(r["checkpoint"]): r.get(DIGEST) for r in rows}
    todo = [(0, None)] + [(int(c.name.split("-")[1]), c) for c in checkpoints(run_dir)]
    todo = [(s, c, _digest(c)) for s, c in todo]
    todo = [(s, c, d) for s, c, d in todo if done.get(s, "") != d]
    stale = {s for s, _, _ in todo}
    rows = [r for r in rows if int(r["checkpoint"]) not in stale]
    if not todo:
        return read_table(table_path)

    vocab = len(task.tokenizer)
    reference = load_reference(config, vocab_size=vocab, dtype=dtype).to(device).eval()
    ref_path = run_dir / REFERENCE_SAMPLES
    if ref_path.is_file():
        try:
            saved = torch.load(ref_path, weights_only=False)
            ref = ReferenceSamples(saved["responses"], saved["logp"])
        except Exception as e:  # written atomically, so damaged from outside
            raise ValueError(
                f"{ref_path} is corrupt ({e.__class__.__name__}); delete it and rerun (the "
                "reference samples are drawn again, and rows already in eval.csv that compared "
                "against them are kept: pass --force to redo those too)"
            ) from None
    else:
        ref = reference_samples(reference, task, settings)
        # Serialised in memory first: torch.save names its archive after the file, and the
        # temporary file's random name would make the bytes differ from run to run.
        buffer = io.BytesIO()
        torch.save(asdict(ref), buffer)
        atomic_write(ref_path, lambda p: p.write_bytes(buffer.getvalue()))
    for step, folder, digest in tqdm(todo, desc="evaluate", disable=not progress):
        policy = reference if folder is None else load(folder).to(device).eval()
        row = {
            "checkpoint": step,
            "examples_seen": step * batch if batch else math.nan,
            "fraction_of_epoch": step * batch / n_examples if batch and n_examples else math.nan,
            "checkpoint_path": str(folder) if folder is not None else "reference",
            DIGEST: digest,
            **evaluate_model(policy, reference, ref, task, settings, judge, step=step),
        }
        rows.append(row)
        rows.sort(key=lambda r: int(r["checkpoint"]))
        frame = pd.DataFrame(rows)
        write_table(table_path, frame[[*COLUMNS, *(c for c in frame if c not in COLUMNS)]])
        if on_row is not None:
            on_row(row)
        del policy
    # What is on disk, so a caller sees the same table whether the rows were computed now or
    # read back after an interruption.
    return read_table(table_path)
