"""The toy engine on the CPU and on CUDA: training run-steps per second for 10^3-10^5 runs.

Run-steps per second = runs × steps / wall seconds (a logged step's exact metrics included).

    .venv/bin/python benchmarks/toy_device.py                      # CPU, and CUDA when present
    .venv/bin/python benchmarks/toy_device.py --runs 1000 --steps 10 --out /tmp/toy_device.json

Two trees: the paper's b=3, D=3 (27 responses, log-linear policy with k=8 features, as in the
sweeps) and a deep one, b=2, D=8 (256 responses, tabular policy: 510 logits per run). Each size
trains ``--steps`` Adam steps of DPO, IPO and SLiC runs (β 0.1) with exact metrics logged every
``--log-every`` steps, as a sweep does; problems are drawn for ``--problems`` seeds and tiled to
the run count (drawing 10^5 problems would time the problem builder, not training). Each timing
is the best of ``--repeats`` after one warm-up (CUDA context, kernel caches), with the device
synchronised; a CUDA timing includes moving the problem to the GPU, as ``train`` does. On
CUDA, float32 (self-checked against float64 on 4 runs, as ``--precision float32`` does) is timed
beside float64.

Prints one table (device, precision, tree, runs, seconds, run-steps/s) and the CUDA/CPU ratio
per tree and run count, and writes them to ``--out`` (JSON).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine

from treemdp.problem import ProblemSpec, build_problem
from treemdp.train import RunSpec, train
from treemdp.tree import Tree

TREES = {
    "b3-d3": (3, 3, ProblemSpec(sft_steps=20)),  # log-linear, k=8: the sweeps' default
    "deep-b2-d8": (2, 8, ProblemSpec(policy="tabular", sft_steps=20)),
}
OBJECTIVES = ("dpo", "ipo", "slic")


def batch(tree_name: str, n_runs: int, n_problems: int):
    """A problem of ``n_runs`` runs (``n_problems`` seeds tiled) and its specs."""
    b, d, spec = TREES[tree_name]
    problems = build_problem(Tree.complete(b, d), list(range(min(n_runs, n_problems))), spec)
    index = [r % problems.n_runs for r in range(n_runs)]
    # objectives in contiguous blocks, as a sweep lays them out (one view per group, no gather)
    specs = [RunSpec(OBJECTIVES[r * len(OBJECTIVES) // n_runs], 0.1, 0.01) for r in range(n_runs)]
    return problems.select(index), specs


def time_training(problem, specs, *, device: str, precision: str, steps: int, log_every: int,
                  repeats: int) -> tuple[float, float]:  # fmt: skip
    """Best (wall, this process's CPU) seconds of ``steps`` steps, after a 2-step warm-up."""

    def once(n: int) -> tuple[float, float]:
        if device == "cuda":
            torch.cuda.synchronize()
        start, cpu = time.perf_counter(), time.process_time()
        train(problem, specs, steps=n, log_every=log_every, device=device, precision=precision)
        if device == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start, time.process_time() - cpu

    once(2)
    return min(once(steps) for _ in range(repeats))


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", default="1000,10000,100000", help="run counts, comma-separated")
    parser.add_argument("--trees", default=",".join(TREES), help="trees: " + ", ".join(TREES))
    parser.add_argument(
        "--max-cpu-runs", type=int, default=0, help="skip CPU above N runs (0: none)"
    )
    parser.add_argument("--steps", type=int, default=20, help="Adam steps timed per size")
    parser.add_argument("--log-every", type=int, default=10, help="exact metrics every N steps")
    parser.add_argument("--problems", type=int, default=100, help="seeds drawn, tiled to --runs")
    parser.add_argument("--repeats", type=int, default=1, help="best of this many timings")
    parser.add_argument("--devices", default="auto", help="cpu, cuda, or auto (cpu + cuda if any)")
    parser.add_argument("--out", default="results/toy_device.json", help="JSON table written here")
    args = parser.parse_args(argv)
    torch.set_default_dtype(torch.float64)
    devices = ["cpu", *(["cuda"] if torch.cuda.is_available() else [])]
    if args.devices != "auto":
        devices = args.devices.split(",")
    runs = [int(r) for r in args.runs.split(",")]
    print(f"machine: {machine()}")
    if torch.cuda.is_available():
        print(f"gpu: {torch.cuda.get_device_name(0)}")
    rows = []
    for tree_name in args.trees.split(","):
        for n in runs:
            problem, specs = batch(tree_name, n, args.problems)
            for device in devices:
                if device == "cpu" and args.max_cpu_runs and n > args.max_cpu_runs:
                    continue
                for precision in ("float64", "float32") if device == "cuda" else ("float64",):
                    seconds, cpu_seconds = time_training(
                        problem, specs, device=device, precision=precision, steps=args.steps,
                        log_every=args.log_every, repeats=args.repeats,
                    )  # fmt: skip
                    row = {
                        "device": device,
                        "precision": precision,
                        "tree": tree_name,
                        "runs": n,
                        "steps": args.steps,
                        "seconds": round(seconds, 4),
                        "cpu_seconds": round(cpu_seconds, 4),
                        "run_steps_per_s": round(n * args.steps / seconds),
                    }
                    rows.append(row)
                    print(
                        f"{device:5} {precision:8} {tree_name:11} {n:>7,} runs  "
                        f"{seconds:8.3f} s wall {cpu_seconds:8.3f} s CPU  "
                        f"{row['run_steps_per_s']:>11,} run-steps/s",
                        flush=True,
                    )
    ratios = []
    cpu = {(r["tree"], r["runs"]): r for r in rows if r["device"] == "cpu"}
    for r in rows:
        if r["device"] == "cuda" and (r["tree"], r["runs"]) in cpu:
            ratio = r["run_steps_per_s"] / cpu[(r["tree"], r["runs"])]["run_steps_per_s"]
            ratios.append(
                {**{k: r[k] for k in ("tree", "runs", "precision")}, "cuda_over_cpu": ratio}
            )
            print(f"cuda/cpu {r['precision']:8} {r['tree']:11} {r['runs']:>7,} runs: {ratio:.1f}x")
    if not ratios:
        print("cuda/cpu: no CUDA device here, CPU rows only")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"machine": machine(), "rows": rows, "ratios": ratios}, indent=1))
    print(f"{len(rows)} timings in {out}")
    return rows


if __name__ == "__main__":
    main()
