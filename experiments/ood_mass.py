"""Where does the probability mass go? DPO, IPO and SLiC on a Tree MDP with one preference pair.

Reproduces the paper's Tree-MDP figures (Rafailov et al. 2024, "OOD-probs" and "indist"): the
mass on responses that no preference pair mentions grows during training while the
in-distribution mass falls. Every number is exact (the policy's full distribution over responses
is computed at every logged step).

    python experiments/ood_mass.py --beta 0.1

writes results/ood_mass/<run>/{config.json, metrics.csv, responses.csv, ood_mass.png} and prints
the final metrics per objective and β (means over seeds).
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from figures import quicklook
from treemdp import objectives
from treemdp.devices import PRECISIONS, resolve_device
from treemdp.memory import DEFAULT_MEMORY_MB, complete_tree_for_runs
from treemdp.optim import OPTIMIZERS
from treemdp.problem import Problem, ProblemSpec, build_problem
from treemdp.runs import run_folder
from treemdp.runs.cli import SEED_MAX, arg, nested, run
from treemdp.runs.experiment import cached_run
from treemdp.train import grid, train


@dataclass(frozen=True)
class Config:
    beta: tuple[float, ...] = arg((0.1,), "β values (one or several)", exclusive_minimum=0)
    objectives: tuple[str, ...] = arg(
        ("dpo", "ipo", "slic"), "objectives to train", choices=objectives.names()
    )
    branching: int = arg(3, "actions per state (b)", minimum=2)
    depth: int = arg(3, "tree depth D (b^D responses)", minimum=1)
    problem: ProblemSpec = nested(
        ProblemSpec(pairs=1, sft_steps=300),
        flags=("pairs", "policy", "features", "reference", "sft_steps", "sft_lr"),
    )
    steps: int = arg(2000, "training steps", minimum=1)
    lr: float = arg(0.01, "learning rate", exclusive_minimum=0)
    optimizer: str = arg("adam", "optimiser", choices=OPTIMIZERS)
    log_every: int = arg(10, "log exact metrics every this many steps", minimum=1)
    seed: tuple[int, ...] = arg(
        tuple(range(10)),
        "seeds (each draws features, rewards, pair)",
        minimum=0,
        maximum=SEED_MAX,
    )
    responses: bool = arg(
        True, "also write responses.csv: π(y) of every response at every logged step"
    )
    memory_mb: int = arg(
        DEFAULT_MEMORY_MB, "memory budget in MiB (estimate, checked before allocating)", minimum=1
    )
    device: str = arg("cpu", "where the runs train: cpu, cuda, cuda:N or auto (cuda if present)")
    precision: str = arg(
        "float64", "float64, or float32 (checked against float64 on a sample)", choices=PRECISIONS
    )
    out: str = arg("results/ood_mass", "root folder for run folders")
    force: bool = arg(False, "recompute even if this config's results exist")


SUMMARY = ["p_chosen", "p_rejected", "mass_ood", "max_ood", "kl_reverse", "win_rate"]


MAX_RECORDED_RESPONSES = 10_000


def run_experiment(config: Config) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """Train every (objective, β, seed) run as one batch.

    Returns:
        The tidy metrics table and, with ``config.responses``, the per-response table (run, step,
        response, logp, role).
    """
    n_runs = len(config.objectives) * len(config.beta) * len(config.seed)
    tree = complete_tree_for_runs(
        config.branching, config.depth, n_runs=n_runs, policy=config.problem.policy,
        features=config.problem.features, memory_mb=config.memory_mb,
    )  # fmt: skip
    problems = build_problem(tree, config.seed, config.problem)
    problem, specs = grid(problems, config.objectives, config.beta, config.lr)
    history = train(
        problem,
        specs,
        device=config.device,
        precision=config.precision,
        steps=config.steps,
        optimizer=config.optimizer,
        log_every=config.log_every,
        progress=sys.stderr.isatty(),
        record_responses=config.responses,
    )
    if not config.responses:
        return history.frame, None
    return history.frame, with_roles(history.response_frame(), problem)


def with_roles(responses: pd.DataFrame, problem: Problem) -> pd.DataFrame:
    """Add a ``role`` column: "chosen", "rejected" (or "both") in the run's pairs, else "ood"."""
    R, L = problem.n_runs, problem.tree.n_responses
    chosen = torch.zeros(R, L, dtype=torch.bool).scatter_(1, problem.pairs.chosen, True)
    rejected = torch.zeros(R, L, dtype=torch.bool).scatter_(1, problem.pairs.rejected, True)
    roles = np.select(
        [(chosen & rejected).numpy(), chosen.numpy(), rejected.numpy()],
        ["both", "chosen", "rejected"],
        default="ood",
    )
    return responses.assign(role=roles[responses["run"], responses["response"]])


def output_folder(config: Config) -> Path:
    """The run folder of ``config`` (named by a hash of every field but --out and --force)."""
    return run_folder(
        config.out,
        config,
        prefix=f"b{config.branching}-d{config.depth}",
        ignore=("out", "force", "memory_mb", "device"),
    )


def main(config: Config) -> Path:
    """Run (or reuse) the experiment for ``config``; return its run folder."""
    resolve_device(config.device)  # a device this torch cannot use: one line, nothing written
    if len(set(config.seed)) != len(config.seed):
        raise ValueError("--seed values must be distinct")
    if config.responses and config.branching**config.depth > MAX_RECORDED_RESPONSES:
        raise ValueError(
            f"--responses records every response; {config.branching}^{config.depth} is over "
            f"{MAX_RECORDED_RESPONSES:,}: pass --no-responses"
        )
    folder = output_folder(config)
    start = time.perf_counter()

    def compute() -> dict[str, pd.DataFrame | None]:
        frame, responses = run_experiment(config)
        return {"metrics": frame, "responses": responses}

    with cached_run(folder, config, ["metrics"], compute, force=config.force) as tables:
        frame = tables["metrics"]
        if config.force or not (folder / "ood_mass.png").exists():  # reused: keep its quick look
            quicklook.ood_mass(frame, folder / "ood_mass.png")
    final = frame[frame["step"] == frame["step"].max()]
    summary = final.groupby(["objective", "beta"], sort=False)[SUMMARY].mean()
    peak = frame.groupby(["objective", "beta", "run"], sort=False)["p_chosen"].max()
    summary.insert(1, "p_chosen_peak", peak.groupby(["objective", "beta"], sort=False).mean())
    n_runs = frame["run"].nunique()
    print(f"final step {int(final['step'].iloc[0])}, means over {len(config.seed)} seeds:")
    print(summary.to_string(float_format=lambda x: f"{x:.3f}"))
    print(
        f"{n_runs} runs in {time.perf_counter() - start:.1f} s; results in {folder}/ "
        f"({', '.join(sorted(p.name for p in folder.iterdir() if not p.name.startswith('.')))})"
    )
    return folder


if __name__ == "__main__":
    run(Config, main, description=__doc__)
