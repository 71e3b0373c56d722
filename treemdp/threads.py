"""Intra-op thread counts for small tensor programs.

Below about a million entries per operation, starting intra-op threads costs more than they
save (and on a busy machine two threads waiting on each other can make a tiny op a hundred
times slower), so small work runs on one thread; the previous count is restored afterwards.
Training decides per phase: the loss on the pairs' paths is tiny whatever the tree's size, the
exact metrics of a logged step touch every node.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

__all__ = ["SMALL_WORK", "thread_count", "threads", "threads_for"]

SMALL_WORK = 2**20
"""Below this many tensor entries per step, intra-op threads cost more than they save."""


def thread_count(work: int) -> int:
    """The intra-op threads for ``work`` entries: 1 below ``SMALL_WORK``, else the current."""
    return 1 if work < SMALL_WORK else torch.get_num_threads()


@contextmanager
def threads(n: int) -> Iterator[None]:
    """Run the block with ``n`` intra-op threads, restoring the previous count after."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@contextmanager
def threads_for(work: int) -> Iterator[None]:
    """One intra-op thread while ``work`` < ``SMALL_WORK``, restored after."""
    with threads(thread_count(work)):
        yield
