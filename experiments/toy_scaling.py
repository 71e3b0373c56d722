"""Over-optimization curves and scaling laws on the Tree MDP, with model capacity.

The toy version of Rafailov et al. (2024), Figure 1: DPO, IPO and SLiC over a β grid, for a
tabular policy and tanh networks of several widths (``treemdp.networks.MLP``: "model size"), on a
tree whose responses differ in length (action 0 ends a response: ``Tree.with_stop``), trained with
minibatches over a finite preference dataset (default: one epoch), with exact metrics at every
checkpoint. The gold reward is Goodhart-shaped by default ("concave": more of a good direction in
feature space helps, then hurts; ``treemdp.rewards``). The scaling forms of Gao et al. (2022) are
fitted to the win-rate gain over the reference, against d = √KL, per (objective, capacity), on the
final checkpoints and on all checkpoints.

    python experiments/toy_scaling.py            # default config (about 20 s on 2 cores)
    python experiments/toy_scaling.py --quick    # tiny config (seconds)

writes results/toy_scaling/<run>/{config.json, metrics.csv, fits.csv, win_vs_d_final.png,
win_vs_d_all.png} and prints a summary per (objective, capacity). See docs/toy_scaling.md.
"""

from __future__ import annotations

import math
import re
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from figures import quicklook
from treemdp import objectives, scaling
from treemdp.devices import PRECISIONS, default_dtype, resolve_device
from treemdp.memory import DEFAULT_MEMORY_MB, check_batch, with_stop_size
from treemdp.metrics import logratio_length_r2
from treemdp.optim import OPTIMIZERS
from treemdp.problem import ProblemSpec, build_problem
from treemdp.runs import run_folder
from treemdp.runs.cli import SEED_MAX, arg, nested, run, with_defaults_replaced
from treemdp.runs.experiment import cached_run
from treemdp.train import TrainingDivergedError, grid, train
from treemdp.tree import Tree


@dataclass(frozen=True)
class Config:
    objectives: tuple[str, ...] = arg(
        ("dpo", "ipo", "slic"),
        "objectives to train (any registry name, e.g. rdpo for the length-regularised DPO)",
        choices=objectives.names(),
    )
    beta: tuple[float, ...] = arg((0.01, 0.03, 0.1, 0.3, 1.0), "β grid", exclusive_minimum=0)
    capacities: tuple[str, ...] = arg(
        ("tabular", "mlp4", "mlp16", "mlp64"),
        "policy capacities, small to large: tabular, loglinear, mlpW or mlpWxL (width W, L layers)",
    )
    branching: int = arg(3, "actions per state b (action 0 ends the response)", minimum=2)
    max_length: int = arg(5, "longest response, in actions", minimum=1)
    problem: ProblemSpec = nested(
        ProblemSpec(reward="concave", pairs=512, sft_steps=100),
        flags=("features", "reward", "peak", "explained", "pairs", "sft_steps", "sft_lr"),
    )
    batch_size: int = arg(4, "pairs per optimiser step", minimum=1)
    epochs: float = arg(1.0, "passes over the dataset", exclusive_minimum=0)
    checkpoints: int = arg(16, "checkpoints per run, evenly spaced (plus step 0)", minimum=1)
    lr: float = arg(0.03, "learning rate", exclusive_minimum=0)
    rdpo_alpha: float = arg(0.01, "α of rdpo's length term (registry default 0.01)", minimum=0)
    optimizer: str = arg("adam", "optimiser", choices=OPTIMIZERS)
    seed: tuple[int, ...] = arg(
        (0, 1, 2),
        "seeds (each draws features, rewards and pairs)",
        minimum=0,
        maximum=SEED_MAX,
    )
    n_resamples: int = arg(200, "bootstrap resamples per fit (0: no intervals)", minimum=0)
    quick: bool = arg(False, "tiny config for tests and a first look (overrides the sizes)")
    memory_mb: int = arg(
        DEFAULT_MEMORY_MB, "memory budget in MiB (estimate, checked before allocating)", minimum=1
    )
    device: str = arg("cpu", "where the runs train: cpu, cuda, cuda:N or auto (cuda if present)")
    precision: str = arg(
        "float64", "float64, or float32 (checked against float64 on a sample)", choices=PRECISIONS
    )
    out: str = arg("results/toy_scaling", "root folder for run folders")
    force: bool = arg(False, "recompute even if this config's results exist")


