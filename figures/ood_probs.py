"""Tree-MDP result figures: where the probability mass goes during DAA training on one pair.

Reads a finished `experiments/ood_mass.py` run folder (β ∈ {0.01, 0.1, 0.5}, one pair) and writes,
under the paper's file names:

- `{dpo,ipo,slic}-beta-0.1-OOD-probs-summary-1pref`: OOD mass over training, mean over seeds with a
  10–90% band, and the mass of the single largest OOD response;
- `{dpo,ipo,slic}-beta-{β}-OOD-probs-1pref` (appendix, every β): OOD mass of every seed;
- `{dpo,ipo,slic}-beta-{β}-indist-1pref` (β = 0.1 in the main text, every β in the appendix):
  probability of the chosen and the rejected response, mean with a 10–90% band;
- `dpo-beta-0.1-{1,2,3}`: our reading of the paper's three extra DPO views: the probability of every
  one of the 27 responses over training, for the first three seeds of the run (chosen, rejected,
  the largest OOD response, and every other OOD response in grey).

    python figures/ood_probs.py [--run results/ood_mass/<run>] [--out figures/out]

Without --run: the Tree-MDP run of the paper's run index under --results (written by
experiments/paper_runs.py, which runs ood_mass.py with the settings these figures show).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

from figures import run_index, style
from treemdp.runs import read_table

BETAS = (0.01, 0.1, 0.5)
OBJECTIVES = ("dpo", "ipo", "slic")
METRIC_COLUMNS = (
    "objective",
    "beta",
    "run",
    "seed",
    "step",
    "mass_ood",
    "max_ood",
    "p_chosen",
    "p_rejected",
)
RESPONSE_COLUMNS = ("run", "step", "response", "logp", "role")


def load(run: str | Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The metrics and per-response tables of a run folder, checked for the needed columns."""
    run = Path(run)
    metrics = read_table(run / "metrics.csv", columns=METRIC_COLUMNS)
    responses = read_table(run / "responses.csv", columns=RESPONSE_COLUMNS)
    return metrics, responses


def _band(ax, g: pd.DataFrame, column: str, color, label: str, ls: str = "-") -> None:
    by_step = g.groupby("step")[column]  # vectorised quantiles (a lambda per step was slow)
    stats = pd.DataFrame(
        {"mean": by_step.mean(), "lo": by_step.quantile(0.1), "hi": by_step.quantile(0.9)}
    )
    ax.plot(stats.index, stats["mean"], color=color, lw=2, ls=ls, label=label)
    ax.fill_between(stats.index, stats["lo"], stats["hi"], color=color, alpha=0.15, lw=0)


def _finish(ax, title: str, ylabel: str, band: bool = True) -> None:
    if band:  # name the shaded band in the legend, not only in the caption
        ax.fill_between([], [], [], color="grey", alpha=0.3, lw=0, label="band: 10–90% of seeds")
    ax.set_title(title)
    ax.set_xlabel("training step")
    ax.set_ylabel(ylabel)
    ax.set_ylim(-0.02, 1.02)
    ax.legend(fontsize=8)


def _select(metrics: pd.DataFrame, objective: str, beta: float) -> pd.DataFrame:
    sub = metrics[(metrics["objective"] == objective) & np.isclose(metrics["beta"], beta)]
    if sub.empty:
        raise ValueError(f"the run has no rows for objective {objective!r} at β={beta}")
    return sub


def plot_ood_summary(metrics: pd.DataFrame, objective: str, beta: float = 0.1):
    """OOD mass (mean, 10–90% band over seeds) and the largest single OOD response's mass."""
    sub = _select(metrics, objective, beta)
    fig, (ax,) = style.new_figure(1)
    color = style.OBJECTIVE_COLORS[objective]
    _band(ax, sub, "mass_ood", color, "all OOD responses")
    _band(ax, sub, "max_ood", color, "largest single OOD response", ls="--")
    n = sub["run"].nunique()
    _finish(ax, f"{objective.upper()}, β={beta:g}: OOD mass ({n} seeds)", "probability mass")
    return fig


def plot_ood_per_seed(metrics: pd.DataFrame, objective: str, beta: float):
    """OOD mass of every seed (thin) and their mean (thick)."""
    sub = _select(metrics, objective, beta)
    fig, (ax,) = style.new_figure(1)
    color = style.OBJECTIVE_COLORS[objective]
    for _, g in sub.groupby("run"):
        ax.plot(g["step"], g["mass_ood"], color=color, alpha=0.35, lw=0.9)
    mean = sub.groupby("step")["mass_ood"].mean()
    ax.plot(mean.index, mean.values, color="black", lw=2, label="mean over seeds")
    _finish(ax, f"{objective.upper()}, β={beta:g}: OOD mass per seed", "probability mass", False)
    return fig


