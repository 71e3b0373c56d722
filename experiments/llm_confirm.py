"""Does an LLM show what the Tree-MDP toy predicts? The toy and a GPT-NeoX side by side.

On one tree problem (treemdp ``build_problem``: gold rewards, preference pairs, a log-linear SFT
reference π_ref):

1. the toy's prediction, exact: DPO, IPO and SLiC trained from π_ref with a tabular policy (π_ref
   as fixed offset) and with the log-linear policy (``treemdp.train``);
2. the LLM: a Pythia-shaped GPT-NeoX is SFT'd on samples of π_ref in the tree language (one
   token per action), then trained with DPO, IPO and SLiC on the same pairs (``llm.train``), and
   every checkpoint is evaluated (``llm.eval_run``): the exact distribution over all leaves of
   the model decoded on the tree (every leaf scored) next to estimates from samples.

Reported for toy and LLM: OOD mass, in-distribution mass, exact (and, for the LLM, sampled) KL and
gold win rate against π_ref, at the start, peak and end of training; a figure; and a verdict per
objective: the toy "degrades" when the OOD mass rises by at least ``--margin`` and the
in-distribution mass ends at least ``--margin`` below its peak; the LLM shows the predicted
degradation when the same holds for it.

    python experiments/llm_confirm.py                       # CPU: tiny model, 3x3 tree
    python experiments/llm_confirm.py --model 70m --device cuda --depth 4
    python experiments/llm_confirm.py --grid [--quick] ...  # the grid: experiments/confirm_grid.py

writes results/llm_confirm/<run>/{config.json, toy.csv, llm.csv, comparison.csv, verdict.txt,
confirm.png, llm/<sft and one folder per objective and β, each with eval.csv>}.
"""

from __future__ import annotations

import importlib.util
import shutil
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from types import ModuleType

import pandas as pd
import torch

from figures import quicklook
from llm.confirm import DAARun, daa_llm, sft_llm
from llm.evaluate import TreeTask
from llm.model import PYTHIA_SHAPES, load_model
from llm.sampling import tree_logprobs
from treemdp.metrics import kl_divergence
from treemdp.policy import Policy, Tabular
from treemdp.problem import Problem, ProblemSpec, build_problem
from treemdp.runs import atomic_write, number_name, run_folder
from treemdp.runs.cli import arg, check_device, nested, run
from treemdp.runs.experiment import cached_run
from treemdp.train import grid
from treemdp.train import train as train_toy
from treemdp.tree import Tree

PAPER_OBJECTIVES = ("dpo", "ipo", "slic")
SIDES = ("toy-tabular", "toy-loglinear", "llm")


@dataclass(frozen=True)
class Config:
    """The bridge experiment: toy prediction vs an LLM on the same tree problem."""

    branching: int = arg(3, "actions per state (b)", minimum=2)
    depth: int = arg(3, "tree depth (b^depth responses; every leaf is scored exactly)", minimum=1)
    problem: ProblemSpec = nested(
        ProblemSpec(pairs=1, sft_steps=300),  # the toy's problem: log-linear, SFT reference
        flags={"pairs": "pairs", "features": "features", "toy_sft_steps": "sft_steps"},
    )
    seed: int = arg(
        3, "problem seed (features, gold rewards, pairs) and LLM seed; 3: see docs/llm.md"
    )
    objectives: tuple[str, ...] = arg(PAPER_OBJECTIVES, "objectives", choices=PAPER_OBJECTIVES)
    beta: tuple[float, ...] = arg((0.1,), "β values", exclusive_minimum=0)
    toy_steps: int = arg(2000, "toy training steps (Adam, full batch)", minimum=1)
    toy_lr: float = arg(0.01, "toy learning rate", exclusive_minimum=0)
    model: str = arg("tiny", "Pythia shape (random init), hub name or folder for the LLM")
    device: str = arg("auto", "cpu, cuda, or auto")
    sft_samples: int = arg(512, "samples of π_ref the LLM is SFT'd on", minimum=1)
    sft_epochs: float = arg(4.0, "SFT epochs", exclusive_minimum=0)
    sft_lr: float = arg(3e-3, "SFT learning rate (RMSProp)", exclusive_minimum=0)
    sft_batch_size: int = arg(32, "SFT batch size", minimum=1)
    lr: float = arg(1e-3, "DAA learning rate (RMSProp)", exclusive_minimum=0)
    steps: int = arg(200, "DAA steps (each on every pair)", minimum=1)
    checkpoints: int = arg(
        10,
        "DAA checkpoints, exactly this many (at most one a step), evenly spaced, the last at "
        "the run's end; the SFT model is evaluated too, as step 0",
        minimum=1,
    )
    eval_samples: int = arg(256, "samples per checkpoint for the sampled estimates", minimum=2)
    margin: float = arg(0.1, "mass change that counts as degradation", exclusive_minimum=0)
    out: str = arg("results/llm_confirm", "root folder for run folders")
    force: bool = arg(False, "recompute even if this config's results exist")
    progress: bool = arg(True, "show progress bars")


