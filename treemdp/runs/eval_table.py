"""The evaluation table of an LLM run, ``<run>/eval.csv``: one definition of its schema.

The table crosses three packages: ``llm.eval_run`` writes it, ``experiments/llm_eval.py`` and
``experiments/llm_confirm.py`` print and compare it, ``figures.checkpoints`` draws it. It lives
here, in the infrastructure every package may import, so figures need no ``llm`` (nor
transformers).

One row per evaluated checkpoint, ordered by step; step 0 is the reference model. ``COLUMNS`` come
first, in this order, and are all numbers; the evaluation's other measurements follow them (the
exact tree metrics ``exact_*``, judge counts, ``checkpoint_path``, ``DIGEST``, ...; docs/llm.md
lists them all).
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

__all__ = ["COLUMNS", "DIGEST", "EVAL_TABLE", "SCHEMA", "Column", "check"]

EVAL_TABLE = "eval.csv"
"""The file name of the table inside a run folder."""


@dataclass(frozen=True)
class Column:
    """One column of the contract.

    Attributes:
        name: the column's header.
        dtype: ``"int"`` or ``"float"`` (NaN where a value is undefined).
        meaning: what the value is, with its unit.
    """

    name: str
    dtype: str
    meaning: str


SCHEMA = (
    Column("checkpoint", "int", "optimizer steps of the checkpoint; 0 = the reference model"),
    Column("examples_seen", "float", "step × the run's batch size (NaN when it is unknown)"),
    Column("fraction_of_epoch", "float", "examples seen / the run's pairs (NaN when unknown)"),
    Column("kl_reverse", "float", "KL(π‖π_ref) in nats, estimated on policy samples"),
    Column("kl_reverse_se", "float", "its standard error"),
    Column("kl_forward", "float", "KL(π_ref‖π) in nats, estimated on reference samples"),
    Column("kl_forward_se", "float", "its standard error"),
    Column("length_mean", "float", "mean policy sample length in tokens"),
    Column("logratio_length_r2", "float", "R² of log π/π_ref on length (NaN: one length)"),
    Column("reward_accuracy", "float", "held-out pairs with a positive implicit margin (share)"),
    Column("loss", "float", "the run objective's mean loss on the held-out pairs"),
    Column("win_rate", "float", "judge's mean score against the baseline (NaN: no judge)"),
    Column("win_rate_se", "float", "its standard error"),
)
"""The columns every ``eval.csv`` has, first and in this order (the readers' contract)."""

COLUMNS = tuple(c.name for c in SCHEMA)
"""The names of ``SCHEMA``."""

DIGEST = "checkpoint_sha256"
"""The column tying each row to the weights it measured (the sha256 of the checkpoint's
``model.safetensors``; ``reference`` for step 0), so a resumed evaluation redoes rewritten ones."""


def _has_dtype(column: pd.Series, dtype: str) -> bool:
    if dtype == "int":
        return pd.api.types.is_integer_dtype(column)
    return pd.api.types.is_numeric_dtype(column) and not pd.api.types.is_bool_dtype(column)


def check(frame: pd.DataFrame, where: str = EVAL_TABLE) -> pd.DataFrame:
    """``frame`` with ``COLUMNS`` first, in order, the other columns after them as they were.

    Args:
        frame: an evaluation table.
        where: names the table in errors (its path when read from disk).

    Raises:
        ValueError: a column of ``COLUMNS`` is missing or not of its ``dtype`` (ints for ``int``,
            numbers for ``float``).
    """
    missing = [c for c in COLUMNS if c not in frame.columns]
    if missing:
        raise ValueError(f"{where} lacks columns {missing}; it was written by another version")
    wrong = [f"{c.name} ({c.dtype})" for c in SCHEMA if not _has_dtype(frame[c.name], c.dtype)]
    if wrong:
        raise ValueError(f"{where}: columns not of their type: {', '.join(wrong)}")
    return frame[[*COLUMNS, *(c for c in frame.columns if c not in COLUMNS)]]