def plot_indist(metrics: pd.DataFrame, objective: str, beta: float):
    """Probability of the chosen and the rejected response (mean, 10–90% band over seeds)."""
    sub = _select(metrics, objective, beta)
    fig, (ax,) = style.new_figure(1)
    _band(ax, sub, "p_chosen", "#1b9e77", "chosen y_w")
    _band(ax, sub, "p_rejected", "#d95f02", "rejected y_l")
    title = f"{objective.upper()}, β={beta:g}: in-distribution responses"
    _finish(ax, title, "probability")
    return fig


def plot_trajectories(metrics: pd.DataFrame, responses: pd.DataFrame, run: int):
    """π of every response over training for one run (DPO, β = 0.1)."""
    first = metrics[metrics["run"] == run].iloc[0]
    mine = responses[responses["run"] == run]
    p = mine.pivot(index="step", columns="response", values="logp").pipe(np.exp)
    role = mine.drop_duplicates("response").set_index("response")["role"]
    chosen = int(role.index[role == "chosen"][0])
    rejected = int(role.index[role == "rejected"][0])
    ood = [c for c in p.columns if role[c] == "ood"]
    top = max(ood, key=lambda c: p[c].iloc[-1])
    fig, (ax,) = style.new_figure(1)
    for c in ood:
        if c != top:
            ax.plot(p.index, p[c], color="grey", alpha=0.4, lw=0.8)
    ax.plot(p.index, p[chosen], color="#1b9e77", lw=2, label=f"chosen (response {chosen})")
    ax.plot(p.index, p[rejected], color="#d95f02", lw=2, label=f"rejected (response {rejected})")
    ax.plot(p.index, p[top], color="#7570b3", lw=2, ls="--", label=f"largest OOD (response {top})")
    ax.plot([], [], color="grey", alpha=0.4, label="other OOD responses")
    seed = int(first["seed"])
    _finish(ax, f"DPO, β={first['beta']:g}, seed {seed}: every response", "π(y)", False)
    return fig


def main(run: str | Path, out: str | Path = "figures/out") -> list[Path]:
    """Write every Tree-MDP result figure of the ood_mass run folder ``run`` and its caption;
    return the files written."""
    run = Path(run)
    metrics, responses = load(run)
    out = Path(out)
    written: list[Path] = []
    source = f"data: {run}/metrics.csv and responses.csv (experiments/ood_mass.py)"

    def save(fig, name: str, caption: str) -> None:
        written.extend(style.save_figure(fig, out / f"{name}.png", pdf=True))
        written.append(style.write_caption(out / f"{name}.txt", f"{name}: {caption}\n{source}\n"))

    for objective in OBJECTIVES:
        save(
            plot_ood_summary(metrics, objective),
            f"{objective}-beta-0.1-OOD-probs-summary-1pref",
            "mass on responses outside the preference pair (mean and 10-90% band over seeds) and "
            "the mass of the largest single OOD response.",
        )
        for beta in BETAS:
            save(
                plot_ood_per_seed(metrics, objective, beta),
                f"{objective}-beta-{beta:g}-OOD-probs-1pref",
                "OOD mass of every seed (thin) and the mean (black).",
            )
            save(
                plot_indist(metrics, objective, beta),
                f"{objective}-beta-{beta:g}-indist-1pref",
                "probability of the chosen and rejected response (mean, 10-90% band over seeds).",
            )
    dpo_runs = metrics[(metrics["objective"] == "dpo") & np.isclose(metrics["beta"], 0.1)]
    for k, run_id in enumerate(sorted(dpo_runs["run"].unique())[:3], start=1):
        save(
            plot_trajectories(metrics, responses, int(run_id)),
            f"dpo-beta-0.1-{k}",
            f"our reading of the paper's DPO view {k}: π of every response over training for the "
            f"run's seed number {k} (chosen, rejected, largest OOD, other OOD in grey).",
        )
    return written


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--run", default=None, help="an ood_mass run folder [default: indexed]")
    parser.add_argument("--results", default="results", help="results root [default: results]")
    parser.add_argument("--out", default="figures/out", help="output folder [default: figures/out]")
    args = parser.parse_args()
    try:
        files = main(args.run or run_index.run_folders(args.results, "tree")[0], args.out)
    except ValueError as e:
        parser.error(str(e))
    for path in files:
        print(path)
