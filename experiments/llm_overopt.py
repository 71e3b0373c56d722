"""LLM over-optimization in the paper's regime, on a tree language whose every response is scored
exactly: does the gold win rate of a GPT-NeoX rise then fall inside one epoch of DPO, IPO, SLiC
and R-DPO, and how does that change with β and model size?

The problem (``treemdp``): a tree with a stop action (``Tree.with_stop``: action ``a0`` ends a
response early, so responses have lengths 1 … ``--max-length`` and R-DPO's length term means
something), a gold reward (``--reward``, e.g. the Goodhart-shaped ``concave``), a log-linear π_ref
fitted to the responses of ``--support`` random pairs (``ProblemSpec``), and the preference
dataset: ``--pairs`` pairs of π_ref's samples labelled by Bradley–Terry on the gold reward
(``treemdp.data.sampled_bt_pairs``, as the confirm grid's ``bt`` regime).

The LLM (``llm.confirm``): per model size (a Pythia shape, random initialisation; the size is
recorded as ``size`` in every run's ``config.json``), one SFT on samples of π_ref, reused by
every objective and β; then ONE epoch of ``--batch``-pair steps per objective and β from the SFT
model (its frozen copy the reference), with ``--checkpoints`` checkpoints inside the epoch, each
evaluated exactly (every leaf, one forward per depth) and by samples into the run's ``eval.csv``
(``llm.eval_run``, schema ``treemdp.runs.eval_table``). ``--no-keep-weights`` evaluates each
checkpoint in memory at its step and writes no weights (a 6.9b checkpoint with its RMSProp state
is ~56 GB; the GPU machine has 64 GB of disk): the same rows but for the checkpoint's path and
digest.

    python experiments/llm_overopt.py                               # CPU: tiny model
    python experiments/llm_overopt.py --sizes tiny 14m 31m --betas 0.1 0.3
    python experiments/llm_overopt.py --sizes 1b --device cuda --no-keep-weights \
        --reference-dtype fp16
    python experiments/llm_overopt.py --sizes 6.9b --device cuda --no-keep-weights \
        --precision bf16-weights --reference-dtype bf16     # 6.9b on an 80 GB card

writes results/llm_overopt/<run>/{config.json, runs.csv (every checkpoint of every run),
summary.csv (per size, objective and β: exact gold win rate at the start, peak and end of the
epoch, and whether it rises then falls), llm/{sft-<size>, <size>-<objective>-beta<β>/eval.csv}}.
"""

from __future__ import annotations

import gc
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch

from llm.checkpoint import LATEST, checkpoint_folders
from llm.confirm import DAARun, daa_llm, sft_llm
from llm.evaluate import TreeTask
from llm.model import DTYPES, PYTHIA_SHAPES, check_shapes, load_model
from llm.precision import PRECISIONS
from llm.sampling import tree_logprobs
from treemdp.data import Pairs, sampled_bt_pairs
from treemdp.metrics import kl_divergence
from treemdp.objectives import REGISTRY
from treemdp.problem import Problem, ProblemSpec, build_problem
from treemdp.runs import number_name, run_folder
from treemdp.runs.backends import run_seeds
from treemdp.runs.cli import arg, check_device, check_distinct, nested
from treemdp.runs.experiment import cached_run
from treemdp.threads import threads_for
from treemdp.tree import Tree

OBJECTIVES = ("dpo", "ipo", "slic", "rdpo")
RUNS_COLUMNS = (
    "size", "objective", "beta", "checkpoint", "fraction_of_epoch", "exact_win_rate",
    "exact_kl_reverse", "exact_kl_forward", "exact_mass_ood", "win_rate", "win_rate_se",
    "kl_reverse", "kl_reverse_se", "kl_forward", "length_mean", "reward_accuracy", "loss",
)  # fmt: skip
"""The columns of ``runs.csv`` (from each run's eval.csv)."""


