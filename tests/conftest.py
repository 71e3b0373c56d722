"""Test-wide settings: offline hub, intra-op threads per test worker, how tests are handed to
pytest-xdist workers, hypothesis profiles.

Profiles (HYPOTHESIS_PROFILE): ``ci`` (default, 50 examples per property), ``dev`` (10, quick
local iteration), ``thorough`` (1000).
"""

import os

import pytest
from hypothesis import HealthCheck, settings

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _threads_per_worker() -> int | None:
    """Under pytest-xdist, each worker's share of the CPUs (at least 1); None when not a worker.

    Workers that each start as many intra-op threads as the machine has CPUs oversubscribe it:
    with ``-n 2`` on 2 cores, torch's and OpenMP's threads wait on each other and the suite
    spends more CPU time on the same work (test_train, test_toy_scaling, test_theory and
    test_policy, run alone: a third more with two threads than with one)."""
    workers = os.environ.get("PYTEST_XDIST_WORKER_COUNT")
    if not workers:
        return None
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, (cpus or 1) // int(workers))


# Set before torch is imported (it reads the variable once), and inherited by the scripts the
# tests run as subprocesses; an explicit OMP_NUM_THREADS is left alone.
if (_threads := _threads_per_worker()) is not None:
    os.environ.setdefault("OMP_NUM_THREADS", str(_threads))


@pytest.hookimpl(optionalhook=True)  # a hook of pytest-xdist: unused where it is not installed
def pytest_xdist_make_scheduler(config, log):
    """``-n N`` hands out tests as ``--dist worksteal`` does: a worker that runs out takes half
    of another's queue. xdist's default (load) hands out runs of consecutive tests for good,
    and the suite's slow end-to-end tests sit next to each other (tests/test_figures*.py,
    tests/test_interruption.py): one worker could be given most of them while the other
    finished early and waited. Any other ``--dist`` mode is left as asked."""
    if config.getvalue("dist") != "load":
        return None
    from xdist.scheduler import WorkStealingScheduling

    return WorkStealingScheduling(config, log)


_common = {"deadline": None, "suppress_health_check": [HealthCheck.too_slow]}
settings.register_profile("dev", max_examples=10, **_common)
settings.register_profile("ci", max_examples=50, **_common)
settings.register_profile("thorough", max_examples=1000, **_common)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture(autouse=True)
def _default_dtype_is_restored():
    """A test that leaves torch's default dtype changed errors, and the next test starts from
    the old one: a float64 default leaked by an in-process experiment made later tests in the
    same worker compute in float64 (an order-dependent failure under pytest-xdist)."""
    import torch

    before = torch.get_default_dtype()
    yield
    after = torch.get_default_dtype()
    torch.set_default_dtype(before)
    assert after == before, f"the test left torch's default dtype at {after} (it was {before})"
