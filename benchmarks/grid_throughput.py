"""Benchmark 1: the paper-style grid (DPO, IPO, SLiC × 7 β × 20 seeds = 420 runs, b=3, D=3, one
pair, Adam, 2000 steps, metrics every 10) on the batched engine vs a plain one-run-at-a-time
trainer (benchmarks/reference.py) with the same math.

    .venv/bin/python benchmarks/grid_throughput.py [--reference-seeds 2] [--repeats 3]

The reference trains the runs of the first --reference-seeds seeds (all objectives and β) one
at a time; its time is extrapolated linearly to 420 runs, and its metrics are compared with the
engine's rows for the same runs. Also times experiments/sweep.py end to end (problem building,
training, part files, the merged CSV).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import best_of, machine
from reference import train_reference

from treemdp.metrics import METRICS
from treemdp.problem import ProblemSpec, build_problem
from treemdp.train import RunSpec, train
from treemdp.tree import Tree

OBJECTIVES = ("dpo", "ipo", "slic")
BETAS = (0.01, 0.03, 0.05, 0.1, 0.2, 0.3, 0.5)
SEEDS = tuple(range(20))
LR, STEPS, LOG_EVERY, SFT_STEPS = 0.01, 2000, 10, 300


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--reference-seeds", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_default_dtype(torch.float64)
    print(f"machine: {machine()}")
    tree = Tree.complete(3, 3)
    layout = [(o, b, s) for o in OBJECTIVES for b in BETAS for s in range(len(SEEDS))]
    build_s, _, problems = best_of(
        1, lambda: build_problem(tree, SEEDS, ProblemSpec(sft_steps=SFT_STEPS))
    )
    problem = problems.select([s for *_, s in layout])
    specs = [RunSpec(o, b, LR) for o, b, _ in layout]

    best, times, history = best_of(
        args.repeats, lambda: train(problem, specs, steps=STEPS, log_every=LOG_EVERY)
    )
    engine = history.frame.sort_values(["run", "step"], kind="stable").reset_index(drop=True)
    print(
        f"engine: {len(layout)} runs × {STEPS} steps, metrics every {LOG_EVERY}: best {best:.2f} s "
        f"of {[round(t, 2) for t in times]} (problem building: {build_s:.2f} s, "
        f"{len(engine):,} rows)"
    )

    subset = [i for i, (_, _, s) in enumerate(layout) if s < args.reference_seeds]
    ref_layout = [(layout[i][0], layout[i][1], LR) for i in subset]
    start = time.perf_counter()
    plain = train_reference(problem.select(subset), ref_layout, steps=STEPS, log_every=LOG_EVERY)
    ref_s = time.perf_counter() - start
    per_run = ref_s / len(subset)
    full_ref = per_run * len(layout)
    print(
        f"reference: {len(subset)} runs one at a time in {ref_s:.1f} s ({per_run:.3f} s/run); "
        f"extrapolated to {len(layout)} runs: {full_ref:.0f} s"
    )
    mine = engine[engine["run"].isin(subset)].reset_index(drop=True)
    mine["run"] = mine["run"].map({r: i for i, r in enumerate(subset)})
    assert (mine["objective"] == plain["objective"]).all() and (mine["step"] == plain["step"]).all()
    gaps = {m: float((mine[m] - plain[m]).abs().max()) for m in METRICS}
    worst = max(gaps, key=gaps.get)
    print(f"largest engine − reference gap over {len(mine):,} rows: {gaps[worst]:.2e} ({worst})")
    print(f"speed-up (engine best vs extrapolated reference): {full_ref / best:.0f}×")

    sweep_times = []
    for _ in range(2):
        with tempfile.TemporaryDirectory() as out:
            cmd = [
                sys.executable, "experiments/sweep.py", "--objectives", *OBJECTIVES,
                "--betas", *map(str, BETAS), "--seeds", "0-19", "--depth", "3",
                "--steps", str(STEPS), "--log-every", str(LOG_EVERY), "--no-progress",
                "--out", out,
            ]  # fmt: skip
            start = time.perf_counter()
            done = subprocess.run(cmd, capture_output=True, text=True, check=True)
            sweep_times.append(time.perf_counter() - start)
    print(done.stdout.strip().splitlines()[-1])
    print(
        f"experiments/sweep.py end to end (python start-up, imports, building, training, "
        f"parts, CSV): best {min(sweep_times):.2f} s of {[round(t, 2) for t in sweep_times]}"
    )
    print(f"machine after: {machine()}")


if __name__ == "__main__":
    main()
