"""The paper's runs, declared as data: run (or reuse) them and write their index.

    python experiments/paper_runs.py                  # every family: tree, toy, llm
    python experiments/paper_runs.py --only toy       # one family
    python experiments/paper_runs.py --quick          # tiny configs (a test run)
    python experiments/paper_runs.py --fresh          # recompute, not reuse

Families (what figures/make_all.py draws from each):

- tree: experiments/ood_mass.py at β ∈ {0.01, 0.1, 0.5} on one pair with the log-linear policy
  and an SFT reference, recording every response (the Tree-MDP figures).
- toy: experiments/toy_scaling.py with DPO, IPO, SLiC and R-DPO (α = 0.3: the registry's 0.01
  gives runs identical to DPO's to three digits on the toy's margins), no bootstrap intervals in
  its fits.csv (the figures read none), the rest at its defaults (the scaling, evolution, length
  and accuracy figures; "size" = policy capacity).
- llm: experiments/llm_overopt.py, the paper's regime on a tree language with a stop action, at
  two GPT-NeoX shapes this CPU trains in the time (tiny, 14m; random initialisation; each figure
  carries the size its models have): per size one SFT on samples of π_ref, then ONE epoch over
  Bradley–Terry pairs of π_ref's samples (concave gold reward) with 10 checkpoints inside it, for
  DPO, IPO, SLiC and R-DPO at β ∈ {0.1, 0.3}; every checkpoint evaluated in memory (exactly and
  by samples). The 1b / 2.8b / 6.9b shapes: scripts/gpu_figures.sh on a GPU.

Each experiment reuses its finished run folders itself, so a second call only writes the index.
The index, RESULTS/paper_runs/index.csv (figures/run_index.py reads it), has one row per
finished run folder of every declared run (paper and quick configs): family, role (ood_mass,
toy_scaling, or the LLM's model size), quick, run (the folder; for llm, each evaluation run
folder with eval.csv).
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from types import ModuleType
from typing import Any

import llm_overopt  # sibling experiment scripts: experiments may import experiments
import ood_mass
import pandas as pd
import toy_scaling

from figures.run_index import COLUMNS, INDEX
from treemdp.runs import run_lock, write_table
from treemdp.runs.cli import arg, run, with_flags

FAMILIES = ("tree", "toy", "llm")

OOD_MASS = {
    "beta": (0.01, 0.1, 0.5),
    "objectives": ("dpo", "ipo", "slic"),
    "pairs": 1,
    "policy": "loglinear",
    "reference": "sft",
    "responses": True,
}
"""ood_mass.py settings of the Tree-MDP figures (the rest are its defaults)."""
OOD_MASS_QUICK = {"steps": 40, "seed": (0, 1, 2), "sft_steps": 30, "log_every": 10}
"""What --quick changes in ``OOD_MASS`` (not the paper's numbers)."""
TOY = {
    "objectives": ("dpo", "ipo", "slic", "rdpo"),
    "quick": False,
    "reward": "concave",
    "capacities": ("tabular", "mlp4", "mlp16", "mlp64"),
    "beta": (0.01, 0.03, 0.1, 0.3, 1.0),
    "seed": (0, 1, 2),
    "pairs": 512,
    "epochs": 1.0,
    "rdpo_alpha": 0.3,
    "n_resamples": 0,
}
"""toy_scaling.py settings of the toy figures: its defaults, plus rdpo with α = 0.3, and no
bootstrap intervals in its fits.csv (``n_resamples`` 0: the figures fit their own curves and read
no interval; the 200 resamples were a third of the run's time)."""
TOY_QUICK = {"objectives": TOY["objectives"], "quick": True, "rdpo_alpha": 0.3, "n_resamples": 0}
"""The tiny toy_scaling config of --quick."""
LLM_SIZES = ("tiny", "14m")
"""The GPT-NeoX shapes of the CPU llm family (random init; the figures carry these names). 31m
is left out for time: with it the family took 270 s here (benchmarks/BENCHMARKS.md)."""
LLM = {
    "objectives": ("dpo", "ipo", "slic", "rdpo"), "betas": (0.1, 0.3), "lr": 3e-3,
    "pairs": 120, "batch": 4, "checkpoints": 10, "eval_samples": 16, "eval_pairs": 16,
    "sft_samples": 512, "toy_sft_steps": 100, "keep_weights": False,
}  # fmt: skip
"""llm_overopt.py settings of the llm family: one epoch of 30 steps (120 pairs, 4 a step), a
checkpoint every 3 steps (10 inside the epoch, the last at its end), evaluated in memory; the
rest its defaults (a 4-ary tree with a stop action, responses of 1–5 tokens: 364 responses;
concave gold reward)."""
LLM_QUICK = {
    **LLM, "objectives": ("dpo", "rdpo"), "betas": (0.1,), "pairs": 40, "batch": 4,
    "eval_samples": 8, "eval_pairs": 8, "sft_samples": 64, "sft_epochs": 1.0, "toy_sft_steps": 30,
}  # fmt: skip
"""The tiny llm_overopt config of --quick (the first model size only; 10 steps, 10 checkpoints)."""


@dataclass(frozen=True)
class PaperRun:
    """One run the paper's figures are drawn from.

    Attributes:
        family: the figure family it feeds (``FAMILIES``).
        role: what it is within the family (the experiment's name, or the LLM's model size).
        quick: whether it is the tiny --quick config.
        experiment: the experiment script's module (its ``main`` and ``output_folder``).
        config: the experiment's ``Config`` (``out`` is set under the results root when run).
        finished: the table whose presence marks the run folder complete.
        column: a column ``finished`` must have ("": none); folders written before it existed
            are recomputed.
        evaluations: the figures read the LLM evaluation run folders under ``llm/`` (one per
            objective and β, the SFT run left out), not the run folder itself.
        note: printed before the run trains ("": nothing), as it takes minutes.
    """

    family: str
    role: str
    quick: bool
    experiment: ModuleType
    config: Any
    finished: str = "metrics.csv"
    column: str = ""
    evaluations: bool = False
    note: str = ""


def llm_run(size: str, quick: bool) -> PaperRun:
    """The llm_overopt run of one model size (without progress bars: make_all shows a note)."""
    settings = {**(LLM_QUICK if quick else LLM), "sizes": (size,), "progress": False}
    config = with_flags(llm_overopt.Config(), settings)
    note = f"training and evaluating the {size} model ..."
    return PaperRun("llm", size, quick, llm_overopt, config, "summary.csv", "", True, note)


def declared() -> tuple[PaperRun, ...]:
    """Every run of the paper's figures, paper and quick configs."""
    return (
        PaperRun("tree", "ood_mass", False, ood_mass, with_flags(ood_mass.Config(), OOD_MASS)),
        PaperRun("tree", "ood_mass", True, ood_mass,
                 with_flags(ood_mass.Config(), {**OOD_MASS, **OOD_MASS_QUICK})),
        PaperRun("toy", "toy_scaling", False, toy_scaling,
                 with_flags(toy_scaling.Config(), TOY), column="length_r2"),
        PaperRun("toy", "toy_scaling", True, toy_scaling,
                 with_flags(toy_scaling.Config(), TOY_QUICK), column="length_r2"),
        *(llm_run(size, quick=False) for size in LLM_SIZES),
        llm_run(LLM_SIZES[0], quick=True),
    )  # fmt: skip


def placed(paper_run: PaperRun, results: Path) -> Any:
    """The run's config with ``out`` under ``results`` (results/<experiment>)."""
    name = Path(paper_run.experiment.__file__).stem
    return replace(paper_run.config, out=str(results / name))


def is_finished(paper_run: PaperRun, results: Path) -> bool:
    """Whether the run's folder under ``results`` is complete, with ``paper_run.column``."""
    folder = paper_run.experiment.output_folder(placed(paper_run, results))
    table = folder / paper_run.finished
    if not table.exists():
        return False
    with table.open() as lines:
        header = lines.readline().rstrip("\n").split(",")
    return not paper_run.column or paper_run.column in header


@contextlib.contextmanager
def silenced(enabled: bool) -> Iterator[None]:
    """Send an experiment's printed report to /dev/null when ``enabled`` (make_all shows only
    the notes; a failure still raises)."""
    if not enabled:
        yield
        return
    with open(os.devnull, "w") as null, contextlib.redirect_stdout(null):
        yield


def make(paper_run: PaperRun, results: Path, *, fresh: bool, quiet: bool) -> None:
    """Run (or reuse) one paper run into ``results``; print its note when it trains."""
    config = placed(paper_run, results)
    if paper_run.note and (fresh or not is_finished(paper_run, results)):
        print(f"  {paper_run.note}", flush=True)
    with silenced(quiet):
        paper_run.experiment.main(replace(config, force=fresh))
        if not is_finished(paper_run, results):  # reused, but written before a column existed
            paper_run.experiment.main(replace(config, force=True))


def run_folders(paper_run: PaperRun, results: Path) -> list[Path]:
    """The folders the figures read from a finished run: its run folder, or its LLM
    evaluation run folders (``PaperRun.evaluations``: the experiment's ``run_folders``)."""
    config = placed(paper_run, results)
    if not paper_run.evaluations:
        return [paper_run.experiment.output_folder(config)]
    return paper_run.experiment.run_folders(config)


def index(results: Path) -> pd.DataFrame:
    """One row per folder of every finished declared run under ``results`` (``COLUMNS``)."""
    rows = [
        {"family": r.family, "role": r.role, "quick": r.quick, "run": str(folder)}
        for r in declared()
        if is_finished(r, results)
        for folder in run_folders(r, results)
    ]
    return pd.DataFrame(rows, columns=list(COLUMNS))


@dataclass(frozen=True)
class Config:
    results: str = arg("results", "results root the experiments' run folders go under")
    only: tuple[str, ...] = arg(FAMILIES, "families to run", choices=FAMILIES)
    fresh: bool = arg(False, "recompute the runs, not reuse finished ones")
    quick: bool = arg(False, "tiny configs (a test run; not the paper's numbers)")
    quiet: bool = arg(False, "print only which LLM runs train (for figures/make_all.py)")


def main(config: Config) -> Path:
    """Run (or reuse) the paper's runs of ``config.only``; write and return the index."""
    start = time.perf_counter()
    results = Path(config.results)
    chosen = [r for r in declared() if r.family in config.only and r.quick == config.quick]
    for paper_run in chosen:
        make(paper_run, results, fresh=config.fresh, quiet=config.quiet)
    table = index(results)
    with run_lock((results / INDEX).parent):  # two writers would race on its manifest
        path = write_table(results / INDEX, table)
    if not config.quiet:
        print(table.to_string(index=False))
        print(f"{len(chosen)} runs in {time.perf_counter() - start:.0f} s; index in {path}")
    return path


if __name__ == "__main__":
    run(Config, main, description=__doc__)
