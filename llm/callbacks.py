"""A ``transformers.TrainerCallback`` that logs the teacher-forced diagnostics of
``llm.diagnose`` at each evaluation of TRL's ``DPOTrainer`` (or any ``Trainer``).

    from llm.callbacks import DiagnosticsCallback
    callback = DiagnosticsCallback.from_rows(ref_model, eval_rows, tokenizer, beta=0.1)
    trainer = DPOTrainer(..., callbacks=[callback])

At each evaluation it measures the policy against the reference on the given pairs
(``chosen_logp_change``, ``rejected_logp_change``, ``chosen_falls_share``, ``both_fall_share``,
``margin``, ``accuracy``), appends them to the trainer's log history as ``diagnose/<name>`` (so
every later checkpoint's ``trainer_state.json`` holds them), adds them to the evaluation's
metrics dict as ``eval_diagnose/<name>``, and rewrites ``<output_dir>/diagnostics.csv``.
experiments/diagnose.py measures the same columns, and the sampled ones, from the checkpoints.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import nn
from transformers import TrainerCallback

from llm.data import Example, TruncationConfig, tokenize_rows
from llm.diagnose import PairLogps64, pair_logps, teacher_forced
from treemdp.runs import write_table

__all__ = ["DIAGNOSTICS_TABLE", "DiagnosticsCallback"]

DIAGNOSTICS_TABLE = "diagnostics.csv"


class DiagnosticsCallback(TrainerCallback):
    """Teacher-forced diagnostics of the policy against ``reference`` at each evaluation.

    Args:
        reference: the frozen reference model (not modified; moved to the policy's device).
        examples: tokenized preference pairs (``llm.data.Example``).
        pad_id: the tokenizer's padding id.
        objective: registry objective whose implicit reward gives margin and accuracy.
        beta: its β.
        batch_size: pairs per forward.
    """

    def __init__(
        self,
        reference: nn.Module,
        examples: list[Example],
        *,
        pad_id: int,
        objective: str = "dpo",
        beta: float = 0.1,
        batch_size: int = 32,
    ) -> None:
        if not examples:
            raise ValueError("examples must be non-empty")
        self.reference, self.examples, self.pad_id = reference, examples, pad_id
        self.objective, self.beta, self.batch_size = objective, beta, batch_size
        self.rows: list[dict[str, Any]] = []
        self._ref: PairLogps64 | None = None

    @classmethod
    def from_rows(
        cls,
        reference: nn.Module,
        rows: Iterable[Mapping[str, Any]],
        tokenizer: Any,
        truncation: TruncationConfig | None = None,
        **kwargs: Any,
    ) -> DiagnosticsCallback:
        """From rows in TRL's standard preference format (text ``prompt`` / ``chosen`` /
        ``rejected``: a list of dicts or a ``datasets.Dataset``), tokenized as llm.data does."""
        examples, _ = tokenize_rows(enumerate(rows, 1), tokenizer, truncation or TruncationConfig())
        return cls(reference, examples, pad_id=tokenizer.pad_token_id, **kwargs)

    @torch.no_grad()
    def measure(self, policy: nn.Module) -> dict[str, float]:
        """The diagnostics of ``policy`` now (eval mode inside, its mode restored after)."""
        device = next(policy.parameters()).device
        if self._ref is None:
            self.reference.to(device).eval()
            self._ref = pair_logps(
                self.reference, self.examples, pad_id=self.pad_id, batch_size=self.batch_size
            )
        was_training = policy.training
        policy.eval()
        try:
            pol = pair_logps(policy, self.examples, pad_id=self.pad_id, batch_size=self.batch_size)
        finally:
            policy.train(was_training)
        return teacher_forced(pol, self._ref, objective=self.objective, beta=self.beta)

    def on_evaluate(self, args, state, control, model=None, metrics=None, **kwargs):
        if model is None:
            return control
        values = self.measure(model)
        state.log_history.append(
            {"step": state.global_step, **{f"diagnose/{k}": v for k, v in values.items()}}
        )
        if metrics is not None:
            metrics.update({f"eval_diagnose/{k}": v for k, v in values.items()})
        self.rows.append({"step": state.global_step, "epoch": state.epoch, **values})
        if args.output_dir and state.is_world_process_zero:
            out = Path(args.output_dir)
            out.mkdir(parents=True, exist_ok=True)
            write_table(out / DIAGNOSTICS_TABLE, pd.DataFrame(self.rows))
        return control
