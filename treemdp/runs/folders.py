"""Run folders: ``config.json`` + tidy CSV tables, named from their config, reused when complete.

A run folder's name is derived from its config (a readable prefix and a hash of the whole
config), so running the same config again finds the folder instead of duplicating it. A folder is
complete when its first table exists; that table is written last.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from treemdp.runs.files import missing_files, verify_folder
from treemdp.runs.tables import config_dict, read_config, read_table, write_config, write_table

__all__ = ["cached_tables", "find_runs", "number_name", "run_folder", "save_diverged"]


def number_name(value: float) -> str:
    """``value`` as it appears in a folder or file name: ``%g`` (``0.1``, ``0.001``, ``1e-05``)
    where that reads back as the same float, else the shortest string that does (``repr``:
    ``0.0010000001``), so distinct values always get distinct names (``%g`` alone gave
    ``0.001`` for both 0.001 and 0.0010000001, and the second run reused the first's folder)."""
    short = f"{value:g}"
    return short if float(short) == value else repr(float(value))


OMITTED_AT_DEFAULT = {"precision": "float64"}
"""Flags added after results existed: left out of the hash at these values, so the folders
written before them keep their names (float64 is what every earlier run used)."""


def run_folder(root: str | Path, config: Any, *, prefix: str, ignore: tuple[str, ...] = ()) -> Path:
    """``root/<prefix>-<hash>``: the hash covers every config field except ``ignore`` (fields
    such as the output folder or --force that do not change the results) and those at their
    ``OMITTED_AT_DEFAULT`` value."""
    fields = {
        k: v
        for k, v in config_dict(config).items()
        if k not in ignore and not (k in OMITTED_AT_DEFAULT and v == OMITTED_AT_DEFAULT[k])
    }
    digest = hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:10]
    return Path(root) / f"{prefix}-{digest}"


def find_runs(root: str | Path, table: str) -> list[tuple[Path, dict[str, Any]]]:
    """Complete run folders under ``root`` (those holding ``table``), newest first, with their
    configs. Folders with a missing or corrupt config are skipped."""
    found = []
    for folder in Path(root).glob("*/"):
        if not (folder / table).exists():
            continue
        try:
            config = read_config(folder)
        except ValueError:
            continue
        found.append((folder, config))
    return sorted(found, key=lambda fc: (fc[0] / table).stat().st_mtime, reverse=True)


def cached_tables(
    folder: str | Path,
    config: Any,
    names: Sequence[str],
    compute: Callable[[], Mapping[str, pd.DataFrame | None]],
    *,
    force: bool = False,
) -> tuple[dict[str, pd.DataFrame], bool]:
    """A run folder's tables ``<name>.csv``: reused when all of ``names`` exist, else computed.

    On a miss (or with ``force``), ``compute()`` returns name → table (None: not written); then
    ``config.json`` and every table are written atomically, ``names[0]`` last, so its presence
    marks the folder complete and a killed run is simply recomputed. Reuse checks every file the
    folder's manifest lists (``verify_folder``): a corrupt one, or a missing manifest, is a
    ValueError naming it; a listed file that was deleted makes the folder incomplete
    (recomputed).

    Returns:
        The tables of ``names`` and whether they were reused.
    """
    folder = Path(folder)
    paths = {name: folder / f"{name}.csv" for name in names}
    if not force and all(p.exists() for p in paths.values()) and not missing_files(folder):
        verify_folder(folder)
        return {name: read_table(p) for name, p in paths.items()}, True
    tables = dict(compute())
    missing = [name for name in names if tables.get(name) is None]
    if missing:
        raise RuntimeError(f"compute() returned no table for {missing}")
    write_config(folder, config)
    for name in [*[n for n in tables if n != names[0]], names[0]]:
        if tables[name] is not None:
            write_table(folder / f"{name}.csv", tables[name])
    return {name: tables[name] for name in names}, False


def save_diverged(folder: str | Path, config: Any, error: Any, *, name: str = "metrics") -> str:
    """Save what a diverged training run logged (``error.history.frame``, a
    ``TrainingDivergedError``) as ``folder/<name>.diverged.csv`` beside ``config.json``; the
    complete-folder marker is never written, so a rerun starts afresh.

    Returns:
        One line for the user: what went wrong, at which step, and where the partial table is.
    """
    folder = Path(folder)
    write_config(folder, config)
    frame = error.history.frame
    path = write_table(folder / f"{name}.diverged.csv", frame)
    steps = frame["step"].nunique() if "step" in frame else 0
    return (
        f"training diverged: {error}; the {steps} logged steps before it are saved in {path} "
        "(lower the learning rate, or keep β away from the extreme value that diverged, then "
        "rerun)"
    )
