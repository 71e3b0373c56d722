"""Benchmark 2: seconds per training step including all exact metrics, one run, b=3,
D = 4 … 12, with the fitted exponent of time (and memory) against the number of nodes.

    .venv/bin/python benchmarks/scaling.py [--depths 4 5 6 7 8 9 10 11 12] [--repeats 3]

Each depth runs in a fresh process (so its peak memory is its own): build the tree and the
problem (100-step SFT reference), then train DPO with metrics at every step (``log_every=1``),
best of --repeats; and the cost of an unlogged step (the loss on the pairs' paths, its gradient
and the Adam update), from the difference of a 510- and a 10-step run. Peak memory is the
process's peak RSS minus its RSS after the imports.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine


def one_depth(branching: int, depth: int, repeats: int) -> dict:
    """Measure one depth in this process; a JSON-ready dict."""
    import torch
    from common import best_of

    from treemdp.problem import ProblemSpec, build_problem
    from treemdp.train import RunSpec, train
    from treemdp.tree import Tree

    torch.set_default_dtype(torch.float64)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    tree = Tree.complete(branching, depth)
    problem = build_problem(tree, [0], ProblemSpec(sft_steps=100))
    spec = [RunSpec("dpo", 0.1, 0.01)]
    steps = int(min(200, max(10, 3e6 // tree.n_nodes)))
    with_metrics, _, _ = best_of(repeats, lambda: train(problem, spec, steps=steps, log_every=1))
    # Unlogged steps: two runs that both log only their first and last step differ by 500
    # unlogged steps (the loss on the pairs' paths, its gradient, the Adam update).
    quiet = [
        best_of(repeats, lambda n=n: train(problem, spec, steps=n, log_every=10**9))[0]
        for n in (10, 510)
    ]
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {
        "depth": depth,
        "nodes": tree.n_nodes,
        "responses": tree.n_responses,
        "steps": steps,
        # steps + 1 evaluations of loss and metrics, steps updates
        "s_per_step": with_metrics / steps,
        "s_per_step_no_metrics": (quiet[1] - quiet[0]) / 500,
        "peak_mib": (peak - base) / 2**10,
    }


def fit(x: list[float], y: list[float]) -> float:
    """Slope of log y against log x (least squares)."""
    return float(np.polyfit(np.log(x), np.log(y), 1)[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--branching", type=int, default=3)
    parser.add_argument("--depths", type=int, nargs="+", default=list(range(4, 13)))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--fit-from", type=int, default=8, help="fit depths >= this (and +1)")
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)  # child process mode
    args = parser.parse_args()
    if args.one is not None:
        print(json.dumps(one_depth(args.branching, args.one, args.repeats)))
        return
    print(f"machine: {machine()}")
    rows = []
    print(f"{'D':>3} {'nodes':>9} {'steps':>5} {'ms/step':>9} {'ms/step no metrics':>18} "
          f"{'peak MiB':>9}")  # fmt: skip
    for depth in args.depths:
        cmd = [sys.executable, __file__, "--branching", str(args.branching), "--one", str(depth),
               "--repeats", str(args.repeats)]  # fmt: skip
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        row = json.loads(out.strip().splitlines()[-1])
        rows.append(row)
        print(
            f"{row['depth']:>3} {row['nodes']:>9,} {row['steps']:>5} "
            f"{row['s_per_step'] * 1e3:>9.3f} {row['s_per_step_no_metrics'] * 1e3:>18.3f} "
            f"{row['peak_mib']:>9.1f}",
            flush=True,
        )
    for start in sorted({args.fit_from, args.fit_from + 1}):
        big = [r for r in rows if r["depth"] >= start]
        if len(big) < 2:
            continue
        nodes = [r["nodes"] for r in big]
        print(
            f"fitted exponent vs nodes, D >= {start}: time per step with metrics "
            f"{fit(nodes, [r['s_per_step'] for r in big]):.3f}; peak memory "
            f"{fit(nodes, [max(r['peak_mib'], 1e-3) for r in big]):.3f}; unlogged step "
            f"{fit(nodes, [max(r['s_per_step_no_metrics'], 1e-9) for r in big]):.3f}"
        )
    print(f"machine after: {machine()}")


if __name__ == "__main__":
    main()
