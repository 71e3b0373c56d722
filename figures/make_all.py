"""Regenerate the paper's figures: run the experiments whose results are missing, then draw.

    python figures/make_all.py                 # every family available
    python figures/make_all.py --only tree     # the Tree-MDP figures
    python figures/make_all.py --fresh         # recompute the experiments too

The data comes from `python experiments/paper_runs.py --results DIR --only FAMILY` run as a
subprocess (figures never train in-process): it runs the paper's experiments, reusing their
finished run folders, so a second call only redraws, and indexes them in DIR/paper_runs/index.csv,
which the figures read (figures/run_index.py). Families:

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
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

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
from treemdp.runs import RunFolderBusyError, run_lock
from treemdp.runs.cli import OneLineParser

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
    """

    results: Path
    out: Path
    fresh: bool
    quick: bool
    llm_runs: tuple[str, ...]


def paper_runs(request: Request, family: str) -> list[Path]:
    """The run folders of ``family``: experiments/paper_runs.py runs (or reuses) them in a
    subprocess (figures never train in-process) and indexes them; its output (which LLM runs
    train) passes through, its stderr is shown if it fails."""
    command = [sys.executable, str(ROOT / run_index.MAKER), "--results", str(request.results)]
    command += ["--only", family, "--quiet"]
    if request.fresh:
        command.append("--fresh")
    if request.quick:
        command.append("--quick")
    done = subprocess.run(command, stderr=subprocess.PIPE, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{run_index.MAKER} failed:\n{done.stderr.strip()}")
    return run_index.run_folders(request.results, family, quick=request.quick)


def tree_family(request: Request) -> list[Path]:
    """The Tree-MDP diagram and result figures."""
    written = tree_mdp.main(request.out)
    (run,) = paper_runs(request, "tree")
    return written + ood_probs.main(run, request.out)


CHECKPOINT_FAMILIES = (scaling_fits, evolution, length, accuracy)
"""The figure scripts that draw from a checkpoint table (figures/checkpoints.py)."""


def draw_checkpoints(data: checkpoints.Data, out: Path) -> list[Path]:
    """Every checkpoint-table figure of ``data``, with a progress line per script."""
    written: list[Path] = []
    for script in CHECKPOINT_FAMILIES:
        start = time.perf_counter()
        files = script.main(data, out)
        name = script.__name__
        print(f"  {name}: {len(files)} files in {time.perf_counter() - start:.1f} s", flush=True)
        written += files
    return written


def toy_family(request: Request) -> list[Path]:
    """Scaling / evolution / length / accuracy figures from experiments/toy_scaling.py."""
    (run,) = paper_runs(request, "toy")
    return draw_checkpoints(checkpoints.load_toy(run), request.out)


def llm_family(request: Request) -> list[Path]:
    """The same figures from LLM evaluation run folders: --llm-runs, or by default tree-language
    runs of three small model sizes made on this machine (experiments/llm_confirm.py)."""
    runs = list(request.llm_runs) or paper_runs(request, "llm")
    return draw_checkpoints(checkpoints.load_llm(runs), request.out)


FAMILIES: dict[str, Callable[[Request], list[Path]]] = {
    "tree": tree_family,
    "toy": toy_family,
    "llm": llm_family,
}


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
    return parser


def main(argv: list[str] | None = None) -> list[Path]:
    """Make the families of ``argv`` under one lock on --out; return the files written."""
    parser = build_parser()
    args = parser.parse_args(argv)
    request = Request(
        Path(args.results), Path(args.out), args.fresh, args.quick, tuple(args.llm_runs)
    )
    try:
        with run_lock(request.out):  # two make_all on one output folder: the second refuses
            return _make(args.only, request)
    except RunFolderBusyError as e:
        raise SystemExit(f"make_all.py: error: {e}") from None


def _make(families: list[str], request: Request) -> list[Path]:
    """Each family in turn (one that fails is named and the rest still drawn)."""
    written: list[Path] = []
    failed: list[str] = []
    for name in families:
        start = time.perf_counter()
        print(f"[{name}] ...", flush=True)
        try:
            files = FAMILIES[name](request)
        except ValueError as e:  # e.g. an LLM folder lacking eval.csv: say so, keep going
            print(f"[{name}] failed: {e}", file=sys.stderr, flush=True)
            failed.append(name)
            continue
        print(f"[{name}] {len(files)} files in {time.perf_counter() - start:.1f} s", flush=True)
        written += files
    for path in written:
        print(path)
    if failed:
        raise SystemExit(f"families that failed: {', '.join(failed)} (see the messages above)")
    return written


if __name__ == "__main__":
    main()
