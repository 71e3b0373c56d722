"""Regenerate the paper's figures: run the experiments whose results are missing, then draw.

    python figures/make_all.py                 # every family available
    python figures/make_all.py --only tree     # the Tree-MDP figures
    python figures/make_all.py --fresh         # recompute the experiments too

The data comes from one `python experiments/paper_runs.py --results DIR --only FAMILY...` run as
a subprocess (figures never train in-process): it runs the paper's experiments, reusing their
finished run folders, so a second call only redraws, and indexes them in DIR/paper_runs/index.csv,
which the figures read (figures/run_index.py). The figure scripts then draw in --jobs processes
(default: 2 where the machine has 2 CPUs; the files do not depend on it). Families:

- tree: `Tree-MDP` (diagram) and the Tree-MDP results from experiments/ood_mass.py
  (`{dpo,ipo,slic}-beta-0.1-OOD-probs-summary-1pref`, `-indist-1pref`, the per-β appendix figures,
  `dpo-beta-0.1-{1,2,3}`).
- toy: the scaling-law, evolution, length and accuracy figures (paper Figs. 1-5) from
  experiments/toy_scaling.py (DPO, IPO, SLiC, R-DPO; "size" = policy capacity), under out/toy/.
- llm: the same figures from LLM evaluation run folders given with --llm-runs DIR..., or by
  default from tree-language runs of three small model sizes made here
  (experiments/llm_confirm.py), under out/llm/.
"""

from __future__ import annotations

import argparse
import importlib
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import Executor, Future, ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from figures import (
    accuracy,
    checkpoints,
    evolution,
    length,
    ood_probs,
    run_index,
    scaling_fits,
    tree_mdp,
)
from treemdp.runs import run_lock
from treemdp.runs.cli import OneLineParser, one_line_errors

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Request:
    """What the command line asks for.

    Attributes:
        results: the results root the experiments' run folders (and their index) live in.
        out: the output folder.
        fresh: recompute the experiments, not reuse their finished runs.
        quick: the tiny experiment configs (a test run).
        llm_runs: LLM evaluation run folders to draw instead of the default LLM runs.
        jobs: figure-drawing processes (1: draw in this process).
    """

    results: Path
    out: Path
    fresh: bool
    quick: bool
    llm_runs: tuple[str, ...]
    jobs: int = 1