@dataclass(frozen=True)
class Config:
    """The paper's over-optimization regime on a tree language, for GPT-NeoX model sizes."""

    branching: int = arg(4, "actions per state (a0 stops the response)", minimum=2)
    max_length: int = arg(5, "longest response in tokens (Tree.with_stop)", minimum=1)
    prompts: int = arg(1, "prompts (trees side by side)", minimum=1)
    problem: ProblemSpec = nested(
        ProblemSpec(reward="concave", pairs=4, sft_steps=300),
        flags={
            "reward": "reward", "peak": "peak", "explained": "explained",
            "features": "features", "support": "pairs", "toy_sft_steps": "sft_steps",
        },
        help={"support": "random pairs whose responses π_ref is fitted to (its support; the "
              "preference data is --pairs)"},
    )  # fmt: skip
    seed: int = arg(0, "seed of the problem (features, gold reward, π_ref), the pairs and the LLM")
    pairs: int = arg(
        512, "preference pairs sampled from π_ref and labelled by Bradley–Terry", minimum=2
    )
    bt_temperature: float = arg(1.0, "Bradley–Terry temperature", exclusive_minimum=0)
    batch: int = arg(
        8, "pairs per step (one epoch: pairs / batch steps; --pairs must be a multiple)", minimum=1
    )
    checkpoints: int = arg(
        10,
        "checkpoints inside the epoch, exactly this many, evenly spaced, the last at the "
        "epoch's end (steps ⌈i·steps/K⌉, i = 1…K); the SFT model is evaluated too, as step 0",
        minimum=1,
    )
    objectives: tuple[str, ...] = arg(OBJECTIVES, "objectives", choices=tuple(REGISTRY))
    betas: tuple[float, ...] = arg((0.03, 0.1, 0.3), "β values", exclusive_minimum=0)
    rdpo_alpha: float = arg(0.3, "R-DPO's length coefficient α (the toy's: 0.01 ≈ DPO here)")
    sizes: tuple[str, ...] = arg(("tiny",), "Pythia shapes (random init), smallest first")
    sft_samples: int = arg(1024, "samples of π_ref each size is SFT'd on", minimum=1)
    sft_epochs: float = arg(2.0, "SFT epochs", exclusive_minimum=0)
    sft_lr: float = arg(3e-3, "SFT learning rate (RMSProp)", exclusive_minimum=0)
    sft_batch_size: int = arg(32, "SFT batch size", minimum=1)
    lr: float = arg(1e-3, "DAA learning rate (RMSProp)", exclusive_minimum=0)
    eval_samples: int = arg(64, "samples per checkpoint for the sampled estimates", minimum=2)
    eval_pairs: int = arg(
        64, "held-out Bradley–Terry pairs of π_ref's samples (accuracy, loss)", minimum=1
    )
    margin: float = arg(0.02, "win-rate rise and fall that count as 'rises then falls'", minimum=0)
    keep_weights: bool = arg(
        True, "keep checkpoint weights (no: evaluate each in memory, write no weights)"
    )
    reference_dtype: str = arg("fp32", "the frozen reference's precision", choices=tuple(DTYPES))
    precision: str = arg(
        "fp32",
        "the trained policy's weights and optimizer: fp32 (weights, gradients, RMSProp state), "
        "or bf16-weights (bf16 weights and gradients, fp32 RMSProp state with stochastic "
        "rounding: half the memory, llm.precision)",
        choices=tuple(PRECISIONS),
    )
    device: str = arg("auto", "cpu, cuda, or auto")
    out: str = arg("results/llm_overopt", "root folder for run folders")
    force: bool = arg(False, "recompute even if this config's results exist")
    progress: bool = arg(True, "show progress bars")


NOT_IN_HASH = ("out", "force", "device", "progress", "keep_weights")


def output_folder(cfg: Config) -> Path:
    """The run folder of ``cfg`` (named from every field that changes the results)."""
    prefix = f"b{cfg.branching}-len{cfg.max_length}-{cfg.problem.reward}"
    # fp32 (the default, and the only precision before it was a flag) keeps the folder names
    # runs had before
    ignore = NOT_IN_HASH + (("precision",) if cfg.precision == "fp32" else ())
    return run_folder(cfg.out, cfg, prefix=prefix, ignore=ignore)