QUICK = {
    "beta": (0.03, 0.3),
    "capacities": ("tabular", "mlp4"),
    "max_length": 3,
    "pairs": 16,
    "batch_size": 4,
    "checkpoints": 4,
    "sft_steps": 20,
    "seed": (0, 1),
    "n_resamples": 20,
}
"""What ``--quick`` overrides (where the flag is left at its default)."""

FIT_FORMS = ("rl", "bon", "quadratic_kl")


def resolve(config: Config) -> Config:
    """The config that actually runs: ``--quick`` replaces the sizes left at their defaults."""
    if not config.quick:
        return config
    return with_defaults_replaced(config, QUICK)


def parse_capacity(name: str) -> dict[str, object]:
    """The ``ProblemSpec`` fields of a capacity name: tabular, loglinear, mlpW or mlpWxL."""
    if name in ("tabular", "loglinear"):
        return {"policy": name}
    match = re.fullmatch(r"mlp(\d+)(?:x(\d+))?", name)
    if match is None or int(match.group(1)) < 1 or int(match.group(2) or 1) < 1:
        raise ValueError(
            f"--capacities: {name!r} is not tabular, loglinear, mlpW or mlpWxL (W, L >= 1)"
        )
    return {"policy": "mlp", "width": int(match.group(1)), "layers": int(match.group(2) or 1)}


def check_sizes(config: Config, kinds: dict[str, dict[str, object]]) -> None:
    """Refuse (ValueError naming the flag) a tree or a capacity whose batch of runs would not fit
    in --memory-mb, before anything is allocated (capacities train one after another)."""
    size = with_stop_size(config.branching, config.max_length)
    n_runs = len(config.objectives) * len(config.beta) * len(config.seed)
    for capacity, kind in kinds.items():
        check_batch(
            size, branching=config.branching, n_runs=n_runs, policy=str(kind["policy"]),
            features=config.problem.features, memory_mb=config.memory_mb,
            width=int(kind.get("width", 0)), layers=int(kind.get("layers", 1)),
            what=f"--capacities {capacity} with --branching {config.branching} --max-length "
            f"{config.max_length} ({size[1]:,} responses) and {n_runs} runs",
        )  # fmt: skip


def length_metrics(tree: Tree, ref_logp: torch.Tensor):
    """An ``extra_metrics`` hook: E_π[response length] per run (averaged over prompts) and
    ``length_r2``, the R² of the π-weighted regression of log π/π_ref on length
    (``treemdp.metrics.logratio_length_r2``; NaN at step 0, where π = π_ref)."""
    length = tree.response_length.to(torch.float64)

    def hook(logp: torch.Tensor) -> dict[str, torch.Tensor]:
        return {
            "length": (torch.exp(logp) * length).sum(-1) / tree.n_prompts,
            "length_r2": logratio_length_r2(tree, logp, ref_logp),
        }

    return hook


