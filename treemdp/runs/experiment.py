"""The run of an experiment: one writer per run folder, finished tables reused, a diverged training
saved and reported in one line.

Every experiment's ``main`` does the same around its computation; this is it, once::

    with cached_run(folder, config, ["metrics"], compute, force=config.force) as tables:
        quicklook.ood_mass(tables["metrics"], folder / "ood_mass.png")

Imported as ``treemdp.runs.experiment`` (not re-exported by ``treemdp.runs``: it imports the
training loop's ``TrainingDivergedError``, and the engine imports ``treemdp.runs.cli``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from treemdp.runs.cli import RunDivergedError
from treemdp.runs.folders import cached_tables, save_diverged
from treemdp.runs.locks import run_lock
from treemdp.train import TrainingDivergedError

__all__ = ["cached_run"]


@contextlib.contextmanager
def cached_run(
    folder: str | Path,
    config: Any,
    names: Sequence[str],
    compute: Callable[[], Mapping[str, pd.DataFrame | None]],
    *,
    force: bool = False,
    diverged: str | None = None,
    finished: str = "finished results",
) -> Iterator[dict[str, pd.DataFrame]]:
    """Hold ``folder``'s lock (``run_lock``) and yield its tables, reused or computed.

    The tables ``names`` are reused when the folder is complete, else ``compute()`` makes them
    (``cached_tables``; ``force`` recomputes); a reuse is said on stdout. A
    ``TrainingDivergedError`` from ``compute`` saves what training logged (``save_diverged``, as
    ``<diverged>.diverged.csv``) and becomes a ``RunDivergedError`` whose one line says so (the
    command line exits 3). The block runs under the lock: quick-look figures drawn there are
    never half-written by a second process.

    Args:
        folder: the run folder (named from the config: ``run_folder``).
        config: the config dataclass written as ``config.json``.
        names: the tables to yield, ``names[0]`` the one that marks the folder complete.
        compute: name → table (None: not written).
        force: recompute even if the folder is complete.
        diverged: the partial table's name (default ``names[0]``).
        finished: what the reuse line calls the results ("reusing <finished> in <folder>").

    Yields:
        The tables of ``names``.
    """

    def guarded() -> Mapping[str, pd.DataFrame | None]:
        try:
            return compute()
        except TrainingDivergedError as e:
            line = save_diverged(folder, config, e, name=diverged or names[0])
            raise RunDivergedError(line) from None

    with run_lock(folder):  # a second process on this folder refuses; a killed one is redone
        tables, reused = cached_tables(folder, config, names, guarded, force=force)
        if reused:
            print(f"reusing {finished} in {folder} (--force recomputes)")
        yield tables
