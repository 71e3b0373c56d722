"""Where does gradient descent land inside the set of minimisers? (Proposition 1, checked.)

Trains each objective (DPO, IPO, SLiC) on Tree-MDP problems (``build_problem`` + ``train``), then
compares the trained policy with the exact minimiser set of its own dataset
(``treemdp.theory.minimiser_set``):

    loss            the trained policy's mean per-pair loss
    infimum         inf of that loss over all policies (exact; DPO: usually not attained)
    excess_loss     loss − infimum
    margin_distance RMS distance of the trained margins h = A ℓ to the set of minimising margins
                    (IPO: to the unique h*; SLiC: Euclidean projection onto the polyhedron;
                    DPO: NaN when no policy attains the infimum — the set is empty)
    mass_ood        the trained policy's mass on responses no pair mentions
    ood_range_lo/hi the closure of the OOD masses over the minimiser set (the same for every
                    objective: the loss never sees an OOD response)
    minimiser_ood_lo/hi, minimiser_loss_lo/hi
                    two constructed minimisers (``extreme_minimisers``) with OOD mass 1e-6 and
                    1 − 1e-6 and their losses (equal up to rounding), as a check

    python experiments/theory_check.py --beta 0.1 0.5

writes results/theory_check/<run>/{config.json, trajectory.csv, theory_check.csv,
theory_check.png} and prints a summary table (means over seeds).
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from figures import quicklook
from treemdp import objectives, theory
from treemdp.data import Pairs
from treemdp.devices import PRECISIONS, resolve_device
from treemdp.memory import DEFAULT_MEMORY_MB, complete_tree_for_runs
from treemdp.optim import OPTIMIZERS
from treemdp.problem import ProblemSpec, build_problem
from treemdp.runs import run_folder
from treemdp.runs.cli import SEED_MAX, arg, nested, run
from treemdp.runs.experiment import cached_run
from treemdp.train import RunSpec, grid, train
from treemdp.tree import Tree


@dataclass(frozen=True)
class Config:
    objectives: tuple[str, ...] = arg(
        ("dpo", "ipo", "slic"),
        "objectives to train and check",
        choices=theory.MINIMISER_OBJECTIVES,
    )
    beta: tuple[float, ...] = arg((0.1, 0.5), "β values (one or several)", exclusive_minimum=0)
    branching: int = arg(3, "actions per state (b)", minimum=2)
    depth: int = arg(3, "tree depth D (b^D responses)", minimum=1)
    problem: ProblemSpec = nested(
        ProblemSpec(pairs=2, sft_steps=300),
        flags=("pairs", "policy", "features", "reference", "sft_steps", "sft_lr"),
    )
    steps: int = arg(1000, "training steps", minimum=1)
    lr: float = arg(0.01, "learning rate", exclusive_minimum=0)
    optimizer: str = arg("adam", "optimiser", choices=OPTIMIZERS)
    log_every: int = arg(20, "log exact metrics every this many steps", minimum=1)
    seed: tuple[int, ...] = arg(
        tuple(range(5)),
        "seeds (each draws features, rewards, pairs)",
        minimum=0,
        maximum=SEED_MAX,
    )
    memory_mb: int = arg(
        DEFAULT_MEMORY_MB, "memory budget in MiB (estimate, checked before allocating)", minimum=1
    )
    device: str = arg("cpu", "where the runs train: cpu, cuda, cuda:N or auto (cuda if present)")
    precision: str = arg(
        "float64", "float64, or float32 (checked against float64 on a sample)", choices=PRECISIONS
    )
    out: str = arg("results/theory_check", "root folder for run folders")
    force: bool = arg(False, "recompute even if this config's results exist")


SUMMARY = [
    "loss",
    "infimum",
    "excess_loss",
    "margin_distance",
    "mass_ood",
    "ood_range_lo",
    "ood_range_hi",
    "minimiser_ood_lo",
    "minimiser_ood_hi",
]


def _analyse(tree: Tree, problem, history, specs: list[RunSpec]) -> pd.DataFrame:
    """One row per run: the trained policy against its objective's exact minimiser set."""
    logp = problem.policy.response_logprobs(history.theta).detach()
    ref = problem.ref_logp
    rows = []
    for r, spec in enumerate(tqdm(specs, desc="minimiser sets", leave=False, disable=None)):
        pairs = Pairs(problem.pairs.chosen[r], problem.pairs.rejected[r])
        mset = theory.minimiser_set(spec.objective, tree, pairs, beta=spec.beta)
        lc, lr = logp[r, pairs.chosen], logp[r, pairs.rejected]
        rc, rr = ref[r, pairs.chosen], ref[r, pairs.rejected]
        h = (lc - rc) - (lr - rr)
        value = float(objectives.loss(spec.objective, lc, lr, rc, rr, beta=spec.beta).mean())
        low, high = theory.extreme_minimisers(mset, tree, pairs, ref[r])
        lo, hi = theory.ood_mass_range(tree, pairs)
        ident = theory.identifiability(tree, pairs)
        rows.append(
            {
                "run": r,
                "objective": spec.objective,
                "beta": spec.beta,
                "seed": int(problem.seeds[r]),
                "loss": value,
                "infimum": mset.infimum,
                "attained": mset.attained,
                "excess_loss": value - mset.infimum,
                "margin_distance": float(theory.margin_distance(mset, h)),
                "mass_ood": float(theory.ood_mass(tree, pairs, logp[r : r + 1])[0]),
                "ood_range_lo": lo,
                "ood_range_hi": hi,
                "minimiser_ood_lo": low.ood_mass,
                "minimiser_ood_hi": high.ood_mass,
                "minimiser_loss_lo": low.loss,
                "minimiser_loss_hi": high.loss,
                "query_rank": ident.rank,
                "dim_policies": ident.dim_policies,
                "description": mset.description,
            }
        )
    return pd.DataFrame(rows)