def run_experiment(config: Config) -> pd.DataFrame:
    """Train every (capacity, objective, β, seed) run; return the tidy checkpoint table."""
    if len(set(config.seed)) != len(config.seed):
        raise ValueError("--seed values must be distinct")
    if len(set(config.capacities)) != len(config.capacities):
        raise ValueError("--capacities must be distinct")
    if not config.problem.explained <= 1:
        raise ValueError(f"--explained must lie in [0, 1]; got {config.problem.explained}")
    kinds = {c: parse_capacity(c) for c in config.capacities}
    check_sizes(config, kinds)
    tree = Tree.with_stop(config.branching, config.max_length, max_bytes=config.memory_mb * 2**20)
    pairs = config.problem.pairs
    steps_per_epoch = math.ceil(pairs / min(config.batch_size, pairs))
    steps = max(1, math.ceil(config.epochs * steps_per_epoch))
    log_every = max(1, steps // config.checkpoints)
    hyper = {"rdpo": (("alpha", config.rdpo_alpha),)}  # the only objective with a toy knob
    frames = []
    interactive = sys.stderr.isatty()
    for capacity in tqdm(config.capacities, desc="capacities", disable=not interactive):
        problems = build_problem(tree, config.seed, replace(config.problem, **kinds[capacity]))
        problem, specs = grid(problems, config.objectives, config.beta, config.lr)
        specs = [replace(spec, hyper=hyper.get(spec.objective, ())) for spec in specs]
        try:
            history = train(
                problem,
                specs,
                device=config.device,
                precision=config.precision,
                steps=steps,
                optimizer=config.optimizer,
                log_every=log_every,
                progress=interactive,
                batch_size=config.batch_size,
                extra_metrics=length_metrics(tree, problem.ref_logp),
            )
        except TrainingDivergedError as e:  # keep the finished capacities in the partial table
            partial = e.history.frame
            if not partial.empty:
                partial.insert(0, "capacity", capacity)
            e.history.frame = pd.concat([*frames, partial], ignore_index=True)
            e.args = (f"capacity {capacity}: {e}",)
            raise
        frame = history.frame
        frame.insert(0, "capacity", capacity)
        frame.insert(1, "n_params", math.prod(problem.policy.family.param_shape()))
        frames.append(frame)
    table = pd.concat(frames, ignore_index=True)
    table.insert(table.columns.get_loc("kl_forward") + 1, "d", np.sqrt(table["kl_reverse"]))
    table.insert(table.columns.get_loc("d") + 1, "d_forward", np.sqrt(table["kl_forward"]))
    return table


def fit_all(table: pd.DataFrame, *, n_resamples: int) -> pd.DataFrame:
    """Scaling-law fits per (objective, capacity, checkpoints, KL direction), one row per form.

    y is the win-rate gain over the reference, win_rate − ½: at step 0 the policy is π_ref and its
    win rate against itself is exactly ½, so this is ``gain_over_initial`` without spending a
    point. Groups for the bootstrap are runs (a run's checkpoints are one trajectory).
    """
    table = table.assign(
        gain=table["win_rate"] - 0.5, group=table["capacity"] + "/" + table["run"].astype(str)
    )
    last = table.groupby("group")["step"].transform("max")
    subsets = {"final": table[table["step"] == last], "all": table}
    rows = []
    for (objective, capacity), _ in table.groupby(["objective", "capacity"], sort=False):
        for which, sub in subsets.items():
            data = sub[(sub["objective"] == objective) & (sub["capacity"] == capacity)]
            for kl, d_col in (("reverse", "d"), ("forward", "d_forward")):
                key = {"objective": objective, "capacity": capacity, "checkpoints": which, "kl": kl}
                try:
                    fits = scaling.fit_table(
                        data,
                        d=d_col,
                        y="gain",
                        group="group",
                        forms=FIT_FORMS,
                        n_resamples=n_resamples,
                        seed=0,
                    )
                except ValueError as e:  # too few points or a degenerate design: say so
                    fits = pd.DataFrame({"form": FIT_FORMS, "note": str(e)})
                for k, v in reversed(key.items()):
                    fits.insert(0, k, v)
                rows.append(fits)
    fits = pd.concat(rows, ignore_index=True)
    rmse = fits.pivot_table(
        index=["objective", "capacity", "checkpoints", "kl"], columns="form", values="rmse"
    )
    ratio = (rmse["rl"] / rmse["quadratic_kl"]).rename("rmse_rl_over_quadratic").reset_index()
    return fits.merge(ratio, on=["objective", "capacity", "checkpoints", "kl"], how="left")


def summarise(table: pd.DataFrame, fits: pd.DataFrame) -> pd.DataFrame:
    """Per (objective, capacity): final and peak win rate, the drop from peak to final, KL,
    length, and the ``rl`` fit on all checkpoints (d*, RMSE ratio to the quadratic-in-KL fit)."""
    runs = table.groupby(["objective", "capacity", "run"], sort=False)
    per_run = pd.DataFrame(
        {
            "win_final": runs["win_rate"].last(),
            "win_peak": runs["win_rate"].max(),
            "kl_final": runs["kl_reverse"].last(),
            "length_final": runs["length"].last(),
        }
    )
    per_run["drop"] = per_run["win_peak"] - per_run["win_final"]
    per_run["falls"] = per_run["drop"] > 0.02
    out = per_run.groupby(["objective", "capacity"], sort=False).mean()
    # The paper's hump over final checkpoints: across β, is the run that went furthest (largest
    # final d) worse by > 0.02 than the best β? Share of seeds where it is.
    last = table.groupby(["capacity", "run"])["step"].transform("max")
    finals = table[table["step"] == last]

    def hump(g: pd.DataFrame) -> bool:
        return bool(g["win_rate"].max() - g.loc[g["d"].idxmax(), "win_rate"] > 0.02)

    humps = finals.groupby(["objective", "capacity", "seed"], sort=False)[["win_rate", "d"]]
    out["hump_final"] = humps.apply(hump).groupby(["objective", "capacity"], sort=False).mean()
    rl = fits[(fits["form"] == "rl") & (fits["checkpoints"] == "all") & (fits["kl"] == "reverse")]
    rl = rl.set_index(["objective", "capacity"])
    # d* far beyond the data (α/β large) is "no peak in sight": shown as inf
    d_max = table.groupby(["objective", "capacity"], sort=False)["d"].max()
    out["d_star_rl"] = rl["peak_d"].where(~(rl["peak_d"] > 10 * d_max), np.inf)
    out["rmse_rl/quad"] = rl["rmse_rl_over_quadratic"]
    return out


def output_folder(config: Config) -> Path:
    """The run folder of ``config`` (named by a hash of every field but --out and --force)."""
    config = resolve(config)
    return run_folder(
        config.out,
        config,
        prefix=f"{config.problem.reward}-P{config.problem.pairs}",
        ignore=("out", "force", "memory_mb", "device"),
    )


def main(config: Config) -> Path:
    """Run (or reuse) the experiment for ``config``; return its run folder."""
    config = resolve(config)
    resolve_device(config.device)  # a device this torch cannot use: one line, nothing written
    for c in config.capacities:
        parse_capacity(c)
    folder = output_folder(config)
    start = time.perf_counter()

    def compute() -> dict[str, pd.DataFrame]:
        with default_dtype(torch.float64):
            table = run_experiment(config)
            return {"metrics": table, "fits": fit_all(table, n_resamples=config.n_resamples)}

    names = ["fits", "metrics"]
    with cached_run(
        folder, config, names, compute, force=config.force, diverged="metrics"
    ) as tables:
        table, fits = tables["metrics"], tables["fits"]
        for which in ("final", "all"):
            png = folder / f"win_vs_d_{which}.png"
            if config.force or not png.exists():  # a reused folder keeps its quick look
                quicklook.win_vs_d(table, fits, which, png)
    summary = summarise(table, fits)
    n_runs = table.groupby(["capacity", "run"]).ngroups
    print(
        f"means over β and {len(config.seed)} seeds. drop: peak − final win rate of a run; "
        "falls: share of runs with drop > 0.02;\nhump_final: share of seeds whose largest-d "
        "final checkpoint is > 0.02 below the best β's; d_star_rl (inf: beyond 10× the largest "
        "d)\nand rmse_rl/quad: rl fit on all checkpoints, reverse KL:"
    )
    print(summary.to_string(float_format=lambda x: f"{x:.3f}"))
    print(
        f"{n_runs} runs in {time.perf_counter() - start:.1f} s; results in {folder}/ "
        "(config.json, metrics.csv, fits.csv, win_vs_d_{final,all}.png)"
    )
    return folder


if __name__ == "__main__":
    run(Config, main, description=__doc__)
