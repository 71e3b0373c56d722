"""The confirm grid: does a GPT-NeoX move as the Tree-MDP toy predicts, quantity by quantity, over
seeds? (``experiments/llm_confirm.py`` runs one setting.)

    python experiments/llm_confirm.py --grid                    # the documented CPU grid
    python experiments/llm_confirm.py --grid --quick --out DIR  # a test-sized grid
    python experiments/confirm_grid.py ...                      # the same, without the dispatch

A cell is (regime, objective, β, lr, seed, size). Per cell:

* the toy's prediction for every capacity (``treemdp.capacity``: tabular, log-linear with each
  ``--toy-ks``, MLP with each ``--toy-widths``), all starting at the seed's log-linear SFT π_ref
  and trained exactly (one tensor program per capacity kind, over seeds, objectives and β); the
  toy does not depend on the LLM's lr or size, so it is computed once per (regime, seed,
  objective, β) and repeated in each cell's rows;
* the LLM's exact outcome: a GPT-NeoX of the size's shape SFT'd on samples of the same π_ref
  (one SFT per regime, size and seed, shared by the cell's lrs, objectives and β), then trained
  with the objective (``llm.confirm``), every checkpoint decoded on the tree and scored exactly.

Regimes: ``1pref`` (the toy's: one random pair, full batch, ``--steps`` steps; the toy runs
``--toy-steps``) and ``bt`` (the paper's data: a π_ref fitted to the responses of
``--bt-support`` random pairs, then ``--bt-pairs`` pairs drawn from samples of π_ref and labelled
by Bradley–Terry on the gold reward (``treemdp.data.sampled_bt_pairs``), ``--bt-epochs`` passes
of ``--bt-batch``-pair steps, checkpoints inside; toy and LLM see the same batches in the first
epoch). The LLM trains with RMSProp after ``--warmup-steps`` of linear warm-up (docs/llm.md: why).

The bridge (``treemdp.bridge``, issue 24) compares exact quantities, not labels: per setting
(regime, objective, β, lr, size) the toy's prediction against the LLM's seed mean, with the toy
capacity chosen on half of the seeds and scored on the other half, beside an objective-β
baseline, the LLM's split-half noise ceiling and the minimal detectable effect; one verdict per
quantity (yes / no / undecided). A side *degrades* when its OOD mass rises by at least
``--margin`` and its in-distribution mass ends at least ``--margin`` below its peak; that label
(and the win rate's rises-then-falls) is reported only beside its shuffled-checkpoint null and
with Cohen's κ. ``agreement.csv`` keeps the older raw agreement for comparison.

Writes <out>/grid-<hash>/: config.json; parts/ (one file per finished toy regime and LLM run: a
rerun, e.g. after a kill, skips them); trajectories.csv (every logged step of every side, with
its ``config`` id); bridge.csv (``treemdp.bridge.BRIDGE_COLUMNS``) and bridge_selection.csv (the
capacity chosen per quantity on the selection seeds, the seeds a target effect needs);
cells.csv (a row per cell and side); agreement.csv (per toy capacity and group: cells, agree,
rate, 95% Wilson interval); closest_toy.csv (per LLM run, the capacity with the closest
trajectory) and closest_toy_by_size.csv; agreement.png; timings.csv (wall seconds of the
stages this invocation computed); llm/ (the LLM runs' eval.csv and logs).
"""

from __future__ import annotations

