"""One writer per run folder: an exclusive ``flock`` on ``folder/.lock``.

A second process on the same folder gets ``RunFolderBusyError`` (a ``ValueError``: the command line
exits 2 with one line). The kernel drops the lock when its process dies, so a SIGKILLed run never
leaves a stale lock; on taking the lock, temporaries left by a killed writer are removed.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from treemdp.runs.files import UMASK, remove_temporaries

__all__ = ["LOCK_NAME", "RunFolderBusyError", "run_lock"]

LOCK_NAME = ".lock"
"""The lock file inside a run folder (``run_lock``)."""
_HELD: dict[Path, int] = {}  # folders this process has locked, with their nesting depth


class RunFolderBusyError(ValueError):
    """Another live process holds the run folder's lock."""


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
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666 & ~UMASK)
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
