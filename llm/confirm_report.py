"""What the confirm grid (``experiments/confirm_grid.py``) prints once its tables are written:
the wall seconds it computed, the raw toy-LLM agreement and the closest toy per size, and the
bridge's verdicts with their power. Reads the tables only; writes nothing but stdout."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd

__all__ = ["report_agreement", "report_bridge", "report_timings"]


def report_bridge(table: pd.DataFrame, selection: pd.DataFrame, *, target_effect: float) -> None:
    """The bridge table (one verdict per quantity: its spearman or κ row), the minimal
    detectable effect at the seeds run and the seeds ``target_effect`` (``--target-effect``)
    needs.

    Args:
        table: ``treemdp.bridge.bridge``'s table (``BRIDGE_COLUMNS``).
        selection: its selection table (quantity, statistic, seeds_needed, ...).
        target_effect: the rank correlation / κ above its bar to plan seeds for.
    """
    verdicts = table[table["statistic"].isin(["spearman", "kappa", "llm_rate_vs_shuffled"])]
    plan = selection.set_index(["quantity", "statistic"])["seeds_needed"]
    shown = verdicts.join(plan, on=["quantity", "statistic"])
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        print("bridge: does the toy predict the LLM? (held-out seeds; bar = max(baseline, 0))")
        print(shown.to_string(index=False, float_format=lambda x: f"{x:.2f}"))
    n = int(table["n_seeds"].max()) if len(table) else 0
    mdes = verdicts["mde"].replace([np.inf, -np.inf], np.nan).dropna()
    if len(mdes):
        print(
            f"power: {n} scoring seeds detect a rank correlation / κ above its bar of "
            f"{mdes.median():.2f} (median MDE over quantities, 80% power); "
            f"an effect of {target_effect:g} needs {int(shown['seeds_needed'].median())} "
            "scoring seeds (median; -1: no interval to plan from)"
        )


def report_timings(timing: pd.DataFrame) -> None:
    """Count, mean and sum of the wall seconds per kind of stage (toy, sft, daa+eval) and size.

    Args:
        timing: rows (stage, size, seconds) of what this invocation computed (``timings.csv``).
    """
    if timing.empty:
        print("timings: nothing computed (every part was finished)")
        return
    first = timing["stage"].str.split(" ").str[0]
    kind = first.where(first.isin(["toy", "sft"]), "daa+eval")
    summary = (
        timing.assign(kind=kind)
        .groupby(["kind", "size"], sort=False)["seconds"]
        .agg(["count", "mean", "sum"])
        .reset_index()
    )
    print("timings (wall seconds computed by this run):")
    print(summary.to_string(index=False, float_format=lambda x: f"{x:.1f}"))


def report_agreement(
    agree: pd.DataFrame,
    by_size: pd.DataFrame,
    closest: pd.DataFrame,
    *,
    skipped: int,
    budget_s: float,
    folder: Path,
    seconds: float,
) -> None:
    """The raw agreement over all cells per toy capacity and regime, the two closest toys per
    size, the runs ``--budget-s`` left undone, and the summary line.

    Args:
        agree: ``treemdp.agreement.agreement`` rows.
        by_size: ``treemdp.agreement.closest_by_size`` rows.
        closest: ``treemdp.agreement.closest_toy`` rows (one per LLM run).
        skipped: LLM runs not started because ``budget_s`` was spent.
        budget_s: ``--budget-s``.
        folder: the grid's run folder.
        seconds: wall seconds of the invocation.
    """
    overall = agree[
        (agree["objective"] == "all") & (agree["size"] == "all") & (agree["lr"] == "all")
    ]
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        print(
            "raw agreement with the LLM over all cells (95% Wilson interval), beside the "
            "majority-class rate and κ (not a verdict: see the bridge below):"
        )
        print(
            overall[
                [
                    "toy",
                    "regime",
                    "cells",
                    "agree",
                    "rate",
                    "ci_low",
                    "ci_high",
                    "majority_rate",
                    "kappa",
                    "toy_degrades",
                    "llm_degrades",
                ]
            ].to_string(index=False, float_format=lambda x: f"{x:.2f}")
        )
        print("closest toy per size (share of the size's LLM runs):")
        best = by_size.sort_values("share", ascending=False, kind="stable")
        best = best.groupby(["size", "regime"], sort=False).head(2)
        print(best.to_string(index=False, float_format=lambda x: f"{x:.2f}"))
    if skipped:
        print(
            f"budget of {budget_s:g} s reached: {skipped} LLM runs not started; "
            "rerun the same command to continue"
        )
    print(
        f"grid: {len(closest)} LLM runs in {seconds:.1f} s; results in {folder}/ "
        "(bridge.csv, bridge_selection.csv, cells.csv, agreement.csv, closest_toy.csv, "
        "agreement.png)",
        file=sys.stdout,
    )
