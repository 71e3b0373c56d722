"""Run folders: ``config.json`` + a tidy CSV table (+ figures), every file written atomically.

A run folder's name is derived from its config (a readable prefix and a hash of the whole
config), so running the same config again finds the folder instead of duplicating it. Every
write goes to a temporary file in the same folder and is then renamed over the target
(``os.replace`` is atomic on POSIX): a killed process leaves either the old file or the new one,
never half of one. A folder is complete when its table exists; the table is written last.

Checksums: every table (and ``config.json``) written here is recorded in the folder's
``manifest.json`` (sha256 and size) *before* it is renamed into place, with the checksum of the
file it replaces; reading verifies the file against either, so a truncated or altered file is
named with what to do, while a kill between the two renames still reads as the complete old file.

Locks: ``run_lock(folder)`` holds an exclusive ``flock`` on ``folder/.lock`` while an experiment
writes the folder; a second process on the same folder gets ``RunFolderBusyError`` (a
``ValueError``: the command line exits 2 with one line). The kernel drops the lock when its
process dies, so a SIGKILLed run never leaves a stale lock; on taking the lock, temporaries left
by a killed writer are removed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import hashlib
import io
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

__all__ = [
    "LOCK_NAME",
    "MANIFEST",
    "RunFolderBusyError",
    "atomic_write",
    "cached_tables",
    "config_dict",
    "config_matches",
    "find_runs",
    "is_temporary",
    "missing_files",
    "read_checked",
    "read_config",
    "read_table",
    "remove_temporaries",
    "run_folder",
    "run_lock",
    "save_diverged",
    "verify_file",
    "verify_folder",
    "write_checked",
    "write_config",
    "write_table",
]

LOCK_NAME = ".lock"
"""The lock file inside a run folder (``run_lock``)."""
MANIFEST = "manifest.json"
"""Checksums of the files written with ``write_checked`` in a folder."""


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


# ------------------------------------------------------------------ checksums (manifest.json)


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _file_digest(path: Path) -> str | None:
    try:
        with path.open("rb") as f:
            return hashlib.file_digest(f, "sha256").hexdigest()
    except FileNotFoundError:
        return None


def _read_manifest(folder: Path) -> dict[str, Any]:
    path = folder / MANIFEST
    what_to_do = (
        "rerun the experiment with --force to recompute the files it lists (or delete "
        f"{folder} and rerun)"
    )
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path} is corrupt ({e}); {what_to_do}") from None
    if not isinstance(manifest, dict) or not all(isinstance(v, dict) for v in manifest.values()):
        raise ValueError(f"{path} is corrupt (not a JSON object of file entries); {what_to_do}")
    return manifest


def write_checked(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically and record its sha256 and size in the folder's
    ``manifest.json`` (first, with the checksum of the file it replaces, so a kill between the
    two renames leaves a file that still verifies)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    manifest = _read_manifest(path.parent)
    entry = {"sha256": _digest(data), "bytes": len(data)}
    old = manifest.get(path.name, {})
    previous = _file_digest(path)
    if previous is not None and previous != entry["sha256"]:
        entry["previous"] = previous
    elif previous == entry["sha256"] and "previous" in old:
        entry["previous"] = old["previous"]
    manifest[path.name] = entry
    text = json.dumps(manifest, indent=1, sort_keys=True) + "\n"
    atomic_write(path.parent / MANIFEST, lambda p: p.write_text(text))
    return atomic_write(path, lambda p: p.write_bytes(data))


def verify_file(path: str | Path, data: bytes | None = None) -> bytes:
    """The bytes of ``path`` after checking them against the folder's manifest (files the
    manifest does not list are returned unchecked). ValueError naming the file and what to do."""
    path = Path(path)
    if data is None:
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise ValueError(
                f"{path} does not exist: run the experiment that writes it first"
            ) from None
    entry = _read_manifest(path.parent).get(path.name)
    if entry is None:
        return data
    digest = _digest(data)
    if digest not in (entry.get("sha256"), entry.get("previous")):
        expected = entry.get("bytes", 0)
        what = (
            f"{len(data):,} bytes, expected {expected:,}: truncated"
            if len(data) < expected
            else "its sha256 differs from manifest.json: altered"
        )
        raise ValueError(
            f"{path} is corrupt ({what}); delete {path} and rerun the command to recompute it "
            "(or rerun it with --force)"
        )
    return data


def missing_files(folder: str | Path) -> list[Path]:
    """The files ``folder/manifest.json`` lists that are not there (a folder without a manifest:
    none); ValueError if the manifest is corrupt."""
    folder = Path(folder)
    return [folder / name for name in _read_manifest(folder) if not (folder / name).is_file()]


def verify_folder(folder: str | Path) -> None:
    """Check every file ``folder/manifest.json`` lists against it (what a finished run is reused
    from: its config and every table, not only the one read first). ValueError naming the file
    and what to do, and when the manifest itself is missing or corrupt."""
    folder = Path(folder)
    if not (folder / MANIFEST).is_file():
        raise ValueError(
            f"{folder / MANIFEST} is missing, so the finished results in {folder} cannot be "
            "checked (written by an older version, or damaged); rerun with --force to recompute"
        )
    for path in [folder / name for name in _read_manifest(folder)]:
        verify_file(path)


def read_checked(path: str | Path) -> bytes:
    """``verify_file(path)``: the checked bytes of a file written by ``write_checked``."""
    return verify_file(path)


def write_config(folder: str | Path, config: Any) -> Path:
    """Write ``folder/config.json`` atomically (checksummed in ``manifest.json``)."""
    text = json.dumps(config_dict(config), indent=2, sort_keys=True) + "\n"
    return write_checked(Path(folder) / "config.json", text.encode())


def read_config(folder: str | Path) -> dict[str, Any]:
    """Read ``folder/config.json``; ValueError naming the file if it is missing or corrupt."""
    path = Path(folder) / "config.json"
    try:
        return json.loads(verify_file(path))
    except ValueError as e:
        if not path.exists():
            raise ValueError(
                f"{path} is missing: the run folder is incomplete; rerun the experiment"
            ) from None
        if isinstance(e, json.JSONDecodeError | UnicodeDecodeError):
            raise ValueError(
                f"{path} is corrupt ({e}); delete it and rerun (or rerun with --force)"
            ) from None
        raise


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
    bit for bit).

    The text depends on the values only, not on how the frame was built: object columns that
    hold numbers are made numeric first (rows computed now mix ints and floats where rows read
    back from a CSV are float64), and both writers print a float as its ``repr``. So a table
    rebuilt from rows read back after an interruption is byte-identical to one built in one go.
    """
    frame = frame.infer_objects()
    text = _fast_csv(frame)
    if text is None:
        text = frame.to_csv(index=False, float_format=_float_repr, lineterminator="\n")
    return write_checked(path, text.encode())