def check(cfg: Config) -> None:
    """ValueError naming the flag for a config that cannot run."""
    check_distinct(cfg, ("objectives", "betas", "sizes"))
    check_shapes(cfg.sizes)
    if cfg.pairs % cfg.batch:
        # one epoch is pairs / batch full steps: llm.train's steps are whole batches, so a
        # remainder would wrap into a second epoch (fraction_of_epoch > 1)
        whole = cfg.pairs // cfg.batch * cfg.batch or cfg.batch
        raise ValueError(
            f"--pairs {cfg.pairs} is not a multiple of --batch {cfg.batch}: one epoch is "
            f"--pairs / --batch full steps (e.g. --pairs {whole})"
        )
    steps = cfg.pairs // cfg.batch
    if cfg.checkpoints > steps:
        raise ValueError(
            f"--checkpoints {cfg.checkpoints}: one epoch has only {steps} step(s) "
            f"(--pairs {cfg.pairs} / --batch {cfg.batch})"
        )


def _device(name: str) -> str:
    """The device of ``--device`` (ValueError naming the flag for one torch cannot use)."""
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    check_device(name)
    return name


def build(cfg: Config) -> tuple[Problem, TreeTask, Pairs]:
    """The tree problem (π_ref fitted to the support pairs' responses), the LLM's task (the
    gold rewards and ``--pairs`` Bradley–Terry pairs of π_ref's samples) and ``--eval-pairs``
    held-out pairs drawn the same way (seed + 1)."""
    tree = Tree.with_stop(cfg.branching, cfg.max_length, n_prompts=cfg.prompts)
    problem = build_problem(tree, [cfg.seed], cfg.problem)

    def draw(n: int, seed: int) -> Pairs:
        return sampled_bt_pairs(
            tree, problem.rewards[0], problem.ref_logp[0], n, seed=seed,
            temperature=cfg.bt_temperature,
        )  # fmt: skip

    pairs, held_out = draw(cfg.pairs, cfg.seed), draw(cfg.eval_pairs, cfg.seed + 1)
    return problem, TreeTask(tree, problem.rewards[0], pairs.chosen, pairs.rejected), held_out


def run_name(size: str, objective: str, beta: float) -> str:
    """The evaluation run folder's name under ``llm/``."""
    return f"{size}-{objective}-beta{number_name(beta)}"


def run_size(
    cfg: Config,
    problem: Problem,
    task: TreeTask,
    held_out: Pairs,
    size: str,
    folder: Path,
    device: str,
) -> tuple[list[pd.DataFrame], float]:
    """One SFT of ``size``, then every objective and β from it; their eval tables and
    KL(π_ref ‖ the SFT model) on the tree (exact)."""
    sft = sft_llm(
        problem, folder / f"sft-{size}", model=size, seed=cfg.seed, samples=cfg.sft_samples,
        epochs=cfg.sft_epochs, lr=cfg.sft_lr, batch_size=cfg.sft_batch_size, device=device,
        progress=cfg.progress, keep_state=cfg.keep_weights, precision=cfg.precision,
    )  # fmt: skip
    model = load_model(sft, dtype=PRECISIONS[cfg.precision].weights).to(device)
    logp = tree_logprobs(model, problem.tree)[None].cpu()
    kl = float(kl_divergence(problem.tree, problem.ref_logp[:1], logp)[0])
    del model
    frames = []
    for objective in cfg.objectives:
        for beta in cfg.betas:
            spec = DAARun(
                objective, beta, lr=cfg.lr, batch_size=cfg.batch, epochs=1.0,
                checkpoints=cfg.checkpoints, seed=cfg.seed, size=size,
                eval_samples=cfg.eval_samples,
                hyper={"alpha": cfg.rdpo_alpha} if objective == "rdpo" else {},
                keep_weights=cfg.keep_weights, reference_dtype=cfg.reference_dtype,
                precision=cfg.precision,
            )  # fmt: skip
            frame = daa_llm(
                task, sft, spec, folder / run_name(size, objective, beta), device=device,
                progress=cfg.progress, held_out=(held_out.chosen, held_out.rejected),
            )  # fmt: skip
            frames.append(frame.assign(size=size))
            gc.collect()  # the run's policy, optimizer and reference leave the GPU before the next
    if not cfg.keep_weights:  # the SFT weights (~28 GB at 6.9b) leave room for the next size
        shutil.rmtree(sft, ignore_errors=True)
        # and whatever a killed --keep-weights start of this run left (checkpoints, latest.json)
        drop_weights(folder / f"sft-{size}")
        for objective in cfg.objectives:
            for beta in cfg.betas:
                drop_weights(folder / run_name(size, objective, beta))
    return frames, kl


