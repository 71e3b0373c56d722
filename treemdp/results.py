"""Run folders: ``config.json`` + a tidy CSV table (+ figures), every file written atomically.

A run folder's name is derived from its config (a readable prefix and a hash of the whole
config), so running the same config again finds the folder instead of duplicating it. Every
write goes to a temporary file in the same folder and is then renamed over the target
(``os.replace`` is atomic on POSIX): a killed process leaves either the old file or the new one,
never half of one. A folder is complete when its table exists; the table is written last.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

__all__ = [
    "atomic_write",
    "cached_tables",
    "config_dict",
    "config_matches",
    "find_runs",
    "read_config",
    "read_table",
    "run_folder",
    "write_config",
    "write_table",
]


def _read_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _read_umask()  # read once at import: os.umask can only be read by setting it


def config_dict(config: Any) -> dict[str, Any]:
    """A dataclass config as a JSON-ready dict (tuples become lists)."""
    if not dataclasses.is_dataclass(config):
        raise TypeError("config must be a dataclass instance")
    return json.loads(json.dumps(dataclasses.asdict(config)))


def run_folder(root: str | Path, config: Any, *, prefix: str, ignore: tuple[str, ...] = ()) -> Path:
    """``root/<prefix>-<hash>``: the hash covers every config field except ``ignore`` (fields
    such as the output folder or --force that do not change the results)."""
    fields = {k: v for k, v in config_dict(config).items() if k not in ignore}
    digest = hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:10]
    return Path(root) / f"{prefix}-{digest}"


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp)`` on a temporary file beside ``path``, then rename it over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600 files; give the usual permissions
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_config(folder: str | Path, config: Any) -> Path:
    """Write ``folder/config.json`` atomically."""
    text = json.dumps(config_dict(config), indent=2, sort_keys=True) + "\n"
    return atomic_write(Path(folder) / "config.json", lambda p: p.write_text(text))


def read_config(folder: str | Path) -> dict[str, Any]:
    """Read ``folder/config.json``; ValueError naming the file if it is missing or corrupt."""
    path = Path(folder) / "config.json"
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise ValueError(
            f"{path} is missing: the run folder is incomplete; rerun the experiment"
        ) from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is corrupt ({e}); delete the folder and rerun") from None


_SPECIAL = re.compile(r'[,"\r\n]|^\s|\s$|^$')


def _fast_csv(frame: pd.DataFrame) -> str | None:
    """The CSV text of a plain tidy table (numbers, bools, simple strings), or None.

    Floats are written as ``repr`` (the shortest text that parses back to the same float64,
    so full precision), NaN as an empty field, as pandas does; about twice as fast as
    ``to_csv(float_format="%.17g")``, which formats each value in Python. Frames with anything
    that would need quoting (commas, quotes, newlines, missing strings) return None.
    """
    cols: list[list[str]] = []
    for name in frame.columns:
        if _SPECIAL.search(str(name)):
            return None
        values = frame[name].to_numpy()
        kind = values.dtype.kind
        if kind == "f":
            cols.append(["" if v != v else repr(v) for v in values.tolist()])
        elif kind in "iub":
            cols.append(list(map(str, values.tolist())))
        elif kind in "OUT" and all(isinstance(v, str) for v in values.tolist()):
            texts = values.tolist()
            if any(_SPECIAL.search(t) for t in set(texts)):
                return None
            cols.append(texts)
        else:
            return None
    header = ",".join(map(str, frame.columns))
    return "\n".join([header, *map(",".join, zip(*cols, strict=True))]) + "\n"


def write_table(path: str | Path, frame: pd.DataFrame) -> Path:
    """Write a tidy table as CSV atomically (full float precision: every float64 reads back
    bit for bit)."""
    text = _fast_csv(frame)
    if text is None:
        return atomic_write(path, lambda p: frame.to_csv(p, index=False, float_format="%.17g"))
    return atomic_write(path, lambda p: p.write_text(text))


def read_table(path: str | Path, *, columns: tuple[str, ...] = ()) -> pd.DataFrame:
    """Read a tidy CSV table; ValueError naming the file or the missing columns."""
    path = Path(path)
    if not path.exists():
        raise ValueError(f"{path} does not exist: run the experiment that writes it first")
    try:
        frame = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise ValueError(f"{path} is corrupt ({e}); delete it and rerun") from None
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(f"{path} lacks columns {missing}; it was written by another version")
    return frame


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
    marks the folder complete and a killed run is simply recomputed.

    Returns:
        The tables of ``names`` and whether they were reused.
    """
    folder = Path(folder)
    paths = {name: folder / f"{name}.csv" for name in names}
    if not force and all(p.exists() for p in paths.values()):
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


def config_matches(config: Mapping[str, Any], settings: Mapping[str, Any]) -> bool:
    """Whether a run's config.json values include every value in ``settings`` (tuples compare
    as the lists JSON gives back)."""
    return all(
        config.get(k) == (list(v) if isinstance(v, tuple) else v) for k, v in settings.items()
    )
