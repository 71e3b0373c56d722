"""A test hook: SIGKILL this process right after the N-th file whose path matches a pattern is
written (atomically, so the file is whole on disk when the process dies).

``$TREEMDP_KILL_AFTER`` = ``<glob>:<N>``, e.g. ``*/parts/llm-*.pkl:1`` or
``*/llm/bt-*/latest.json:1``; the glob is matched (``fnmatch``, so ``*`` also crosses ``/``)
against the written file's absolute path. Unset (always, but in tests): nothing happens. Tests
use it to kill a command at a point they choose rather than after a delay, which bets on how
fast the machine is (a fast one finishes first, a loaded one is killed too early).
``$TREEMDP_KILL_SIGNAL`` (e.g. ``INT``, a Ctrl-C) sends another signal instead of SIGKILL; a
process that inherited SIGINT ignored (started in the background by a non-interactive shell)
ignores it here too, so a test restores the default disposition in the child first.
"""

from __future__ import annotations

import fnmatch
import os
import signal
from pathlib import Path

__all__ = ["KILL_ENV", "SIGNAL_ENV", "kill_point"]

KILL_ENV = "TREEMDP_KILL_AFTER"
"""The environment variable that arms the hook: ``<glob>:<N>``."""
SIGNAL_ENV = "TREEMDP_KILL_SIGNAL"
"""The signal's name without ``SIG`` (default ``KILL``)."""

_seen: dict[str, int] = {}  # pattern → files written that matched it, in this process


def kill_point(path: str | Path) -> None:
    """Count ``path`` (a file just written) against ``$TREEMDP_KILL_AFTER`` and SIGKILL this
    process at the N-th match. ValueError for a value that is not ``<glob>:<N>`` with N >= 1."""
    spec = os.environ.get(KILL_ENV)
    if not spec:
        return
    pattern, _, count = spec.rpartition(":")
    if not pattern or not count.isdigit() or int(count) < 1:
        raise ValueError(f"${KILL_ENV} must be <glob>:<N> with N >= 1; got {spec!r}")
    if not fnmatch.fnmatchcase(Path(path).absolute().as_posix(), pattern):
        return
    _seen[pattern] = _seen.get(pattern, 0) + 1
    if _seen[pattern] == int(count):
        name = os.environ.get(SIGNAL_ENV) or "KILL"
        os.kill(os.getpid(), getattr(signal, f"SIG{name}"))
