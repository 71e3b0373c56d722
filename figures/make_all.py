"""Regenerate the paper's figures: run the experiments whose results are missing, then draw.

    python figures/make_all.py                 # every family available
    python figures/make_all.py --only tree     # the Tree-MDP figures
    python figures/make_all.py --fresh         # recompute the experiments too

Experiments run as subprocesses (figures never train in-process); their run folders are reused
when they already exist, so a second call only redraws. Families:

- tree: `Tree-MDP` (diagram) and the Tree-MDP results from experiments/ood_mass.py
  (`{dpo,ipo,slic}-beta-0.1-OOD-probs-summary-1pref`, `-indist-1pref`, the per-β appendix figures,
  `dpo-beta-0.1-{1,2,3}`).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import ood_probs
import tree_mdp

ROOT = Path(__file__).resolve().parents[1]
QUICK = {"steps": 40, "seed": (0, 1, 2), "sft_steps": 30, "log_every": 10}
"""A tiny experiment config for tests and a quick look (not the paper's numbers)."""


def run_experiment(script: str, args: list[str], results: Path, fresh: bool) -> None:
    """Run an experiment script into ``results`` (it reuses finished run folders itself)."""
    name = Path(script).stem
    command = [sys.executable, str(ROOT / script), *args, "--out", str(results / name)]
    if fresh:
        command.append("--force")
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{script} failed:\n{done.stderr.strip()}")


def tree_family(results: Path, out: Path, fresh: bool, quick: bool) -> list[Path]:
    """The Tree-MDP diagram and result figures."""
    written = tree_mdp.main(out)
    settings = {**ood_probs.REQUIRED, **(QUICK if quick else {})}
    try:
        if fresh:
            raise ValueError("recompute")
        run = ood_probs.find_run(results, settings)
    except ValueError:
        run_experiment(ood_probs.EXPERIMENT, ood_probs.experiment_args(settings), results, fresh)
        run = ood_probs.find_run(results, settings)
    return written + ood_probs.main(run, out)


FAMILIES: dict[str, Callable[[Path, Path, bool, bool], list[Path]]] = {"tree": tree_family}


def main(argv: list[str] | None = None) -> list[Path]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
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
    args = parser.parse_args(argv)
    results, out = Path(args.results), Path(args.out)
    written: list[Path] = []
    for name in args.only:
        start = time.perf_counter()
        print(f"[{name}] ...", flush=True)
        files = FAMILIES[name](results, out, args.fresh, args.quick)
        print(f"[{name}] {len(files)} files in {time.perf_counter() - start:.1f} s", flush=True)
        written += files
    for path in written:
        print(path)
    return written


if __name__ == "__main__":
    main()
