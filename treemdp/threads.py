"""Intra-op thread counts for small tensor programs.

Below about a million entries per operation, starting intra-op threads costs more than they
save (and on a busy machine two threads waiting on each other can make a tiny op a hundred
times slower), so small work runs on one thread; the previous count is restored afterwards.
Training decides per phase: the loss on the pairs' paths is tiny whatever the tree's size, the
exact metrics of a logged step touch every node.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import ParamSpec, TypeVar

import torch

__all__ = ["SMALL_WORK", "thread_count", "threads", "threads_for", "with_threads"]

SMALL_WORK = 2**20
"""Below this many tensor entries per step, intra-op threads cost more than they save."""

P = ParamSpec("P")
T = TypeVar("T")


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


def with_threads(work: Callable[P, int]) -> Callable[[Callable[P, T]], Callable[P, T]]:
    """Decorator: run the function inside ``threads_for(work(*args, **kwargs))``.

    ``work`` receives the call's own arguments and returns the tensor entries one step of the
    function touches, so the function keeps one signature instead of a public wrapper that
    enters the thread context and a private twin that does the work::

        def _fit_work(policy: Policy, responses: Tensor, **_: Any) -> int:
            return policy.n_runs * responses.shape[-1]

        @with_threads(_fit_work)
        def fit(policy: Policy, responses: Tensor, *, steps: int) -> Tensor: ...

    Args:
        work: maps the decorated function's arguments to its work in tensor entries.

    Returns:
        The decorator.
    """

    def decorate(fn: Callable[P, T]) -> Callable[P, T]:
        @functools.wraps(fn)
        def run(*args: P.args, **kwargs: P.kwargs) -> T:
            with threads_for(work(*args, **kwargs)):
                return fn(*args, **kwargs)

        return run

    return decorate