def _float_repr(value: float) -> str:
    return repr(float(value))


def read_table(path: str | Path, *, columns: tuple[str, ...] = ()) -> pd.DataFrame:
    """Read a tidy CSV table, checked against the folder's ``manifest.json``; ValueError naming
    the file (missing, truncated, altered, unparsable) or the missing columns."""
    path = Path(path)
    data = verify_file(path)
    try:
        frame = pd.read_csv(io.BytesIO(data))
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


# ------------------------------------------------------------------------------ locking

_TEMPORARY = re.compile(r"^\..+\.tmp(-\d+)?$")
_HELD: dict[Path, int] = {}  # folders this process has locked, with their nesting depth


class RunFolderBusyError(ValueError):
    """Another live process holds the run folder's lock."""


def is_temporary(name: str) -> bool:
    """Whether ``name`` is a temporary of an interrupted atomic write: ``.<name>.<random>.tmp``
    (``atomic_write``) or ``.<name>.tmp-<pid>`` (``llm.checkpoint``)."""
    return bool(_TEMPORARY.match(name))


def remove_temporaries(folder: str | Path) -> list[Path]:
    """Delete the temporaries of interrupted writes anywhere under ``folder``; call it only while
    holding ``folder``'s lock (no one else is writing there). Returns what was removed."""
    removed = []
    for path in sorted(Path(folder).rglob(".*"), reverse=True):  # deepest first
        if not is_temporary(path.name):
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        removed.append(path)
    return removed


def _holder(fd: int) -> str:
    try:
        text = os.pread(fd, 64, 0).decode(errors="replace").strip()
    except OSError:
        return "unknown"
    return text if text.isdigit() else "unknown"


@contextlib.contextmanager
def run_lock(folder: str | Path) -> Iterator[Path]:
    """Hold ``folder``'s exclusive lock (``folder/.lock``, created with the folder if missing).

    Refuses at once, with ``RunFolderBusyError`` naming the folder and the holder's pid, when
    another process holds it; re-entrant within one process. On entry, temporaries left by a
    killed writer are removed (``remove_temporaries``). The lock file is removed on exit (and the
    folder too if this call created it and it is still empty); the kernel releases the lock of a
    killed process, and a leftover lock file is simply reused.

    Yields:
        The folder.
    """
    folder = Path(folder)
    created = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    key = folder.resolve()
    if key in _HELD:
        _HELD[key] += 1
        try:
            yield folder
        finally:
            _HELD[key] -= 1
        return
    path = folder / LOCK_NAME
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666 & ~_UMASK)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                os.close(fd)
                raise
            pid = _holder(fd)
            os.close(fd)
            raise RunFolderBusyError(
                f"{folder} is in use by another process (pid {pid}); wait for it to finish "
                "(or stop it), then run the command again"
            ) from None
        try:  # the previous holder may have unlinked the file between our open and flock
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    _HELD[key] = 1
    try:
        remove_temporaries(folder)
        yield folder
    finally:
        del _HELD[key]
        path.unlink(missing_ok=True)  # still locked: no one can have taken this inode meanwhile
        os.close(fd)
        if created:  # a run that failed before writing anything leaves no empty folder
            with contextlib.suppress(OSError):
                folder.rmdir()


def config_matches(config: Mapping[str, Any], settings: Mapping[str, Any]) -> bool:
    """Whether a run's config.json values include every value in ``settings`` (tuples compare
    as the lists JSON gives back)."""
    return all(
        config.get(k) == (list(v) if isinstance(v, tuple) else v) for k, v in settings.items()
    )