def run_experiment(config: Config) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Train every (objective, β, seed) run as one batch; return (per-run table, trajectories)."""
    if len(set(config.seed)) != len(config.seed):
        raise ValueError("--seed values must be distinct")
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
    )
    table = _analyse(tree, problem, history, specs)
    traj = history.frame[["run", "objective", "beta", "seed", "step", "loss", "mass_ood"]].copy()
    traj["excess_loss"] = traj["loss"] - traj["run"].map(table.set_index("run")["infimum"])
    return table, traj


def summarise(table: pd.DataFrame) -> pd.DataFrame:
    """Means over seeds per (objective, β)."""
    return table.groupby(["objective", "beta"], sort=False)[SUMMARY].mean()


def output_folder(config: Config) -> Path:
    """The run folder of ``config`` (named by a hash of every field but --out and --force)."""
    return run_folder(
        config.out,
        config,
        prefix=f"b{config.branching}-d{config.depth}",
        ignore=("out", "force", "memory_mb", "device"),
    )


def main(config: Config) -> Path:
    """Run (or reuse) the experiment for ``config``; print the summary; return the run folder."""
    resolve_device(config.device)  # a device this torch cannot use: one line, nothing written
    folder = output_folder(config)
    start = time.perf_counter()

    def compute() -> dict[str, pd.DataFrame]:
        table, traj = run_experiment(config)
        return {"theory_check": table, "trajectory": traj}

    names = ["theory_check", "trajectory"]
    with cached_run(
        folder, config, names, compute, force=config.force, diverged="trajectory"
    ) as tables:
        table, traj = tables["theory_check"], tables["trajectory"]
        quicklook.theory_check(table, traj, folder / "theory_check.png")
    gap = float(np.max(np.abs(table["minimiser_loss_lo"] - table["minimiser_loss_hi"])))
    print(f"means over {len(config.seed)} seeds ({config.steps} steps):")
    print(summarise(table).to_string(float_format=lambda x: f"{x:.4g}"))
    print(
        f"constructed minimisers: OOD mass {table['minimiser_ood_lo'].max():.1e} and "
        f"{table['minimiser_ood_hi'].min():.6f}, loss gap ≤ {gap:.1e}"
    )
    print(
        f"{len(table)} runs in {time.perf_counter() - start:.1f} s; results in {folder}/ "
        "(config.json, trajectory.csv, theory_check.csv, theory_check.png)"
    )
    return folder


if __name__ == "__main__":
    run(Config, main, description=__doc__)
