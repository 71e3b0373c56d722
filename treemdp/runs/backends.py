"""Fan-out backends: the independent cells of a grid, run one after another or as Ray tasks.

A *cell* is one call ``fn(cell)`` of a grid (a sweep's chunk, a confirm grid's SFT group, a
claims search variant, one seed of an LLM run). ``map_cells`` runs them

- ``serial``: in this process, in order (what every experiment did before);
- ``ray``: as Ray tasks (``ray.remote``), on a local Ray started here or on the cluster at
  ``--address`` (``auto``, ``host:6379``, ``ray://host:10001``); each task reserves
  ``--cell-cpus`` CPUs and ``--cell-gpus`` of a GPU.

and yields ``(index, result)`` as cells finish. The driver stays the one writer of a grid's
folder: a cell either returns its result for the driver to write (a sweep chunk's part), or
writes its own content-addressed run folder under that folder's lock (``run_lock``). A worker
that dies mid-cell (killed, out of memory, its node lost) makes Ray run the cell again (up to
``--cell-retries`` times); the driver receives each cell's result once, so nothing is lost or
written twice, and a cell that raises (a diverged run, a bad setting) is re-raised here as its
own exception, the other cells cancelled. Results are merged by the caller in plan order, so
tables are byte-identical to the serial backend's.

Ray is imported only inside ``map_cells`` with ``backend="ray"``: importing the engine, or this
module, never imports it (it is the optional extra ``scale``: ``pip install -e '.[scale]'``).
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

from treemdp.runs.cli import arg, parse_seeds, run

__all__ = [
    "BACKENDS",
    "BACKEND_FLAGS",
    "Backend",
    "check_backend",
    "map_cells",
    "run_seeds",
]

BACKENDS = ("serial", "ray")
"""The fan-out backends ``--backend`` chooses from."""

BACKEND_FLAGS = ("backend", "address", "cell_cpus", "cell_gpus", "cell_retries")
"""The flags of ``Backend``: how a grid runs, never part of a run folder's hash."""

_SHIPPED_WITH_THE_INSTALL = ("treemdp", "llm", "figures")  # importable on every worker

C = TypeVar("C")
R = TypeVar("R")


@dataclass(frozen=True)
class Backend:
    """How the cells of a grid run (in a config: ``nested(Backend(), flags=BACKEND_FLAGS)``).

    Attributes:
        backend: ``serial`` (this process, in order) or ``ray`` (Ray tasks).
        address: the Ray cluster to join (``auto``, ``host:6379``, ``ray://host:10001``); empty:
            join the Ray this process already started, else start a local one.
        cell_cpus: CPUs each cell reserves on the cluster (ray).
        cell_gpus: the fraction of a GPU each cell reserves (ray; LLM cells: 0.25 packs four
            small models on one GPU).
        cell_retries: how often Ray runs a cell again whose worker died (ray).
    """

    backend: str = arg("serial", "how grid cells run: serial or ray (Ray tasks)", choices=BACKENDS)
    address: str = arg("", "Ray cluster address (auto, host:6379, ray://host:10001); empty: local")
    cell_cpus: float = arg(1.0, "CPUs each cell reserves (--backend ray)", exclusive_minimum=0)
    cell_gpus: float = arg(0.0, "GPU fraction each cell reserves (--backend ray)", minimum=0)
    cell_retries: int = arg(3, "retries of a cell whose worker died (--backend ray)", minimum=0)


def check_backend(backend: Backend) -> Backend:
    """ValueError naming the flag out of its range; the backend otherwise."""
    if backend.backend not in BACKENDS:
        raise ValueError(f"--backend must be one of {', '.join(BACKENDS)}; got {backend.backend!r}")
    if not backend.cell_cpus > 0:
        raise ValueError(f"--cell-cpus must be > 0; got {backend.cell_cpus}")
    if not backend.cell_gpus >= 0:
        raise ValueError(f"--cell-gpus must be >= 0; got {backend.cell_gpus}")
    if backend.cell_gpus > 1 and backend.cell_gpus != int(backend.cell_gpus):
        raise ValueError(f"--cell-gpus above 1 must be a whole number; got {backend.cell_gpus}")
    if backend.cell_retries < 0:
        raise ValueError(f"--cell-retries must be >= 0; got {backend.cell_retries}")
    if backend.address and backend.backend != "ray":
        raise ValueError("--address needs --backend ray")
    return backend


