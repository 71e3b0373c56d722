"""Benchmark 3: one run on a big tree, exact metrics, float64, end to end; plus where the time
goes (cProfile of the training call) and the memory-bandwidth floor of a logged step.

    .venv/bin/python benchmarks/big_tree.py [--branching 3 --depth 12] [--steps 1000]
        [--log-every 50] [--repeats 3]

Times tree construction, problem building (features, rewards, pair, 100-step SFT reference) and
training (DPO, β=0.1, Adam lr 0.01) separately; training is repeated and the best time kept.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import resource
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ByteCounter, best_of, copy_bandwidth, machine

from treemdp.metrics import MetricContext, metrics, win_weights
from treemdp.problem import ProblemSpec, build_problem
from treemdp.threads import threads_for
from treemdp.train import RunSpec, train
from treemdp.tree import Tree


def logged_step_bytes(problem) -> tuple[int, int, int, float]:
    """(compulsory bytes, bytes touched, aten ops, seconds) of one logged step's exact part:
    every response's log-probability and all metrics (what a logged step adds to an unlogged
    one). Compulsory bytes are the inputs it cannot avoid reading once: the features and θ,
    and per response π_ref, the gold reward, the win-rate weights and the pair masks."""
    policy, pairs = problem.policy, problem.pairs
    ctx = MetricContext.build(problem.tree, problem.rewards, pairs)
    ref = problem.ref_logp
    theta = policy.theta0
    h = torch.zeros(1, pairs.n_pairs, dtype=torch.float64)
    weights = win_weights(ctx, ref)
    inputs = [policy.family.features, theta, ref, ctx.rewards, weights, ctx.in_dist]
    compulsory = sum(t.numel() * t.element_size() for t in [*inputs, ctx.chosen_mask])
    compulsory += ctx.rejected_mask.numel() * ctx.rejected_mask.element_size()

    def step():
        logp = policy.response_logprobs(theta)
        return metrics(ctx, logp, ref, h, h, ref_weights=weights)

    with torch.no_grad(), threads_for(problem.n_runs * problem.tree.n_nodes):  # as train does
        step()
        best, _, _ = best_of(5, step)
        with ByteCounter() as counter:
            step()
    return compulsory, counter.bytes, counter.ops, best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--branching", type=int, default=3)
    parser.add_argument("--depth", type=int, default=12)
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--log-every", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--profile", action=argparse.BooleanOptionalAction, default=True)
    args = parser.parse_args()
    torch.set_default_dtype(torch.float64)
    print(f"machine: {machine()}")
    t0 = time.perf_counter()
    tree = Tree.complete(args.branching, args.depth)
    t_tree = time.perf_counter() - t0
    t0 = time.perf_counter()
    problem = build_problem(tree, [0], ProblemSpec(sft_steps=100))
    t_build = time.perf_counter() - t0
    print(f"{tree}: tree {t_tree:.2f} s, problem + SFT reference {t_build:.2f} s")
    spec = [RunSpec("dpo", 0.1, 0.01)]

    def run():
        return train(problem, spec, steps=args.steps, log_every=args.log_every)

    best, times, history = best_of(args.repeats, run)
    n_logged = len(history.frame)
    print(
        f"train: {args.steps} Adam steps, exact metrics at {n_logged} steps: best {best:.2f} s of "
        f"{[round(t, 2) for t in times]}; end to end (tree + problem + best train) "
        f"{t_tree + t_build + best:.2f} s"
    )
    last = history.frame.iloc[-1]
    print(
        f"final: p_chosen {last['p_chosen']:.3g}, mass_ood {last['mass_ood']:.6f}, "
        f"max_ood {last['max_ood']:.3f}, kl_reverse {last['kl_reverse']:.2f}, "
        f"win_rate {last['win_rate']:.4f}"
    )
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10
    print(f"peak RSS of the process: {rss:.0f} MiB")

    compulsory, nbytes, ops, logged_s = logged_step_bytes(problem)
    bw = copy_bandwidth()
    print(
        f"a logged step's exact part (all {tree.n_responses:,} log-probs + metrics): "
        f"{logged_s * 1e3:.1f} ms in {ops} aten ops. Copy bandwidth {bw / 2**30:.1f} GiB/s. "
        f"Compulsory reads {compulsory / 2**20:.0f} MiB → floor {compulsory / bw * 1e3:.1f} ms "
        f"(the engine takes {logged_s / (compulsory / bw):.1f}× that). The ops' inputs and "
        f"outputs add up to {nbytes / 2**20:.0f} MiB ({nbytes / bw * 1e3:.0f} ms at that "
        "bandwidth if nothing stayed in cache)"
    )
    quiet, _, _ = best_of(
        args.repeats, lambda: train(problem, spec, steps=args.steps, log_every=10**9)
    )
    print(
        f"the same {args.steps} steps logging only steps 0 and {args.steps}: {quiet:.2f} s, so "
        f"an unlogged step (path-only loss, gradient, Adam) costs about "
        f"{(quiet - 2 * logged_s) / args.steps * 1e3:.2f} ms"
    )
    if args.profile:
        prof = cProfile.Profile()
        prof.enable()
        run()
        prof.disable()
        out = io.StringIO()
        pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(12)
        lines = [ln for ln in out.getvalue().splitlines() if ln.strip()]
        print("profile of one training call (top 12 by own time):")
        print("\n".join(lines[3:]))
    print(f"machine after: {machine()}")


if __name__ == "__main__":
    main()