# ------------------------------------------------------------------------------------ toy
def toy_problems(cfg: Config, tree: Tree) -> tuple[Problem, Problem]:
    """The log-linear problem (SFT reference) and a tabular one with the same π_ref, gold
    rewards and pairs (π_ref's logits as the tabular policy's fixed offset)."""
    loglinear = build_problem(tree, [cfg.seed], cfg.problem)
    with torch.no_grad():
        ref_logits = loglinear.policy.logits(loglinear.policy.theta0)
    zeros = torch.zeros(1, tree.n_internal, tree.branching, dtype=torch.float64)
    tabular = replace(loglinear, policy=Policy(tree, Tabular(tree), zeros, ref_logits))
    return tabular, loglinear


def run_toy(cfg: Config, problems: dict[str, Problem]) -> pd.DataFrame:
    """Exact toy metrics over training for every family, objective and β."""
    frames = []
    log_every = max(1, cfg.toy_steps // 100)
    for family, problem in problems.items():
        batch, specs = grid(problem, cfg.objectives, cfg.beta, cfg.toy_lr)
        hist = train_toy(batch, specs, steps=cfg.toy_steps, log_every=log_every)
        f = hist.frame.assign(side=f"toy-{family}", fraction=hist.frame["step"] / cfg.toy_steps)
        frames.append(f)
    return pd.concat(frames, ignore_index=True)


# ------------------------------------------------------------------------------------ LLM
def _device(name: str) -> str:
    """The device of ``--device`` (ValueError naming the flag for one torch cannot use)."""
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    check_device(name)
    return name


def run_sft(cfg: Config, problem: Problem, folder: Path, device: str) -> Path:
    """SFT the LLM on samples of π_ref; returns the final checkpoint folder."""
    return sft_llm(
        problem, folder / "sft", model=cfg.model, seed=cfg.seed, samples=cfg.sft_samples,
        epochs=cfg.sft_epochs, lr=cfg.sft_lr, batch_size=cfg.sft_batch_size, device=device,
        progress=cfg.progress,
    )  # fmt: skip


def run_daa(
    cfg: Config, task: TreeTask, sft: Path, objective: str, beta: float, folder: Path, device: str
) -> pd.DataFrame:
    """Train one objective from the SFT model and evaluate every checkpoint; its eval table."""
    P = len(task.chosen)
    spec = DAARun(
        objective, beta, lr=cfg.lr, batch_size=P, epochs=cfg.steps, checkpoints=cfg.checkpoints,
        seed=cfg.seed, size=cfg.model, eval_samples=cfg.eval_samples,
    )  # fmt: skip
    out = folder / f"{objective}-beta{number_name(beta)}"
    return daa_llm(task, sft, spec, out, device=device, progress=cfg.progress)


def run_llm(
    cfg: Config, problem: Problem, folder: Path, device: str
) -> tuple[pd.DataFrame, dict[str, float]]:
    """SFT, then every objective and β; the stacked eval tables and an SFT report."""
    llm_dir = folder / "llm"
    sft = run_sft(cfg, problem, llm_dir, device)
    tree = problem.tree
    task = TreeTask(tree, problem.rewards[0], problem.pairs.chosen[0], problem.pairs.rejected[0])
    sft_model = load_model(sft).to(device)
    sft_logp = tree_logprobs(sft_model, tree)[None]
    report = {"kl_toy_ref_to_llm_sft": float(kl_divergence(tree, problem.ref_logp, sft_logp)[0])}
    del sft_model
    frames = [
        run_daa(cfg, task, sft, o, b, llm_dir, device) for o in cfg.objectives for b in cfg.beta
    ]
    return pd.concat(frames, ignore_index=True), report


# ------------------------------------------------------------------------------- summary
def compare(toy: pd.DataFrame, llm: pd.DataFrame, margin: float) -> pd.DataFrame:
    """One row per (objective, β, side): start, peak and final masses, KL and win rate, and
    whether the side degrades (OOD mass up by ≥ margin, in-distribution mass ≥ margin below its
    peak at the end)."""
    llm = llm.rename(columns={"kl_reverse": "kl_reverse_sampled", "win_rate": "win_rate_sampled"})
    llm = llm.rename(
        columns={
            f"exact_{m}": m
            for m in ("mass_ood", "mass_in_dist", "p_chosen", "win_rate", "kl_reverse")
        }
    )
    both = pd.concat([toy, llm], ignore_index=True)
    rows = []
    for (obj, beta, side), g in both.groupby(["objective", "beta", "side"], sort=False):
        g = g.sort_values("fraction")
        first, last = g.iloc[0], g.iloc[-1]
        row = {
            "objective": obj,
            "beta": beta,
            "side": side,
            "mass_ood_start": first["mass_ood"],
            "mass_ood_final": last["mass_ood"],
            "mass_in_dist_start": first["mass_in_dist"],
            "mass_in_dist_peak": g["mass_in_dist"].max(),
            "mass_in_dist_final": last["mass_in_dist"],
            "p_chosen_peak": g["p_chosen"].max(),
            "kl_reverse_final": last["kl_reverse"],
            "win_rate_peak": g["win_rate"].max(),
            "win_rate_final": last["win_rate"],
        }
        if side == "llm":
            row.update(
                kl_reverse_sampled=last["kl_reverse_sampled"],
                kl_reverse_sampled_se=last["kl_reverse_se"],
                win_rate_sampled=last["win_rate_sampled"],
                win_rate_sampled_se=last["win_rate_se"],
                ood_fraction_sampled=last["ood_fraction"],
                off_tree_final=last["exact_off_tree"],
            )
        row["degrades"] = bool(
            row["mass_ood_final"] - row["mass_ood_start"] >= margin
            and row["mass_in_dist_peak"] - row["mass_in_dist_final"] >= margin
        )
        rows.append(row)
    order = {s: i for i, s in enumerate(SIDES)}
    out = pd.DataFrame(rows)
    return out.sort_values(["objective", "beta", "side"], key=lambda c: c.map(order) if c.name ==
                           "side" else c, kind="stable").reset_index(drop=True)  # fmt: skip


def verdict(table: pd.DataFrame) -> list[str]:
    """One line per (objective, β) and a final line: does the LLM show what the toy predicts?"""
    lines, shown = [], []
    for (obj, beta), g in table.groupby(["objective", "beta"], sort=False):
        by = {r["side"]: r for _, r in g.iterrows()}
        toy, llm = by["toy-loglinear"], by["llm"]
        tab = by["toy-tabular"]

        def mass(r):
            return f"OOD mass {r['mass_ood_start']:.2f} -> {r['mass_ood_final']:.2f}"

        pred = "predicts degradation" if toy["degrades"] else "predicts no degradation"
        seen = "degrades" if llm["degrades"] else "does not degrade"
        agree = bool(toy["degrades"]) == bool(llm["degrades"])
        shown.append((obj, beta, bool(toy["degrades"]), bool(llm["degrades"])))
        lines.append(
            f"{obj} β={beta:g}: log-linear toy {pred} ({mass(toy)}; tabular: {mass(tab)}); "
            f"LLM {seen} ({mass(llm)}, off-tree {llm['off_tree_final']:.2f}): "
            f"{'agrees' if agree else 'disagrees'}"
        )
    predicted = [(o, b) for o, b, t, _ in shown if t]
    confirmed = [f"{o} β={b:g}" for o, b, t, m in shown if t and m]
    missed = [f"{o} β={b:g}" for o, b, t, m in shown if t and not m]
    if not predicted:
        lines.append(
            "verdict: the toy predicts no degradation here, so there is nothing to confirm"
        )
    elif not missed:
        lines.append(
            f"verdict: YES, the LLM shows the predicted degradation ({', '.join(confirmed)})"
        )
    elif confirmed:
        lines.append(
            f"verdict: PARTLY: the LLM shows the predicted degradation for {', '.join(confirmed)}, "
            f"not for {', '.join(missed)}"
        )
    else:
        lines.append(
            f"verdict: NO, the LLM does not show the predicted degradation ({', '.join(missed)})"
        )
    return lines


def output_folder(cfg: Config) -> Path:
    """The run folder of ``cfg`` (named from every field that changes the results)."""
    return run_folder(
        cfg.out, cfg, prefix=f"b{cfg.branching}-d{cfg.depth}",
        ignore=("out", "force", "device", "progress"),
    )  # fmt: skip


def main(cfg: Config) -> Path:
    """Run (or reuse) the bridge experiment; print the side-by-side table and the verdict."""
    if len(set(cfg.objectives)) != len(cfg.objectives) or len(set(cfg.beta)) != len(cfg.beta):
        raise ValueError("--objectives and --beta values must be distinct")
    if cfg.branching**cfg.depth > 100_000:
        raise ValueError(
            f"--branching {cfg.branching} --depth {cfg.depth}: over 100,000 leaves to score; "
            "use a smaller tree"
        )
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # "Loading weights" bars, once per model load
    device = _device(cfg.device)
    if cfg.model not in PYTHIA_SHAPES:  # fail before the toy trains, in one line
        from transformers import AutoConfig

        try:
            AutoConfig.from_pretrained(cfg.model)
        except (OSError, ValueError) as err:
            raise ValueError(
                f"--model {cfg.model!r} is not a Pythia shape ({', '.join(PYTHIA_SHAPES)}), a "
                f"model folder, or a hub model in the local cache ({str(err).splitlines()[0]})"
            ) from None
    folder = output_folder(cfg)
    start = time.perf_counter()
    tree = Tree.complete(cfg.branching, cfg.depth)

    def compute() -> dict[str, pd.DataFrame]:
        if cfg.force and (folder / "llm").exists():
            shutil.rmtree(folder / "llm")
        tabular, loglinear = toy_problems(cfg, tree)
        toy = run_toy(cfg, {"tabular": tabular, "loglinear": loglinear})
        llm, report = run_llm(cfg, loglinear, folder, device)
        table = compare(toy, llm, cfg.margin)
        table["kl_toy_ref_to_llm_sft"] = report["kl_toy_ref_to_llm_sft"]
        return {"comparison": table, "toy": toy, "llm": llm}

    names = ["comparison", "toy", "llm"]
    with cached_run(folder, cfg, names, compute, force=cfg.force, diverged="toy") as tables:
        table = tables["comparison"]  # a killed run resumes its LLM checkpoints (llm/)
        quicklook.confirm(tables["toy"], tables["llm"], folder / "confirm.png")
        lines = verdict(table)
        text = "\n".join(lines) + "\n"
        atomic_write(folder / "verdict.txt", lambda p: p.write_text(text))
    shown = [
        "objective", "beta", "side", "mass_ood_start", "mass_ood_final", "mass_in_dist_peak",
        "mass_in_dist_final", "kl_reverse_final", "kl_reverse_sampled", "kl_reverse_sampled_se",
        "win_rate_peak", "win_rate_final", "win_rate_sampled", "win_rate_sampled_se", "degrades",
    ]  # fmt: skip
    with pd.option_context("display.width", 250, "display.max_columns", 30):
        print(table[shown].to_string(index=False, float_format=lambda x: f"{x:.3f}"))
    print(f"KL(toy π_ref ‖ LLM SFT) = {table['kl_toy_ref_to_llm_sft'].iloc[0]:.4f} (exact)")
    print(text, end="")
    print(
        f"done in {time.perf_counter() - start:.1f} s; results in {folder}/ "
        "(comparison.csv, toy.csv, llm.csv, verdict.txt, confirm.png)",
        file=sys.stdout,
    )
    return folder


def grid_module() -> ModuleType:
    """``experiments/confirm_grid.py`` (the grid behind ``--grid``), imported from beside this
    file (experiments are scripts, not a package)."""
    name = "confirm_grid"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name(f"{name}.py"))
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses resolve their annotations through sys.modules
        spec.loader.exec_module(module)
    return sys.modules[name]


def cli(argv: list[str] | None = None) -> Path:
    """The command line: ``--grid`` anywhere runs the grid (``confirm_grid``, its own flags:
    ``--grid --help``); otherwise one setting."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if "--grid" in argv:
        grid_ = grid_module()
        rest = [a for a in argv if a != "--grid"]
        return run(grid_.Config, grid_.main, rest, description=grid_.__doc__)
    return run(Config, main, argv, description=__doc__)


if __name__ == "__main__":
    cli()