def map_cells(
    fn: Callable[[C], R], cells: Sequence[C], backend: Backend | None = None
) -> Iterator[tuple[int, R]]:
    """``(i, fn(cells[i]))`` for every cell, as each finishes (in order with ``serial``).

    Args:
        fn: the cell's work; with ``ray`` it and the cells are pickled to the workers (a
            function of a script, or of a test, is shipped by value with its module).
        cells: the cells' arguments.
        backend: how they run (default: serial).

    Yields:
        The cell's index and its result, once per cell.

    Raises:
        ValueError: ``ray`` without Ray installed (the ``scale`` extra), or a bad backend.
        Whatever a cell raised (its own exception, not Ray's wrapper); the others are cancelled.
    """
    backend = check_backend(backend or Backend())
    if backend.backend == "serial":
        for i, cell in enumerate(cells):
            yield i, fn(cell)
        return
    if not cells:
        return
    ray = _ray(backend)
    _ship(ray, fn)
    remote = ray.remote(_call).options(
        num_cpus=backend.cell_cpus,
        num_gpus=backend.cell_gpus,
        max_retries=backend.cell_retries,  # a dead worker: run the cell again
        retry_exceptions=False,  # an exception is the cell's answer, not a failure to retry
    )
    work = ray.put(fn)  # pickled once, shared by every cell
    pending = {remote.remote(work, cell): i for i, cell in enumerate(cells)}
    try:
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            for ref in done:
                i = pending.pop(ref)
                try:
                    result = ray.get(ref)
                except ray.exceptions.RayTaskError as e:  # the cell's own error, unwrapped
                    cause = getattr(e, "cause", None)
                    if isinstance(cause, BaseException):
                        raise cause from None
                    raise
                yield i, result
    finally:
        for ref in pending:  # an error, Ctrl-C or an abandoned generator: stop the rest
            ray.cancel(ref)  # not force: killing workers makes the next cells start new ones


def _call(fn: Callable[[C], R], cell: C) -> R:
    """A Ray task's body: one cell (a plain function, so a ``functools.partial`` can be sent)."""
    return fn(cell)


def _ray(backend: Backend) -> Any:
    """The ``ray`` module, joined to a cluster (the one already joined, ``--address``'s, or a
    new local one without the dashboard)."""
    try:
        import ray
    except ImportError:
        raise ValueError(
            "--backend ray needs Ray: pip install -c constraints.txt -e '.[scale]' "
            "(scripts/setup.sh installs it)"
        ) from None
    if not ray.is_initialized():
        ray.init(
            address=backend.address or None,
            include_dashboard=False,
            log_to_driver=True,
            configure_logging=False,
        )
    return ray


def _ship(ray: Any, fn: Callable) -> None:
    """Pickle ``fn``'s module by value when workers cannot import it by name (a script under
    experiments/, a test module), with the sibling modules it imported from its folder."""
    target = fn
    while isinstance(target, functools.partial):
        target = target.func
    name = getattr(target, "__module__", None) or "__main__"
    if "." in name or name in _SHIPPED_WITH_THE_INSTALL or name == "__main__":
        return  # packages import by name; __main__ is pickled by value anyway
    module = sys.modules.get(name)
    file = getattr(module, "__file__", None)
    if module is None or file is None:
        return
    folder = Path(file).resolve().parent
    for other in list(sys.modules.values()):
        path = getattr(other, "__file__", None)
        if path and Path(path).resolve().parent == folder and not _installed(path):
            ray.cloudpickle.register_pickle_by_value(other)


def _installed(path: str) -> bool:
    return f"{os.sep}site-packages{os.sep}" in path


SEED_SWEEP_HELP = """
seed sweeps (each seed's config is one cell, its own run folder; treemdp.runs.backends):
  --seeds S [S ...]     seeds or ranges (0-9): run the command once per seed
  --backend {serial,ray}  --address ADDR  --cell-cpus N  --cell-gpus F  --cell-retries N
"""


def run_seeds(
    cls: type, main: Callable[[Any], Any], argv: Sequence[str] | None = None, description: str = ""
) -> Any:
    """``treemdp.runs.cli.run(cls, main)``, plus a seed sweep: with ``--seeds``, ``main`` runs
    once per seed (the config with ``seed`` replaced), each a cell of ``--backend``; every run
    writes its own content-addressed folder under its lock, so a rerun reuses the finished ones.

    Returns:
        ``main``'s result, or the list of its results in seed order.
    """
    pre = argparse.ArgumentParser(add_help=False, allow_abbrev=False)  # --seed is not --seeds
    pre.add_argument("--seeds", nargs="+")
    for name in BACKEND_FLAGS:
        pre.add_argument("--" + name.replace("_", "-"), dest=name)
    known, rest = pre.parse_known_args(argv)
    given = {k: v for k, v in vars(known).items() if v is not None and k != "seeds"}
    description = description + SEED_SWEEP_HELP
    if known.seeds is None and not given:
        return run(cls, main, rest, description)
    kinds = {"cell_cpus": float, "cell_gpus": float, "cell_retries": int}

    def sweep(config: Any) -> list[Any]:
        try:
            values = {k: kinds.get(k, str)(v) for k, v in given.items()}
        except ValueError as e:
            raise ValueError(f"backend flags: {e}") from None
        backend = check_backend(Backend(**values))
        seeds = parse_seeds(known.seeds, flag="--seeds") if known.seeds else [config.seed]
        results: list[Any] = [None] * len(seeds)
        for i, result in map_cells(main, [replace(config, seed=s) for s in seeds], backend):
            results[i] = result
        print(f"{len(seeds)} seeds on {backend.backend}: " + ", ".join(map(str, results)))
        return results

    return run(cls, sweep, rest, description)