def make_runs(request: Request, families: list[str]) -> None:
    """experiments/paper_runs.py runs (or reuses) the run folders of ``families`` in one
    subprocess (figures never train in-process; one process imports the experiments once) and
    indexes them; its output (which LLM runs train) passes through, its stderr is shown if it
    fails (SystemExit)."""
    if not families:
        return
    command = [sys.executable, str(ROOT / run_index.MAKER), "--results", str(request.results)]
    command += ["--only", *families, "--quiet"]
    if request.fresh:
        command.append("--fresh")
    if request.quick:
        command.append("--quick")
    done = subprocess.run(command, stderr=subprocess.PIPE, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{run_index.MAKER} failed:\n{done.stderr.strip()}")


def paper_runs(request: Request, family: str) -> list[Path]:
    """The indexed run folders of ``family`` (``make_runs`` has run them)."""
    return run_index.run_folders(request.results, family, quick=request.quick)


Task = tuple[str, Callable[..., list[Path]], tuple[Any, ...]]
"""One drawing job of a family: (label, a module-level function, its arguments), picklable so
that a worker process can run it."""


def draw_module(name: str, data: checkpoints.Data, out: Path) -> list[Path]:
    """``figures.<name>.main(data, out)``: a checkpoint-table family script."""
    return importlib.import_module(f"figures.{name}").main(data, out)


def tree_family(request: Request) -> list[Task]:
    """The Tree-MDP diagram and result figures."""
    (run,) = paper_runs(request, "tree")
    return [("figures.tree_mdp", tree_mdp.main, (request.out,)),
            ("figures.ood_probs", ood_probs.main, (run, request.out))]  # fmt: skip


CHECKPOINT_FAMILIES = (scaling_fits, evolution, length, accuracy)
"""The figure scripts that draw from a checkpoint table (figures/checkpoints.py)."""


def draw_checkpoints(data: checkpoints.Data, out: Path) -> list[Task]:
    """Every checkpoint-table figure script of ``data``, one task each (and per variant:
    settings that differ in more than the seed go to their own folder, ``checkpoints.by_variant``).
    A table without a win rate is said so on stderr (its captions and panels say it too)."""
    if checkpoints.no_win_rate(data.table):
        print(f"[{data.kind}] {checkpoints.no_win_rate(data.table)}", file=sys.stderr, flush=True)
    return [
        (script.__name__, draw_module, (script.__name__.split(".")[-1], part, out))
        for part in checkpoints.by_variant(data)
        for script in CHECKPOINT_FAMILIES
    ]


def toy_family(request: Request) -> list[Task]:
    """Scaling / evolution / length / accuracy figures from experiments/toy_scaling.py."""
    (run,) = paper_runs(request, "toy")
    return draw_checkpoints(checkpoints.load_toy(run), request.out)


def llm_family(request: Request) -> list[Task]:
    """The same figures from LLM evaluation run folders: --llm-runs, or by default tree-language
    runs of three small model sizes made on this machine (experiments/llm_confirm.py)."""
    runs = list(request.llm_runs) or paper_runs(request, "llm")
    return draw_checkpoints(checkpoints.load_llm(runs), request.out)


FAMILIES: dict[str, Callable[[Request], list[Task]]] = {
    "tree": tree_family,
    "toy": toy_family,
    "llm": llm_family,
}
"""Family name → its drawing tasks (after ``make_runs`` has made its data)."""


def build_parser() -> OneLineParser:
    """The command line (errors: one line, exit status 2)."""
    parser = OneLineParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument(
        "--only",
        nargs="+",
        choices=sorted(FAMILIES),
        default=sorted(FAMILIES),
        help="figure families to make [default: all]",
    )
    parser.add_argument("--fresh", action="store_true", help="recompute experiments, not reuse")
    parser.add_argument("--quick", action="store_true", help="tiny experiment configs (a test run)")
    parser.add_argument("--results", default="results", help="results root [default: results]")
    parser.add_argument("--out", default="figures/out", help="output folder [default: figures/out]")
    parser.add_argument(
        "--llm-runs", nargs="+", default=[], metavar="DIR", help="LLM evaluation run folders"
    )
    parser.add_argument(
        "--jobs",
        type=int,
        default=min(2, os.cpu_count() or 1),
        metavar="N",
        help="processes drawing figures in parallel, >= 1 (1: in this process) "
        "[default: min(2, CPUs)]",
    )
    return parser


def main(argv: list[str] | None = None) -> list[Path]:
    """Make the families of ``argv`` under one lock on --out; return the files written. As
    every CLI (``treemdp.runs.cli.one_line_errors``): a ValueError (a folder another make_all
    holds, ...) exits 2 and Ctrl-C 130, each with one line on stderr."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.jobs < 1:
        parser.error(f"--jobs must be >= 1; got {args.jobs}")
    if Path(args.out).exists() and not Path(args.out).is_dir():
        parser.error(f"--out {args.out} is a file, not a folder: give a folder to write into")
    request = Request(
        Path(args.results),
        Path(args.out),
        args.fresh,
        args.quick,
        tuple(args.llm_runs),
        args.jobs,
    )
    with one_line_errors(parser.prog), run_lock(request.out):
        return _make(args.only, request)  # two make_all on one output folder: the second refuses


class _InProcess(Executor):
    """An executor that runs each task at once in this process (``--jobs 1``)."""

    def submit(self, fn, /, *args, **kwargs) -> Future:
        future: Future = Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except BaseException as e:
            future.set_exception(e)
        return future


def _stop_at_ctrl_c() -> None:
    # Ctrl-C sends SIGINT to the whole process group: a drawing worker just stops (as SIGKILL
    # would: run_lock clears its temporaries), without a KeyboardInterrupt traceback of its own;
    # make_all says the one line (treemdp.runs.cli.one_line_errors)
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _pool(jobs: int) -> Executor:
    """``jobs`` drawing processes (1: draw in this process)."""
    if jobs == 1:
        return _InProcess()
    # fork: the workers share the loaded tables, nothing is re-imported
    context = multiprocessing.get_context("fork")
    return ProcessPoolExecutor(jobs, mp_context=context, initializer=_stop_at_ctrl_c)


def _timed(fn: Callable[..., list[Path]], *args: Any) -> tuple[list[Path], float]:
    start = time.perf_counter()
    return fn(*args), time.perf_counter() - start


def _make(families: list[str], request: Request) -> list[Path]:
    """Make the data of every family in one paper_runs call, then draw the families' tasks
    (in ``request.jobs`` processes); a family that fails is named and the rest still drawn.
    Files are listed in the families' order whatever order the workers finish in."""
    start = time.perf_counter()
    print(f"[data] {' '.join(families)} ...", flush=True)
    needs_runs = [f for f in families if not (f == "llm" and request.llm_runs)]
    make_runs(request, needs_runs)
    print(f"[data] ready in {time.perf_counter() - start:.1f} s", flush=True)
    failed: list[str] = []
    plans: dict[str, list[Task]] = {}
    for name in families:
        try:
            plans[name] = FAMILIES[name](request)
        except ValueError as e:  # e.g. an LLM folder lacking eval.csv: say so, keep going
            print(f"[{name}] failed: {e}", file=sys.stderr, flush=True)
            failed.append(name)
    written: list[Path] = []
    pool: Executor
    pool = _pool(request.jobs)
    with pool:
        futures = {
            name: [(label, pool.submit(_timed, fn, *args)) for label, fn, args in tasks]
            for name, tasks in plans.items()
        }
        for name, jobs in futures.items():
            files: list[Path] = []
            seconds = 0.0
            try:
                for label, future in jobs:
                    done, took = future.result()
                    print(f"  {label}: {len(done)} files in {took:.1f} s", flush=True)
                    files += done
                    seconds += took
            except ValueError as e:
                print(f"[{name}] failed: {e}", file=sys.stderr, flush=True)
                failed.append(name)
                continue
            print(f"[{name}] {len(files)} files in {seconds:.1f} s of drawing", flush=True)
            written += files
    print(f"[all] {len(written)} files in {time.perf_counter() - start:.1f} s", flush=True)
    for path in written:
        print(path)
    if failed:
        raise SystemExit(f"families that failed: {', '.join(failed)} (see the messages above)")
    return written


if __name__ == "__main__":
    main()