def drop_weights(run_dir: Path) -> None:
    """Remove the checkpoint folders of ``run_dir`` (finished, unfinished and temporary ones)
    and its ``latest.json``: a --no-keep-weights run leaves none (its eval.csv stays)."""
    for step in [*checkpoint_folders(run_dir), *run_dir.glob(".step-*")]:
        shutil.rmtree(step, ignore_errors=True)
    (run_dir / LATEST).unlink(missing_ok=True)


def summarise(runs: pd.DataFrame, margin: float) -> pd.DataFrame:
    """Per (size, objective, β): the exact gold win rate at the start (the SFT model), its peak
    (and where in the epoch) and at the end; exact KL at the end; ``rises_then_falls`` when the
    peak is at least ``margin`` above the start and the end at least ``margin`` below the peak."""
    rows = []
    for (size, objective, beta), g in runs.groupby(["size", "objective", "beta"], sort=False):
        g = g.sort_values("checkpoint")
        peak = g.loc[g["exact_win_rate"].idxmax()]
        start, end = g.iloc[0], g.iloc[-1]
        rows.append(
            {
                "size": size, "objective": objective, "beta": beta,
                "checkpoints": int((g["checkpoint"] > 0).sum()),
                "win_rate_start": start["exact_win_rate"],
                "win_rate_peak": peak["exact_win_rate"],
                "peak_fraction": peak["fraction_of_epoch"],
                "win_rate_end": end["exact_win_rate"],
                "kl_reverse_end": end["exact_kl_reverse"],
                "length_start": start["length_mean"], "length_end": end["length_mean"],
                "rises_then_falls": bool(
                    peak["exact_win_rate"] - start["exact_win_rate"] >= margin
                    and peak["exact_win_rate"] - end["exact_win_rate"] >= margin
                ),
            }
        )  # fmt: skip
    return pd.DataFrame(rows)


def main(cfg: Config) -> Path:
    """Run (or reuse) every size, objective and β; print the summary."""
    check(cfg)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    device = _device(cfg.device)
    folder = output_folder(cfg)
    start = time.perf_counter()

    def compute() -> dict[str, pd.DataFrame]:
        if cfg.force and (folder / "llm").exists():
            shutil.rmtree(folder / "llm")
        problem, task, held_out = build(cfg)
        frames, kls = [], {}
        for size in cfg.sizes:
            # a training step's largest op (a weight gradient: hidden × 4·hidden): below about
            # a million entries one intra-op thread is faster (treemdp.threads)
            with threads_for(4 * PYTHIA_SHAPES[size].hidden_size ** 2):
                size_frames, kls[size] = run_size(
                    cfg, problem, task, held_out, size, folder / "llm", device
                )
            frames += size_frames
        runs = pd.concat(frames, ignore_index=True)[list(RUNS_COLUMNS)]
        summary = summarise(runs, cfg.margin)
        summary["kl_ref_to_sft"] = summary["size"].map(kls)
        summary["responses"] = problem.tree.n_responses
        return {"summary": summary, "runs": runs}

    with cached_run(folder, cfg, ["summary", "runs"], compute, force=cfg.force) as tables:
        summary = tables["summary"]
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        print(summary.to_string(index=False, float_format=lambda x: f"{x:.3f}"))
    shown = int(summary["rises_then_falls"].sum())
    print(
        f"{shown} of {len(summary)} runs: the exact gold win rate rises then falls inside the "
        f"epoch (by ≥ {cfg.margin:g}); done in {time.perf_counter() - start:.1f} s; "
        f"results in {folder}/"
    )
    return folder


def run_folders(cfg: Config) -> list[Path]:
    """The evaluation run folders of a finished run (one per size, objective and β)."""
    root = output_folder(cfg) / "llm"
    return [root / run_name(s, o, b) for s in cfg.sizes for o in cfg.objectives for b in cfg.betas]


if __name__ == "__main__":
    run_seeds(Config, main, description=__doc__)  # --seeds 0-9 [--backend ray]: docs/scale.md
