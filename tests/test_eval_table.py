"""The LLM evaluation table's schema (treemdp.runs.eval_table): one contract for its writer and
its readers."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from treemdp.runs import read_table, write_table
from treemdp.runs.eval_table import COLUMNS, DIGEST, SCHEMA, check


def table(n: int = 3) -> pd.DataFrame:
    row = {c.name: (0 if c.dtype == "int" else 0.5) for c in SCHEMA}
    rows = [{DIGEST: "reference", **row, "checkpoint": i, "win_rate": math.nan} for i in range(n)]
    return pd.DataFrame(rows).assign(exact_kl_reverse=1.0)


def test_check_puts_the_contract_first_and_keeps_the_rest_in_order(tmp_path):
    frame = check(table())
    assert list(frame.columns) == [*COLUMNS, DIGEST, "exact_kl_reverse"]
    # what the writer wrote reads back as a valid table, in the same column order
    write_table(tmp_path / "eval.csv", frame)
    back = check(read_table(tmp_path / "eval.csv"), "eval.csv")
    assert list(back.columns) == list(frame.columns) and back["checkpoint"].tolist() == [0, 1, 2]


def test_check_names_missing_columns_and_columns_of_the_wrong_type():
    with pytest.raises(ValueError, match=r"run/eval.csv lacks columns \['loss'\]"):
        check(table().drop(columns="loss"), "run/eval.csv")
    with pytest.raises(ValueError, match=r"checkpoint \(int\), kl_forward \(float\)"):
        check(table().assign(checkpoint=0.5, kl_forward="x"))
    with pytest.raises(ValueError, match=r"reward_accuracy \(float\)"):
        check(table().assign(reward_accuracy=True))
