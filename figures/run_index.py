"""The index of the paper's runs, as figures read it: which run folder feeds which family.

experiments/paper_runs.py runs (or reuses) the paper's runs and writes
``RESULTS/paper_runs/index.csv`` with one row per finished run folder: ``family`` (tree, toy,
llm), ``role`` (ood_mass, toy_scaling, or the LLM's model size), ``quick`` (the tiny --quick
config) and ``run`` (the folder; for llm, each evaluation run folder with eval.csv). Figures only
read it.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from treemdp.runs import read_table

INDEX = "paper_runs/index.csv"
"""The index under the results root (in its own folder, which its writer locks)."""
COLUMNS = ("family", "role", "quick", "run")
"""The index's columns, in order."""
MAKER = "experiments/paper_runs.py"
"""The script that writes the index."""


def command(results: str | Path, family: str, quick: bool) -> str:
    """The command that makes ``family``'s runs under ``results`` and indexes them."""
    return f"python {MAKER} --results {results} --only {family}" + (" --quick" if quick else "")


def read_index(results: str | Path) -> pd.DataFrame:
    """The index under ``results``; ValueError naming the command that writes it if missing."""
    path = Path(results) / INDEX
    if not path.exists():
        raise ValueError(f"no {INDEX} under {results}; run: python {MAKER} --results {results}")
    return read_table(path, columns=COLUMNS)


def run_folders(results: str | Path, family: str, *, quick: bool = False) -> list[Path]:
    """The run folders of ``family`` (the paper's config, or the --quick one) in the index.

    Raises:
        ValueError: the index is missing or lists no such run (the message names the command
            that makes it).
    """
    table = read_index(results)
    rows = table[(table["family"] == family) & (table["quick"] == quick)]
    if rows.empty:
        config = "--quick " if quick else ""
        raise ValueError(
            f"no finished {config}{family} run in {Path(results) / INDEX}; "
            f"run: {command(results, family, quick)}"
        )
    return [Path(p) for p in rows["run"]]
