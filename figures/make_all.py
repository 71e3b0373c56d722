"""Regenerate the paper's figures: run the experiments whose results are missing, then draw.

    python figures/make_all.py                 # every family available
    python figures/make_all.py --only tree     # the Tree-MDP figures
    python figures/make_all.py --fresh         # recompute the experiments too

Experiments run as subprocesses (figures never train in-process); their run folders are reused
when they already exist, so a second call only redraws. Families:

- tree: `Tree-MDP` (diagram) and the Tree-MDP results from experiments/ood_mass.py
  (`{dpo,ipo,slic}-beta-0.1-OOD-probs-summary-1pref`, `-indist-1pref`, the per-β appendix figures,
  `dpo-beta-0.1-{1,2,3}`).
- toy: the scaling-law, evolution, length and accuracy figures (paper Figs. 1-5) from
  experiments/toy_scaling.py (DPO, IPO, SLiC, R-DPO; "size" = policy capacity), under out/toy/.
- llm: the same figures from LLM evaluation run folders given with --llm-runs DIR..., under
  out/llm/ (without --llm-runs it says so and draws nothing).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import accuracy
import checkpoints
import evolution
import length
import ood_probs
import scaling_fits
import tree_mdp

from treemdp.cli import OneLineParser, flags_for
from treemdp.results import RunFolderBusyError, config_matches, find_runs, run_lock

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
        run_experiment(ood_probs.EXPERIMENT, flags_for(settings), results, fresh)
        run = ood_probs.find_run(results, settings)
    return written + ood_probs.main(run, out)


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


def toy_family(results: Path, out: Path, fresh: bool, quick: bool) -> list[Path]:
    """Scaling / evolution / length / accuracy figures from experiments/toy_scaling.py."""
    settings = checkpoints.TOY_QUICK if quick else checkpoints.TOY_REQUIRED
    try:
        if fresh:
            raise ValueError("recompute")
        run = checkpoints.find_toy_run(results, settings)
    except ValueError:
        # --force: a folder of the same config written before length_r2 existed is recomputed
        args = [*flags_for(settings), "--force"]
        run_experiment(checkpoints.TOY_EXPERIMENT, args, results, fresh=False)
        run = checkpoints.find_toy_run(results, settings)
    return draw_checkpoints(checkpoints.load_toy(run), out)


LLM_RUNS: list[str] = []
"""Set from --llm-runs by ``main``."""

LLM_EXPERIMENT = "experiments/llm_confirm.py"
LLM_SIZES = ("tiny", "14m", "31m")
"""Model sizes standing in for Pythia 1B / 2.8B / 6.9B on this CPU (tree language)."""
LLM_SETTINGS = {"beta": (0.03, 0.1, 0.3), "steps": 40, "checkpoints": 10}
"""DPO moves a small LLM in a few steps on one pair: 40 steps, a checkpoint every 4."""
LLM_QUICK = {
    "beta": (0.1,), "steps": 20, "checkpoints": 4, "sft_samples": 64, "sft_epochs": 2.0,
    "eval_samples": 32, "toy_steps": 200, "toy_sft_steps": 50,
}  # fmt: skip


def default_llm_runs(results: Path, fresh: bool, quick: bool) -> list[Path]:
    """LLM run folders on the tree language, one llm_confirm run per model size (made here when
    missing: experiments/llm_confirm.py reuses finished runs itself)."""
    sizes, settings = (LLM_SIZES[:1], LLM_QUICK) if quick else (LLM_SIZES, LLM_SETTINGS)
    root = results / Path(LLM_EXPERIMENT).stem
    folders: list[Path] = []
    for size in sizes:
        wanted = {**settings, "model": size}
        found = [f for f, c in find_runs(root, "comparison.csv") if config_matches(c, wanted)]
        if fresh or not found:
            print(f"  training and evaluating the {size} model ...", flush=True)
            run_experiment(LLM_EXPERIMENT, [*flags_for(wanted), "--no-progress"], results, fresh)
            found = [f for f, c in find_runs(root, "comparison.csv") if config_matches(c, wanted)]
        folders += [p for p in sorted((found[0] / "llm").iterdir()) if p.name != "sft"]
    return folders


def llm_family(results: Path, out: Path, fresh: bool, quick: bool) -> list[Path]:
    """The same figures from LLM evaluation run folders: --llm-runs, or by default tree-language
    runs of three small model sizes made on this machine (experiments/llm_confirm.py)."""
    runs = LLM_RUNS or default_llm_runs(results, fresh, quick)
    return draw_checkpoints(checkpoints.load_llm(runs), out)


FAMILIES: dict[str, Callable[[Path, Path, bool, bool], list[Path]]] = {
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
    parser = build_parser()
    args = parser.parse_args(argv)
    LLM_RUNS[:] = args.llm_runs
    results, out = Path(args.results), Path(args.out)
    try:
        with run_lock(out):  # two make_all on one output folder: the second refuses
            return _make(args, results, out)
    except RunFolderBusyError as e:
        raise SystemExit(f"make_all.py: error: {e}") from None


def _make(args: argparse.Namespace, results: Path, out: Path) -> list[Path]:
    written: list[Path] = []
    failed: list[str] = []
    for name in args.only:
        start = time.perf_counter()
        print(f"[{name}] ...", flush=True)
        try:
            files = FAMILIES[name](results, out, args.fresh, args.quick)
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
