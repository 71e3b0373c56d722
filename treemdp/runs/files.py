"""Files that survive a kill: atomic writes, temporaries, and sha256 checksums.

Every write goes to a temporary file in the same folder and is then renamed over the target
(``os.replace`` is atomic on POSIX): a killed process leaves either the old file or the new one,
never half of one. Temporaries are named ``.<name>.<random>.tmp``; ``remove_temporaries`` clears
the ones a killed writer left.

Checksums: every file written with ``write_checked`` is recorded in its folder's
``manifest.json`` (sha256 and size) *before* it is renamed into place, with the checksum of the
file it replaces; reading verifies the file against either, so a truncated or altered file is
named with what to do, while a kill between the two renames still reads as the complete old file.
A folder written by another tool (a training checkpoint) is listed after the fact with
``write_listing`` and checked with ``verify_listing``.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from treemdp.runs.killpoint import kill_point

__all__ = [
    "MANIFEST",
    "atomic_write",
    "atomic_write_text",
    "file_sha256",
    "is_temporary",
    "missing_files",
    "read_checked",
    "remove_temporaries",
    "temporary_path",
    "verify_file",
    "verify_folder",
    "verify_listing",
    "write_checked",
    "write_listing",
]

MANIFEST = "manifest.json"
"""Checksums of the files written with ``write_checked`` in a folder."""


def _read_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


UMASK = _read_umask()  # read once at import: os.umask can only be read by setting it


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp)`` on a temporary file beside ``path``, then rename it over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    os.chmod(tmp, 0o666 & ~UMASK)  # mkstemp makes 0600 files; give the usual permissions
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    kill_point(path)  # a test hook ($TREEMDP_KILL_AFTER); nothing when unset
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically, flushed before the rename (a pointer
    file such as a checkpoint's ``latest.json`` must never name a folder not yet on disk)."""

    def write(tmp: Path) -> None:
        with tmp.open("w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())

    return atomic_write(path, write)


def temporary_path(path: Path) -> Path:
    """A fresh temporary name beside ``path`` that ``is_temporary`` recognises (for a folder
    written whole and then moved into place)."""
    return path.with_name(f".{path.name}.{os.getpid()}-{os.urandom(4).hex()}.tmp")


_TEMPORARY = re.compile(r"^\..+\.tmp(-\d+|-sharded)?$")  # -<pid>, -sharded: older checkpoints


def is_temporary(name: str) -> bool:
    """Whether ``name`` is a temporary of an interrupted atomic write: ``.<name>.<random>.tmp``
    (``atomic_write``, ``temporary_path``)."""
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


# ------------------------------------------------------------------ checksums


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _file_digest(path: Path) -> str | None:
    try:
        return file_sha256(path)
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


def file_sha256(path: Path) -> str:
    """The sha256 of a file's bytes, read in chunks."""
    with Path(path).open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def write_listing(folder: Path, name: str) -> Path:
    """Record sha256 and size of every file under ``folder`` in ``folder/name`` (a manifest of a
    folder written by another tool, e.g. ``save_pretrained``)."""
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.name != name)
    table = {
        str(p.relative_to(folder)): {"sha256": file_sha256(p), "bytes": p.stat().st_size}
        for p in files
    }
    text = json.dumps(table, indent=1, sort_keys=True) + "\n"
    return atomic_write(folder / name, lambda p: p.write_text(text))


def verify_listing(folder: Path, name: str, what_to_do: str, *, kind: str = "file") -> None:
    """Check every file ``folder/name`` (``write_listing``) lists: size, then sha256.
    ValueError naming the file (as ``kind``, e.g. "checkpoint file") and ``what_to_do``."""
    listing = folder / name
    try:
        table = json.loads(listing.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{listing} is corrupt ({e}); {what_to_do}") from None
    for entry_name, entry in table.items():
        path = folder / entry_name
        if not path.is_file():
            raise ValueError(f"{kind} {path} is missing; {what_to_do}")
        size = path.stat().st_size
        if size != entry["bytes"]:
            raise ValueError(
                f"{kind} {path} is truncated ({size:,} bytes, expected {entry['bytes']:,}); "
                f"{what_to_do}"
            )
        if file_sha256(path) != entry["sha256"]:
            raise ValueError(f"{kind} {path} is altered (sha256 differs from {name}); {what_to_do}")
