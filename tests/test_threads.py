"""Intra-op thread counts: ``with_threads`` runs a function on the count its work calls for."""

from __future__ import annotations

import pytest
import torch

from treemdp.threads import SMALL_WORK, with_threads


def _work(n: int, *, scale: int = 1) -> int:
    return n * scale


@with_threads(_work)
def _seen_threads(n: int, *, scale: int = 1) -> tuple[int, int]:
    """The thread count inside the call, and the arguments it was given."""
    return torch.get_num_threads(), n * scale


def test_small_work_runs_on_one_thread_and_the_count_is_restored():
    before = torch.get_num_threads()
    assert _seen_threads(3, scale=2) == (1, 6)
    assert _seen_threads(SMALL_WORK) == (before, SMALL_WORK)
    assert torch.get_num_threads() == before


def test_the_count_is_restored_after_an_exception():
    before = torch.get_num_threads()

    @with_threads(lambda: 1)
    def fails() -> None:
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        fails()
    assert torch.get_num_threads() == before
    assert _seen_threads.__name__ == "_seen_threads"  # functools.wraps keeps the identity
