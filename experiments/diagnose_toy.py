"""Which diagnostics track over-optimization? diagnose.py's signals, exactly, on the toy, over
many seeds: against the exact OOD mass and the exact win rate, and as early warnings of the
win-rate peak.

    python experiments/diagnose_toy.py           # 40 seeds × 3 capacities × 3 objectives × 4 β
    python experiments/diagnose_toy.py --quick         # a tiny config (seconds; not the numbers)

The toy is toy_scaling's (a tree whose action 0 ends the response, the Goodhart-shaped
``concave`` gold reward, an SFT reference) in the regime where mass leaves the data: few pairs
(32) revisited for several epochs (4) in minibatches of 4. Every run logs log π of every
response at 16 checkpoints; from it ``treemdp.diagnostics.exact_signals`` computes what a
practitioner would monitor (chosen / rejected log-prob change, both-fall share, implicit margin
and accuracy, KL, ``ood_proxy``, argmax mass), and ``gradient_ches`` the CHES score of every
pair in parameter space (feature space for the log-linear policy) at the reference.

Writes <out>/<run>/: ``signals.csv`` (one row per run and checkpoint: signals and truths),
the tables of ``treemdp.claims.early_warning.analyse``: ``tracking.csv`` (Spearman of each
signal with the exact OOD mass and the win-rate change, pooled and within runs, with intervals
over seeds), ``warning.csv`` and ``stopping.csv`` (each signal, its causal "rise" above its
running minimum, simulated judges and the configuration-only baselines as early-warning
detectors and as stopping rules: thresholds chosen on half the seeds, scored on the other half)
and ``selection.csv`` (which checkpoint to keep); and ``ches.csv`` (per run: Spearman of CHES
with the pairs' displacement at the first and the last checkpoint). See docs/diagnose.md.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import toy_scaling  # a sibling script (its folder is on sys.path): capacities and sizes
from tqdm.auto import tqdm

from treemdp import objectives
from treemdp.claims import early_warning
from treemdp.claims.evidence import mean_ci
from treemdp.claims.statistics import spearman
from treemdp.devices import default_dtype
from treemdp.diagnostics import SIGNAL_ORIENTATION, exact_signals, gradient_ches, pair_changes
from treemdp.memory import DEFAULT_MEMORY_MB
from treemdp.objectives import Margins
from treemdp.optim import OPTIMIZERS
from treemdp.problem import ProblemSpec, build_problem
from treemdp.runs import run_folder
from treemdp.runs.cli import SEED_MAX, arg, nested, run, with_defaults_replaced
from treemdp.runs.experiment import cached_run
from treemdp.train import grid, implicit_margin, train
from treemdp.tree import Tree

TRUTHS = ("exact_mass_ood", "win_rate_change")
SETTING = ("capacity", "objective", "beta")


@dataclass(frozen=True)
class Config:
    objectives: tuple[str, ...] = arg(
        ("dpo", "ipo", "slic"), "objectives to train", choices=objectives.names()
    )
    beta: tuple[float, ...] = arg((0.01, 0.03, 0.1, 0.3), "β grid", exclusive_minimum=0)
    capacities: tuple[str, ...] = arg(
        ("loglinear", "mlp16", "mlp64"),
        "policy capacities: tabular, loglinear, mlpW or mlpWxL (width W, L layers)",
    )
    branching: int = arg(3, "actions per state b (action 0 ends the response)", minimum=2)
    max_length: int = arg(6, "longest response, in actions", minimum=1)
    problem: ProblemSpec = nested(
        ProblemSpec(reward="concave", pairs=32, sft_steps=100),
        flags=("features", "reward", "peak", "explained", "pairs", "sft_steps", "sft_lr"),
    )
    batch_size: int = arg(4, "pairs per optimiser step (must divide --pairs)", minimum=1)
    epochs: int = arg(4, "passes over the dataset", minimum=1)
    checkpoints: int = arg(16, "checkpoints per run, evenly spaced (plus step 0)", minimum=1)
    lr: float = arg(0.03, "learning rate", exclusive_minimum=0)
    optimizer: str = arg("adam", "optimiser", choices=OPTIMIZERS)
    seed: tuple[int, ...] = arg(
        tuple(range(40)),
        "seeds (each draws features, rewards and pairs); half select thresholds, half score",
        minimum=0,
        maximum=SEED_MAX,
    )
    margin: float = arg(
        0.02, "a run degrades when its last win rate is this far below its peak", minimum=0
    )
    n_resamples: int = arg(400, "bootstrap resamples of every interval", minimum=1)
    quick: bool = arg(False, "tiny config for tests and a first look (overrides the sizes)")
    memory_mb: int = arg(
        DEFAULT_MEMORY_MB, "memory budget in MiB (estimate, checked before allocating)", minimum=1
    )
    out: str = arg("results/diagnose_toy", "root folder for run folders")
    force: bool = arg(False, "recompute even if this config's results exist")


QUICK = {
    "beta": (0.03, 0.3),
    "capacities": ("loglinear", "mlp16"),
    "max_length": 4,
    "pairs": 8,
    "epochs": 2,
    "checkpoints": 4,
    "sft_steps": 20,
    "seed": (0, 1, 2, 3),
    "n_resamples": 20,
}
"""What ``--quick`` overrides (where the flag is left at its default)."""


def resolve(config: Config) -> Config:
    """The config that actually runs: ``--quick`` replaces the sizes left at their defaults."""
    if not config.quick:
        return config
    return with_defaults_replaced(config, QUICK)


def check(config: Config) -> None:
    """ValueError naming the flag, before anything runs."""
    if len(set(config.seed)) != len(config.seed):
        raise ValueError("--seed values must be distinct")
    if len(config.seed) < 4:
        raise ValueError(
            f"--seed needs at least 4 seeds (half select, half score); got {len(config.seed)}"
        )
    if config.problem.pairs % config.batch_size:
        raise ValueError(
            f"--batch-size {config.batch_size} must divide --pairs {config.problem.pairs} "
            "(an epoch is whole batches)"
        )
    if len(set(config.capacities)) != len(config.capacities):
        raise ValueError("--capacities must be distinct")
    kinds = {c: toy_scaling.parse_capacity(c) for c in config.capacities}
    toy_scaling.check_sizes(config, kinds)


def _capacity_rows(config: Config, tree: Tree, capacity: str, progress: bool):
    """Train one capacity's runs; return its signals table and its per-run CHES table."""
    kind = toy_scaling.parse_capacity(capacity)
    problems = build_problem(tree, config.seed, replace(config.problem, **kind))
    ches, ches_normalised = gradient_ches(problems.policy, problems.pairs, tree)  # (R0, P)
    problem, specs = grid(problems, config.objectives, config.beta, config.lr)
    steps_per_epoch = config.problem.pairs // config.batch_size
    steps = config.epochs * steps_per_epoch
    history = train(
        problem, specs, steps=steps, optimizer=config.optimizer, progress=progress,
        log_every=max(1, steps // config.checkpoints), batch_size=config.batch_size,
        record_responses=True,
    )  # fmt: skip
    logp, ref, pairs = history.response_logp, problem.ref_logp, problem.pairs
    T, R, _ = logp.shape
    lengths = tree.response_length.to(logp.dtype)
    len_c, len_r = lengths[pairs.chosen], lengths[pairs.rejected]
    dc, _ = pair_changes(logp, ref, pairs)  # (T, R, P)

    def margin(t: int) -> torch.Tensor:
        c, r = pairs.chosen, pairs.rejected
        m = Margins(
            logp[t].gather(-1, c), logp[t].gather(-1, r), ref.gather(-1, c), ref.gather(-1, r)
        )
        return implicit_margin(specs, m, len_c, len_r)

    margins = torch.stack([margin(t) for t in range(T)])
    signals = exact_signals(tree, logp, ref, pairs, margins)
    frame = history.frame  # T × R rows, step-major, in run order within a step
    # self-check: the signals' KL is the engine's own exact metric, row for row
    engine_kl = torch.tensor(frame["kl_reverse"].to_numpy()).reshape(T, R)
    if not torch.allclose(signals["kl"], engine_kl, rtol=1e-9, atol=1e-12):
        raise RuntimeError(f"capacity {capacity}: the signals' KL differs from the engine's")
    names = [f"{capacity}/{s.objective}/b{s.beta:g}" for s in specs]
    win = frame["win_rate"].to_numpy()
    table = pd.DataFrame({
        "seed": frame["seed"].to_numpy(), "run": [names[r] for r in frame["run"]],
        "capacity": capacity, "objective": frame["objective"].to_numpy(),
        "beta": frame["beta"].to_numpy(), "step": frame["step"].to_numpy(),
        "epochs": frame["step"].to_numpy() / steps_per_epoch,
        **{name: v.reshape(-1).numpy() for name, v in signals.items()},
        "exact_mass_ood": frame["mass_ood"].to_numpy(),
        "exact_win_rate": frame["win_rate"].to_numpy(),
        "win_rate_change": win - np.tile(win[:R], T),  # since the run's step 0 (π_ref: ½)
    })  # fmt: skip
    n0 = problems.n_runs
    rows = []
    for r in range(R):
        row = {"seed": int(problem.seeds[r]), "run": names[r], "capacity": capacity,
               "objective": specs[r].objective, "beta": specs[r].beta}  # fmt: skip
        for which, t in (("first", 1), ("last", T - 1)):
            for col, score in (("ches", ches), ("ches_normalised", ches_normalised)):
                row[f"{col}_{which}"] = spearman(score[r % n0].numpy(), (-dc[t, r]).numpy())
        rows.append(row)
    return table, pd.DataFrame(rows)


def compute(config: Config, progress: bool) -> dict[str, pd.DataFrame]:
    """Every table of the run folder."""
    with default_dtype(torch.float64):
        return _compute(config, progress)


def _compute(config: Config, progress: bool) -> dict[str, pd.DataFrame]:
    tree = Tree.with_stop(config.branching, config.max_length, max_bytes=config.memory_mb * 2**20)
    parts = [
        _capacity_rows(config, tree, c, progress)
        for c in tqdm(config.capacities, desc="capacities", disable=not progress)
    ]
    signals = pd.concat([p[0] for p in parts], ignore_index=True)
    tables = early_warning.analyse(
        signals, SIGNAL_ORIENTATION, TRUTHS, time="epochs", setting=SETTING,
        margin=config.margin, n_resamples=config.n_resamples,
    )  # fmt: skip
    return {
        "signals": signals, **tables,
        "ches": pd.concat([p[1] for p in parts], ignore_index=True),
    }  # fmt: skip


def output_folder(config: Config) -> Path:
    """The run folder of ``config`` (named by a hash of every field but --out and --force)."""
    return run_folder(
        config.out, resolve(config), prefix=f"P{config.problem.pairs}",
        ignore=("out", "force", "memory_mb"),
    )  # fmt: skip


def summary(tables: dict[str, pd.DataFrame]) -> str:
    """The printed summary: tracking, the detectors on held-out seeds, and CHES."""
    lines = [early_warning.report(tables)]
    ches = tables["ches"]
    for col in ("ches_first", "ches_normalised_first", "ches_last", "ches_normalised_last"):
        e = mean_ci(ches.groupby("seed")[col].mean().to_numpy())
        lines.append(f"{col}: Spearman with displacement {e.value:.3f} [{e.low:.3f}, "
                     f"{e.high:.3f}] over {e.n} seeds")  # fmt: skip
    return "\n".join(lines)


def main(config: Config) -> Path:
    """Run (or reuse) the truth check for ``config``; return its run folder."""
    config = resolve(config)
    check(config)
    folder = output_folder(config)
    start = time.perf_counter()
    progress = sys.stderr.isatty()
    names = ["signals", "tracking", "warning", "stopping", "selection", "ches"]
    with cached_run(folder, config, names, lambda: compute(config, progress),
                    force=config.force) as tables:  # fmt: skip
        print(summary(tables))
    degrading = early_warning.degradation(tables["signals"], config.margin, time="epochs")
    print(
        f"{len(degrading)} runs ({int(degrading['degrades'].sum())} degrade by >= "
        f"{config.margin:g}), {len(config.seed)} seeds, in {time.perf_counter() - start:.1f} s; "
        f"results in {folder}/ ({', '.join(f'{n}.csv' for n in names)})"
    )
    return folder


if __name__ == "__main__":
    run(Config, main, description=__doc__)
