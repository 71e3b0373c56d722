"""A run folder's evaluation: the reference (step 0) and every checkpoint, resumable.

``evaluate_run`` writes ``eval.csv`` (one row per checkpoint, in the schema of
``treemdp.runs.eval_table``: the contract the readers rely on) and ``eval.json`` (the settings it
was written with), reuses the rows of finished checkpoints, and caches the reference's samples
(``eval_reference.pt``) so a resumed evaluation compares against the very same samples. The
per-model math is ``llm.evaluate``.
"""

from __future__ import annotations

import hashlib
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

from llm.checkpoint import checkpoint_digest, checkpoint_step, complete_checkpoints
from llm.evaluate import (
    EvalSettings,
    EvalTask,
    ReferenceSamples,
    evaluate_model,
    reference_samples,
)
from llm.judges import Judge
from llm.model import PYTHIA_SHAPES, build_model, load_model, progress_bars_off
from treemdp.runs import atomic_write, read_table, write_table
from treemdp.runs.eval_table import DIGEST, EVAL_TABLE, check

__all__ = ["RunEvaluation", "evaluate_run", "load_reference", "model_digest"]

EVAL_SETTINGS = "eval.json"
REFERENCE_SAMPLES = "eval_reference.pt"
IN_MEMORY = "in-memory"
"""``checkpoint_path`` of a row measured in memory (``RunEvaluation.add``): no folder."""


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


class RunEvaluation:
    """The evaluation of one run folder, a row at a time: ``eval.csv`` (reusing the rows of an
    earlier evaluation with the same settings), the reference model and its cached samples.

    ``evaluate_run`` feeds it the run's checkpoints from disk; a trainer that keeps no weights
    (``llm.train.train(save=False, on_checkpoint=...)``) feeds it the policy in memory at each
    checkpoint step (``add``), so a checkpoint is measured without ever being written.
    """

    def __init__(
        self,
        run_dir: Path,
        task: EvalTask,
        settings: EvalSettings,
        judge: Judge | None,
        *,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        force: bool = False,
        reference: nn.Module | None = None,
    ) -> None:
        self.run_dir, self.table_path = Path(run_dir), Path(run_dir) / EVAL_TABLE
        self.task, self.settings, self.judge = task, settings, judge
        self.device, self.dtype = device, dtype
        self.config = _run_config(self.run_dir)
        self.data = _read_json(self.run_dir / "data.json")
        self.rows = _start(self.run_dir, _settings_record(task, settings, judge), force=force)
        self._reference = reference
        self._ref: ReferenceSamples | None = None

    @property
    def reference(self) -> nn.Module:
        """The run's reference model (``load_reference``, or the one given), loaded once."""
        if self._reference is None:
            vocab = len(self.task.tokenizer)
            self._reference = load_reference(self.config, vocab_size=vocab, dtype=self.dtype)
            self._reference = self._reference.to(self.device).eval()
        return self._reference

    @property
    def reference_samples(self) -> ReferenceSamples:
        """The reference's samples, cached in the run folder (drawn once)."""
        if self._ref is None:
            self._ref = _reference_samples(self.run_dir, self.reference, self.task, self.settings)
        return self._ref

    def todo(self) -> list[tuple[int, Path | None, str]]:
        """``(step, folder, digest)`` of the reference (folder None) and every complete
        checkpoint on disk whose row is missing or stale; drops the stale rows."""
        todo, self.rows = _todo(self.run_dir, self.rows)
        return todo

    def has(self, step: int) -> bool:
        """Whether ``eval.csv`` has a row for ``step``."""
        return any(int(r["checkpoint"]) == step for r in self.rows)

    @torch.no_grad()
    def add(
        self, step: int, policy: nn.Module, *, path: str = IN_MEMORY, digest: str | None = None
    ) -> dict[str, Any]:
        """Measure ``policy`` as checkpoint ``step`` and write its row (replacing any row of that
        step). ``path`` and ``digest`` default to ``"in-memory"`` and ``model_digest(policy)``:
        the row of a checkpoint that was never written."""
        was_training = policy.training
        policy.eval()
        try:
            row = {
                "checkpoint": step,
                **_position(step, self.config, self.data),
                "checkpoint_path": path,
                DIGEST: model_digest(policy) if digest is None else digest,
                **evaluate_model(
                    policy, self.reference, self.reference_samples, self.task, self.settings,
                    self.judge, step=step,
                ),
            }  # fmt: skip
        finally:
            policy.train(was_training)
        kept = [r for r in self.rows if int(r["checkpoint"]) != step]
        self.rows = sorted([*kept, row], key=lambda r: int(r["checkpoint"]))
        write_table(self.table_path, check(pd.DataFrame(self.rows), str(self.table_path)))
        return row

    def table(self) -> pd.DataFrame:
        """``eval.csv`` as on disk (checked against the schema)."""
        return check(read_table(self.table_path), str(self.table_path))


def model_digest(model: nn.Module) -> str:
    """``"params:"`` and the sha256 of a model's parameters and buffers (names, shapes, dtypes
    and bytes, in state-dict order): the digest of an in-memory checkpoint's row."""
    h = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype};".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return "params:" + h.hexdigest()


