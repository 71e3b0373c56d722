"""Intra-op thread count for small tensor programs.

Below about a million (run × node) entries per step, starting intra-op threads costs more than
they save (and on a busy machine two threads waiting on each other can be ten times slower than
one), so small problems run on one thread; the previous count is restored afterwards.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

__all__ = ["SMALL_WORK", "threads_for"]

SMALL_WORK = 2**20
"""Below this many (run × node) entries per step, intra-op threads cost more than they save."""


@contextmanager
def threads_for(work: int) -> Iterator[None]:
    """One intra-op thread while ``work`` < ``SMALL_WORK``, restored after."""
    before = torch.get_num_threads()
    if work < SMALL_WORK:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)
