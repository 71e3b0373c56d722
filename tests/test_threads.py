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


@pytest.fixture
def two_threads():
    """Two intra-op threads during the test: a count that one thread differs from, whatever the
    test worker's own count (tests/conftest.py gives each xdist worker its share of the CPUs)."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def test_small_work_runs_on_one_thread_and_the_count_is_restored(two_threads):
    assert _seen_threads(3, scale=2) == (1, 6)
    assert _seen_threads(SMALL_WORK) == (2, SMALL_WORK)
    assert torch.get_num_threads() == 2


def test_the_count_is_restored_after_an_exception(two_threads):
    @with_threads(lambda: 1)
    def fails() -> None:
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        fails()
    assert torch.get_num_threads() == 2
    assert _seen_threads.__name__ == "_seen_threads"  # functools.wraps keeps the identity