import functools
import hashlib
import io
import math
import shutil
import time
from dataclasses import dataclass, fields, replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from figures.confirm_grid import plot_agreement
from llm.checkpoint import checkpoint_folders
from llm.confirm import DAARun, daa_llm, sft_llm
from llm.confirm_report import report_agreement, report_bridge, report_timings
from llm.evaluate import TreeTask
from llm.model import PYTHIA_SHAPES, check_shapes, load_model
from llm.sampling import tree_logprobs
from treemdp.agreement import (
    METRIC_COLUMNS,
    agreement,
    cells_table,
    closest_by_size,
    closest_toy,
    summarise,
)
from treemdp.bridge import bridge
from treemdp.capacity import capacity_batches, capacity_names
from treemdp.data import Pairs, sampled_bt_pairs
from treemdp.metrics import kl_divergence
from treemdp.problem import Problem, ProblemSpec, build_problem
from treemdp.runs import (
    atomic_write,
    config_dict,
    number_name,
    remove_temporaries,
    run_folder,
    run_lock,
    verify_file,
    write_checked,
    write_config,
    write_table,
)
from treemdp.runs.backends import BACKEND_FLAGS, Backend, map_cells
from treemdp.runs.cli import arg, check_device, check_distinct, nested, run
from treemdp.runs.identity import setting_hash
from treemdp.threads import thread_count, threads
from treemdp.train import grid
from treemdp.train import train as train_toy
from treemdp.tree import Tree

PAPER_OBJECTIVES = ("dpo", "ipo", "slic")
REGIMES = ("1pref", "bt")


@dataclass(frozen=True)
class Config:
    """The confirm grid: toy capacities vs GPT-NeoX sizes over objectives, β, lr, seeds."""

    objectives: tuple[str, ...] = arg(PAPER_OBJECTIVES, "objectives", choices=PAPER_OBJECTIVES)
    betas: tuple[float, ...] = arg((0.03, 0.1), "β values", exclusive_minimum=0)
    lrs: tuple[float, ...] = arg(
        (3e-3,), "LLM DAA learning rates (RMSProp, after warm-up)", exclusive_minimum=0
    )
    seeds: tuple[int, ...] = arg(
        tuple(range(8)), "seeds (problem: features, rewards, pairs; LLM); half select the toy"
    )
    sizes: tuple[str, ...] = arg(("tiny",), "Pythia shapes (random init), smallest first")
    regimes: tuple[str, ...] = arg(
        REGIMES,
        "pairs regimes (1pref; bt: many BT-labelled pairs of π_ref samples, minibatches)",
        choices=REGIMES,
    )
    branching: int = arg(3, "actions per state (b)", minimum=2)
    depth: int = arg(3, "tree depth (b^depth responses, all scored exactly)", minimum=1)
    features: int = arg(8, "feature dimension k of the log-linear π_ref", minimum=1)
    toy_ks: tuple[int, ...] = arg(
        (2, 4, 8, 16), "log-linear toy capacities (features k)", minimum=1
    )
    toy_widths: tuple[int, ...] = arg((4, 16, 64), "MLP toy capacities (hidden width)", minimum=1)
    toy_sft_steps: int = arg(300, "Adam steps of the toy's SFT reference fit", minimum=0)
    toy_steps: int = arg(2000, "toy steps in the 1pref regime (Adam, full batch)", minimum=1)
    toy_lr: float = arg(0.01, "toy learning rate (Adam)", exclusive_minimum=0)
    bt_support: int = arg(4, "bt: random pairs whose responses π_ref is fitted to", minimum=1)
    bt_pairs: int = arg(128, "bt: preference pairs sampled from π_ref", minimum=2)
    bt_batch: int = arg(8, "bt: pairs per step (toy and LLM)", minimum=1)
    bt_epochs: int = arg(4, "bt: passes over the pairs (toy and LLM)", minimum=1)
    bt_temperature: float = arg(1.0, "bt: Bradley–Terry temperature", exclusive_minimum=0)
    sft_samples: int = arg(256, "samples of π_ref the LLM is SFT'd on", minimum=1)
    sft_epochs: float = arg(4.0, "LLM SFT epochs", exclusive_minimum=0)
    sft_lr: float = arg(3e-3, "LLM SFT learning rate (RMSProp)", exclusive_minimum=0)
    sft_batch_size: int = arg(32, "LLM SFT batch size", minimum=1)
    steps: int = arg(100, "LLM DAA steps in the 1pref regime (full batch)", minimum=1)
    warmup_steps: int = arg(
        16, "LLM DAA linear warm-up steps (RMSProp's first steps move ~10x lr without)", minimum=0
    )
    checkpoints: int = arg(
        4,
        "LLM checkpoints per run, exactly this many (at most one a step), evenly spaced, the "
        "last at the run's end; the SFT model is evaluated too, as step 0",
        minimum=1,
    )
    eval_samples: int = arg(8, "samples per checkpoint for the sampled estimates", minimum=2)
    margin: float = arg(0.1, "mass change that counts as degradation", exclusive_minimum=0)
    resamples: int = arg(1000, "bootstrap resamples per bridge interval", minimum=0)
    target_effect: float = arg(
        0.5, "bridge: the effect (rank correlation above its bar, κ) to plan seeds for",
        exclusive_minimum=0,
    )  # fmt: skip
    device: str = arg("auto", "cpu, cuda, or auto")
    budget_s: float = arg(
        0.0,
        "start no LLM run after this many seconds (0: no limit); the "
        "tables then cover the finished runs; a rerun continues",
        minimum=0,
    )
    keep_checkpoints: bool = arg(
        False,
        "keep LLM checkpoint folders (else removed once a run "
        "is summarised: eval.csv and log.csv stay)",
    )
    quick: bool = arg(False, "test-sized grid (overrides the sizes left at their defaults)")
    out: str = arg("results/confirm_grid", "root folder for run folders")
    force: bool = arg(False, "recompute everything even if finished parts exist")
    progress: bool = arg(True, "show a progress bar over the LLM runs")
    run: Backend = nested(Backend(), flags=BACKEND_FLAGS)  # SFT groups as Ray tasks