@progress_bars_off()  # "Loading weights" bars, once per checkpoint: noise
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
    reference: nn.Module | None = None,
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
        reference: the reference model, already loaded (default: ``load_reference``).

    Returns:
        The whole table, one row per checkpoint, ordered by step.
    """
    run = RunEvaluation(
        run_dir, task, settings, judge, device=device, dtype=dtype, force=force,
        reference=reference,
    )  # fmt: skip
    load = load or (lambda p: load_model(p, dtype=dtype))
    todo = run.todo()
    if not todo:
        return run.table()
    for step, folder, digest in tqdm(todo, desc="evaluate", disable=not progress):
        policy = run.reference if folder is None else load(folder).to(device).eval()
        path = str(folder) if folder is not None else "reference"
        row = run.add(step, policy, path=path, digest=digest)
        if on_row is not None:
            on_row(row)
        del policy
    # What is on disk, so a caller sees the same table whether the rows were computed now or
    # read back after an interruption.
    return run.table()


def _run_config(run_dir: Path) -> dict[str, Any]:
    config = _read_json(run_dir / "config.json")
    if not config:
        raise ValueError(f"{run_dir} has no config.json: is it a run folder of llm_train?")
    return config


def _position(step: int, config: dict[str, Any], data: dict[str, Any]) -> dict[str, float]:
    """``examples_seen`` and ``fraction_of_epoch`` at ``step`` (NaN where the run's
    ``config.json`` lacks the batch size or its ``data.json`` the number of pairs)."""
    batch, n_examples = config.get("batch_size"), data.get("pairs")
    return {
        "examples_seen": step * batch if batch else math.nan,
        "fraction_of_epoch": step * batch / n_examples if batch and n_examples else math.nan,
    }


def _settings_record(task: EvalTask, settings: EvalSettings, judge: Judge | None) -> dict:
    """What ``eval.json`` records: rows are reused only under the very same settings."""
    return {
        "settings": asdict(settings),
        "task": task.fingerprint(),
        "judge": judge.name if judge is not None else "none",
    }


def _start(run_dir: Path, meta: dict, *, force: bool) -> list[dict[str, Any]]:
    """The rows of an earlier evaluation with the same settings (none with ``force``, or when
    there is none; then the reference samples are drawn afresh); records ``meta``."""
    table_path = run_dir / EVAL_TABLE
    rows: list[dict[str, Any]] = []
    if table_path.is_file() and not force:
        if _read_json(run_dir / EVAL_SETTINGS) != meta:
            raise ValueError(
                f"{table_path} was written with other evaluation settings ({EVAL_SETTINGS}); "
                "pass --force to start over"
            )
        rows = check(read_table(table_path), str(table_path)).to_dict("records")
    else:
        (run_dir / REFERENCE_SAMPLES).unlink(missing_ok=True)
    text = json.dumps(meta, indent=2) + "\n"
    atomic_write(run_dir / EVAL_SETTINGS, lambda p: p.write_text(text))
    return rows


def _todo(
    run_dir: Path, rows: list[dict[str, Any]]
) -> tuple[list[tuple[int, Path | None, str]], list[dict[str, Any]]]:
    """``(step, folder, digest)`` of the reference (folder None) and every complete checkpoint
    whose row is missing or stale, and the rows that stay."""
    # A row is reused only for the very weights it measured (their sha256): a checkpoint that
    # was rewritten since (the run retrained) is evaluated again and its row replaced.
    done = {int(r["checkpoint"]): r.get(DIGEST) for r in rows}
    todo = [(0, None)] + [(checkpoint_step(c), c) for c in complete_checkpoints(run_dir)]
    todo = [(s, c, _digest(c)) for s, c in todo]
    todo = [(s, c, d) for s, c, d in todo if done.get(s, "") != d]
    stale = {s for s, _, _ in todo}
    return todo, [r for r in rows if int(r["checkpoint"]) not in stale]


def _reference_samples(
    run_dir: Path, reference: nn.Module, task: EvalTask, settings: EvalSettings
) -> ReferenceSamples:
    """The reference's samples: those kept in the run folder, else drawn now and kept."""
    ref_path = run_dir / REFERENCE_SAMPLES
    if ref_path.is_file():
        try:
            saved = torch.load(ref_path, weights_only=False)
            return ReferenceSamples(saved["responses"], saved["logp"])
        except Exception as e:  # written atomically, so damaged from outside
            raise ValueError(
                f"{ref_path} is corrupt ({e.__class__.__name__}); delete it and rerun (the "
                "reference samples are drawn again, and rows already in eval.csv that compared "
                "against them are kept: pass --force to redo those too)"
            ) from None
    ref = reference_samples(reference, task, settings)
    # Serialised in memory first: torch.save names its archive after the file, and the
    # temporary file's random name would make the bytes differ from run to run.
    buffer = io.BytesIO()
    torch.save(asdict(ref), buffer)
    atomic_write(ref_path, lambda p: p.write_bytes(buffer.getvalue()))
    return ref