QUICK = {
    "objectives": ("dpo", "ipo"),
    "betas": (0.1,),
    "lrs": (1e-3, 3e-3),
    "seeds": (0, 1, 2, 3),
    "sizes": ("tiny",),
    "regimes": ("1pref",),
    "toy_ks": (2, 8),
    "toy_widths": (8,),
    "toy_sft_steps": 100,
    "toy_steps": 300,
    "sft_samples": 128,
    "sft_epochs": 2.0,
    "steps": 24,
    "checkpoints": 3,
    "eval_samples": 4,
    "warmup_steps": 4,
    "resamples": 100,
}
"""What ``--quick`` overrides (where the flag is left at its default)."""

NOT_IN_HASH = (
    *("out", "force", "device", "progress", "budget_s", "keep_checkpoints", "quick"),
    *("resamples", "target_effect"),
    *BACKEND_FLAGS,
)
"""Fields that change no run: a rerun with other values reuses the folder's parts (the bridge's
``resamples`` and ``target_effect`` are recomputed from them)."""


def resolve(cfg: Config) -> Config:
    """The config that runs: ``--quick`` replaces the fields left at their defaults; checks."""
    if cfg.quick:
        defaults = {f.name: f.default for f in fields(Config)}
        cfg = replace(cfg, **{k: v for k, v in QUICK.items() if getattr(cfg, k) == defaults[k]})
    names = ("objectives", "betas", "lrs", "seeds", "sizes", "regimes", "toy_ks", "toy_widths")
    check_distinct(cfg, names)
    check_shapes(cfg.sizes)
    if cfg.branching**cfg.depth > 100_000:
        raise ValueError(f"--branching {cfg.branching} --depth {cfg.depth}: over 100,000 leaves")
    if "bt" in cfg.regimes and cfg.bt_pairs % min(cfg.bt_batch, cfg.bt_pairs):
        # the toy's last step would take the remainder, the LLM's a whole batch that wraps into
        # a second epoch: the same batches only when the epoch is whole batches
        raise ValueError(
            f"--bt-pairs {cfg.bt_pairs} is not a multiple of --bt-batch {cfg.bt_batch}: one "
            "epoch is --bt-pairs / --bt-batch full steps"
        )
    return cfg


# ------------------------------------------------------------------------------ problems
def _derived_seed(tag: str, seed: int) -> int:
    digest = hashlib.sha256(f"confirm-grid-{tag}-{seed}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def regime_problem(cfg: Config, tree: Tree, regime: str) -> Problem:
    """One problem per seed (R = |seeds|) with its log-linear SFT π_ref.

    1pref: one random pair, π_ref fitted to its two responses. bt: π_ref fitted to the
    responses of ``bt_support`` random pairs; the dataset is then ``bt_pairs`` pairs of π_ref's
    samples labelled by Bradley–Terry (``sampled_bt_pairs``, seeded from the seed)."""
    n = 1 if regime == "1pref" else cfg.bt_support
    problem = build_problem(
        tree,
        list(cfg.seeds),
        ProblemSpec(features=cfg.features, pairs=n, sft_steps=cfg.toy_sft_steps),
    )
    if regime == "1pref":
        return problem
    drawn = [
        sampled_bt_pairs(
            tree,
            problem.rewards[r],
            problem.ref_logp[r],
            cfg.bt_pairs,
            seed=_derived_seed("bt-pairs", s),
            temperature=cfg.bt_temperature,
        )
        for r, s in enumerate(cfg.seeds)
    ]
    pairs = Pairs(torch.stack([p.chosen for p in drawn]), torch.stack([p.rejected for p in drawn]))
    return replace(problem, pairs=pairs)


def _schedule(cfg: Config, regime: str, n_pairs: int, *, llm: bool) -> tuple[int, int | None]:
    """(steps, batch size or None for full batch) of a side in a regime."""
    if regime == "bt":
        return cfg.bt_epochs * math.ceil(n_pairs / min(cfg.bt_batch, n_pairs)), cfg.bt_batch
    return (cfg.steps if llm else cfg.toy_steps), None


# ------------------------------------------------------------------------------ the toy
def run_toy(cfg: Config, problem: Problem, regime: str) -> pd.DataFrame:
    """Exact trajectories of every toy capacity × objective × β × seed of one regime."""
    steps, batch = _schedule(cfg, regime, problem.pairs.n_pairs, llm=False)
    frames = []
    for capacity_problem, labels in capacity_batches(problem, ks=cfg.toy_ks, widths=cfg.toy_widths):
        runs, specs = grid(capacity_problem, cfg.objectives, cfg.betas, cfg.toy_lr)
        hist = train_toy(
            runs,
            specs,
            steps=steps,
            log_every=max(1, steps // 100),
            batch_size=batch,
            batch_seed=0,
        )
        f = hist.frame
        side = np.array(labels, dtype=object)[f["run"].to_numpy() % capacity_problem.n_runs]
        frames.append(
            pd.DataFrame(
                {
                    "regime": regime,
                    "objective": f["objective"],
                    "beta": f["beta"],
                    "lr": np.nan,
                    "seed": f["seed"],
                    "size": "",
                    "side": side,
                    "step": f["step"],
                    "fraction": f["step"] / steps,
                    **{m: f[m] for m in METRIC_COLUMNS},
                }
            )
        )
    return pd.concat(frames, ignore_index=True)


# ------------------------------------------------------------------------------ the LLM
@dataclass(frozen=True)
class LLMRun:
    """One LLM run of the plan (its folder and part file are named from it)."""

    regime: str
    size: str
    seed: int
    lr: float
    objective: str
    beta: float

    @property
    def name(self) -> str:
        return (
            f"{self.regime}-{self.size}-seed{self.seed}-lr{number_name(self.lr)}-"
            f"{self.objective}-beta{number_name(self.beta)}"
        )

    @property
    def sft_key(self) -> tuple[str, str, int]:
        return (self.regime, self.size, self.seed)


def plan(cfg: Config) -> list[LLMRun]:
    """Every LLM run, smallest size first, then regime, seed (one SFT), lr, objective, β."""
    return [
        LLMRun(regime, size, seed, lr, objective, beta)
        for size in cfg.sizes
        for regime in cfg.regimes
        for seed in cfg.seeds
        for lr in cfg.lrs
        for objective in cfg.objectives
        for beta in cfg.betas
    ]


def _sft_dir(folder: Path, key: tuple[str, str, int]) -> Path:
    regime, size, seed = key
    return folder / "llm" / f"sft-{regime}-{size}-seed{seed}"


def run_llm(
    cfg: Config,
    problem: Problem,
    r: int,
    item: LLMRun,
    sft: Path,
    folder: Path,
    device: str,
    kl_ref_sft: float,
) -> pd.DataFrame:
    """Train and evaluate one LLM run; its trajectory rows (exact metrics, sampled beside)."""
    task = TreeTask(
        problem.tree, problem.rewards[r], problem.pairs.chosen[r], problem.pairs.rejected[r]
    )
    _, batch = _schedule(cfg, item.regime, problem.pairs.n_pairs, llm=True)
    P = problem.pairs.n_pairs
    batch_size, epochs = (P, float(cfg.steps)) if batch is None else (batch, cfg.bt_epochs)
    spec = DAARun(
        item.objective, item.beta, lr=item.lr, batch_size=batch_size, epochs=epochs,
        checkpoints=cfg.checkpoints, seed=item.seed, size=item.size,
        eval_samples=cfg.eval_samples, data_seed=0, warmup_steps=cfg.warmup_steps,
    )  # fmt: skip
    frame = daa_llm(task, sft, spec, folder / "llm" / item.name, device=device, progress=False)
    out = pd.DataFrame(
        {
            "regime": item.regime,
            "objective": item.objective,
            "beta": item.beta,
            "lr": item.lr,
            "seed": item.seed,
            "size": item.size,
            "side": "llm",
            "step": frame["step"],
            "fraction": frame["fraction"],
            **{m: frame[f"exact_{m}"] for m in METRIC_COLUMNS},
        }
    )
    out["kl_reverse_sampled"] = frame["kl_reverse"]
    out["ood_fraction_sampled"] = frame["ood_fraction"]
    out["off_tree"] = frame["exact_off_tree"]
    out["kl_ref_sft"] = kl_ref_sft
    return out


def _sft_report(problem: Problem, r: int, sft: Path, device: str) -> float:
    """KL(toy π_ref ‖ the LLM's SFT model decoded on the tree), exact."""
    model = load_model(sft).to(device)
    logp = tree_logprobs(model, problem.tree)[None].to(problem.ref_logp.dtype).cpu()
    return float(kl_divergence(problem.tree, problem.ref_logp[r : r + 1], logp)[0])


def _largest_op(size: str) -> int:
    """Entries of the largest per-step tensor of a shape's training step on the tree language
    (a weight gradient: hidden × 4·hidden); decides its CPU thread count."""
    hidden = PYTHIA_SHAPES[size].hidden_size
    return 4 * hidden * hidden


def _drop_checkpoints(run_dir: Path) -> None:
    for step in checkpoint_folders(run_dir):
        shutil.rmtree(step, ignore_errors=True)


# ------------------------------------------------------------------------------ parts
def _write_part(path: Path, frame: pd.DataFrame) -> None:
    buf = io.BytesIO()
    frame.to_pickle(buf)
    write_checked(path, buf.getvalue())


def _read_part(path: Path) -> pd.DataFrame:
    return pd.read_pickle(io.BytesIO(verify_file(path)))


# ------------------------------------------------------------------------------ main
def _since(t0: float) -> float:
    return round(time.perf_counter() - t0, 2)


def _device(name: str) -> str:
    """The device of ``--device`` (ValueError naming the flag for one torch cannot use)."""
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    check_device(name)
    return name


def output_folder(cfg: Config) -> Path:
    """The run folder of the resolved config."""
    return run_folder(cfg.out, resolve(cfg), prefix="grid", ignore=NOT_IN_HASH)


def run_grid(
    cfg: Config, folder: Path, device: str, start: float, timings: list[dict]
) -> tuple[pd.DataFrame, int]:
    """Every unfinished part (toy per regime, then the LLM runs in plan order); returns the
    merged trajectories of the finished parts and the number of LLM runs left undone. Appends
    to ``timings`` the wall seconds of each stage computed by this call."""
    tree = Tree.complete(cfg.branching, cfg.depth)
    parts = folder / "parts"
    if parts.exists():
        remove_temporaries(parts)  # left by a killed write; never a part
    problems = {regime: regime_problem(cfg, tree, regime) for regime in cfg.regimes}
    frames = []
    for regime in cfg.regimes:
        path = parts / f"toy-{regime}.pkl"
        if not path.exists():
            t0 = time.perf_counter()
            _write_part(path, run_toy(cfg, problems[regime], regime))
            timings.append({"stage": f"toy {regime}", "size": "", "seconds": _since(t0)})
        frames.append(_read_part(path))
    runs = plan(cfg)
    remaining: dict[tuple, int] = {}
    for item in runs:
        if not (parts / f"llm-{item.name}.pkl").exists():
            remaining[item.sft_key] = remaining.get(item.sft_key, 0) + 1
    if cfg.run.backend != "serial":  # every missing part at once; the loop below reads them
        fan_out_llm(cfg, folder, problems, [i for i in runs if remaining.get(i.sft_key)], timings)
    sft_done: dict[tuple, tuple[Path, float]] = {}
    skipped = 0
    bar = tqdm(runs, desc="LLM runs", unit="run", disable=not cfg.progress)
    for item in bar:
        path = parts / f"llm-{item.name}.pkl"
        run_dir = folder / "llm" / item.name
        if not path.exists():
            if cfg.budget_s and time.perf_counter() - start > cfg.budget_s:
                skipped += 1
                continue
            bar.set_postfix_str(item.name)
            problem, r = problems[item.regime], cfg.seeds.index(item.seed)
            # a small model on a CPU runs on one intra-op thread: two that wait on each other
            # on a busy machine made a 14m run ~5x slower (measured)
            n = thread_count(_largest_op(item.size)) if device == "cpu" else None
            with threads(n or torch.get_num_threads()):
                if item.sft_key not in sft_done:
                    t0 = time.perf_counter()
                    sft = sft_llm(
                        problem, _sft_dir(folder, item.sft_key), model=item.size,
                        seed=item.seed, samples=cfg.sft_samples, epochs=cfg.sft_epochs,
                        lr=cfg.sft_lr, batch_size=cfg.sft_batch_size, device=device,
                        progress=False, run=r,
                    )  # fmt: skip
                    sft_done[item.sft_key] = (sft, _sft_report(problem, r, sft, device))
                    stage = f"sft {item.regime} seed {item.seed}"
                    timings.append({"stage": stage, "size": item.size, "seconds": _since(t0)})
                sft, kl = sft_done[item.sft_key]
                t0 = time.perf_counter()
                _write_part(path, run_llm(cfg, problem, r, item, sft, folder, device, kl))
                timings.append({"stage": item.name, "size": item.size, "seconds": _since(t0)})
            remaining[item.sft_key] -= 1
        if not cfg.keep_checkpoints:
            _drop_checkpoints(run_dir)
            if remaining.get(item.sft_key, 0) == 0:
                _drop_checkpoints(_sft_dir(folder, item.sft_key))
        frames.append(_read_part(path))
    bar.close()
    return pd.concat(frames, ignore_index=True), skipped


def _llm_group(cfg: Config, folder: Path, cell: tuple[Problem, list[LLMRun]]) -> list:
    """A cell of ``fan_out_llm``: one SFT (regime, size, seed) and its unfinished runs, as the
    serial loop of ``run_grid`` does them; (part path, part bytes, timing rows) per run."""
    problem, items = cell
    first = items[0]
    device, r = _device(cfg.device), cfg.seeds.index(first.seed)
    n = thread_count(_largest_op(first.size)) if device == "cpu" else None
    out, timings = [], []
    with threads(n or torch.get_num_threads()):
        t0 = time.perf_counter()
        sft = sft_llm(
            problem, _sft_dir(folder, first.sft_key), model=first.size, seed=first.seed,
            samples=cfg.sft_samples, epochs=cfg.sft_epochs, lr=cfg.sft_lr,
            batch_size=cfg.sft_batch_size, device=device, progress=False, run=r,
        )  # fmt: skip
        kl = _sft_report(problem, r, sft, device)
        stage = f"sft {first.regime} seed {first.seed}"
        timings.append({"stage": stage, "size": first.size, "seconds": _since(t0)})
        for item in items:
            t0 = time.perf_counter()
            buf = io.BytesIO()
            run_llm(cfg, problem, r, item, sft, folder, device, kl).to_pickle(buf)
            timing = {"stage": item.name, "size": item.size, "seconds": _since(t0)}
            out.append((folder / "parts" / f"llm-{item.name}.pkl", buf.getvalue(), [timing]))
    out[0][2][:0] = timings
    return out


def fan_out_llm(
    cfg: Config, folder: Path, problems: dict[str, Problem], items: list[LLMRun], timings: list
) -> None:
    """With ``--backend ray``: the unfinished LLM runs, one Ray task per SFT group (reserving
    ``--cell-cpus`` and ``--cell-gpus``); the driver writes each part as its group finishes."""
    groups: dict[tuple, list[LLMRun]] = {}
    for item in items:
        groups.setdefault(item.sft_key, []).append(item)
    cells = [(problems[key[0]], group) for key, group in groups.items()]
    for _, parts in map_cells(functools.partial(_llm_group, cfg, folder), cells, cfg.run):
        for path, data, rows in parts:
            write_checked(path, data)
            timings.extend(rows)


def main(cfg: Config) -> Path:
    """Run (or resume) the grid; write the tables and the figure; print the summary."""
    start = time.perf_counter()
    cfg = resolve(cfg)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    device = _device(cfg.device)
    folder = output_folder(cfg)
    with run_lock(folder):
        if cfg.force:
            for sub in ("parts", "llm"):
                shutil.rmtree(folder / sub, ignore_errors=True)
        write_config(folder, cfg)
        timings: list[dict] = []
        trajectories, skipped = run_grid(cfg, folder, device, start, timings)
        trajectories["config"] = config_id(cfg)
        if not trajectories["side"].eq("llm").any():
            raise ValueError(
                f"--budget-s {cfg.budget_s:g}: reached before the first LLM run, so there is "
                "nothing to compare (the toy parts are saved); rerun with a larger --budget-s "
                "(0: no limit) to continue"
            )
        write_table(folder / "trajectories.csv", trajectories)
        cells = cells_table(summarise(trajectories, cfg.margin))
        agree = agreement(cells)
        closest = closest_toy(trajectories)
        capacities = capacity_names(cfg.toy_ks, cfg.toy_widths)
        by_size = closest_by_size(closest, capacities)
        write_table(folder / "cells.csv", cells)
        write_table(folder / "agreement.csv", agree)
        write_table(folder / "closest_toy.csv", closest)
        write_table(folder / "closest_toy_by_size.csv", by_size)
        plot_agreement(agree, by_size, folder / "agreement.png")
        t0 = time.perf_counter()
        bridge_table, selection = bridge(
            trajectories, capacities, margin=cfg.margin, n_resamples=cfg.resamples,
            target_effect=cfg.target_effect,
        )  # fmt: skip
        timings.append({"stage": "bridge", "size": "", "seconds": _since(t0)})
        write_table(folder / "bridge.csv", bridge_table)
        write_table(folder / "bridge_selection.csv", selection)
        # wall seconds of what this invocation computed (not part of the results: a resumed
        # run times only what it redid)
        timing = pd.DataFrame(timings, columns=["stage", "size", "seconds"])
        atomic_write(folder / "timings.csv", lambda p: timing.to_csv(p, index=False))
    report_timings(timing)
    report_agreement(
        agree, by_size, closest, skipped=skipped, budget_s=cfg.budget_s, folder=folder,
        seconds=time.perf_counter() - start,
    )  # fmt: skip
    report_bridge(bridge_table, selection, target_effect=cfg.target_effect)
    return folder


def config_id(cfg: Config) -> str:
    """The grid's configuration without its seeds (and without what does not change results):
    the identity the bridge pools seeds under (``treemdp.bridge.check_poolable``), computed by
    the project's one run-identity function (``treemdp.runs.identity.setting_hash``)."""
    settings = config_dict(cfg)
    for name in NOT_IN_HASH:
        settings.pop(name, None)
    return setting_hash(settings)


if __name__ == "__main__":
    run(Config, main, description=__doc__)
