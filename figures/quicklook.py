"""Quick-look figures that experiments save beside their tables (one function per picture, each
taking the experiment's tables and the output path): experiments write tables and do not draw.

The paper's figures are the other modules of this package; these are the run folders' first look.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from figures import style
from treemdp import scaling

__all__ = ["confirm", "ood_mass", "theory_check", "win_vs_d"]

SIDE_COLORS = {"toy-tabular": "#999999", "toy-loglinear": "#1f77b4", "llm": "#d62728"}
"""The colour of each side of ``experiments/llm_confirm.py``'s comparison."""
TOY_SIDES = ("toy-tabular", "toy-loglinear")


def ood_mass(frame: pd.DataFrame, path: str | Path) -> None:
    """``experiments/ood_mass.py``'s ``ood_mass.png`` from its ``metrics.csv``:
    OOD and in-distribution mass over training, one panel per objective, one colour per β."""
    objs = list(dict.fromkeys(frame["objective"]))
    colors = style.beta_colors(frame["beta"].unique())
    fig, axes = style.new_figure(len(objs))
    for ax, name in zip(axes, objs, strict=True):
        sub = frame[frame["objective"] == name]
        for beta, g in sub.groupby("beta"):
            for _, seed_run in g.groupby("run"):
                ax.plot(
                    seed_run["step"], seed_run["mass_ood"], color=colors[beta], alpha=0.3, lw=0.8
                )
            mean = g.groupby("step")[["mass_ood", "mass_in_dist"]].mean()
            ax.plot(
                mean.index, mean["mass_ood"], color=colors[beta], lw=2, label=f"OOD, β={beta:g}"
            )
            ax.plot(
                mean.index,
                mean["mass_in_dist"],
                color=colors[beta],
                lw=2,
                ls="--",
                label=f"in-dist, β={beta:g}",
            )
        ax.set_title(name.upper())
        ax.set_xlabel("training step")
        ax.set_ylim(-0.02, 1.02)
    axes[0].set_ylabel("probability mass (thin: OOD per seed)")
    axes[-1].legend(fontsize=7, loc="center right")
    style.save_figure(fig, path)


def theory_check(table: pd.DataFrame, traj: pd.DataFrame, path: str | Path) -> None:
    """``experiments/theory_check.py``'s ``theory_check.png`` from its ``theory_check.csv`` and
    ``trajectory.csv``. Per objective: training paths in the (OOD mass, excess loss) plane; the
    minimiser set is excess loss 0, and its OOD masses span the thick segment (the closure of the
    range)."""
    objs = list(dict.fromkeys(table["objective"]))
    colors = style.beta_colors(table["beta"].unique())
    fig, axes = style.new_figure(len(objs))
    for ax, name in zip(axes, objs, strict=True):
        sub = table[table["objective"] == name]
        for _, row in sub.iterrows():
            path_ = traj[traj["run"] == row["run"]]
            c = colors[row["beta"]]
            ax.plot(path_["mass_ood"], path_["excess_loss"], color=c, alpha=0.5, lw=0.9)
            ax.plot(row["mass_ood"], row["excess_loss"], "o", color=c, ms=4)
        lo, hi = sub["ood_range_lo"].min(), sub["ood_range_hi"].max()
        ax.plot([lo, hi], [0, 0], color="black", lw=5, alpha=0.35, solid_capstyle="butt")
        ax.set_yscale("symlog", linthresh=1e-4)
        ax.set_xlim(-0.02, 1.02)
        ax.set_title(f"{name.upper()}: minimisers span OOD mass [{lo:.2g}, {hi:.2g}]", fontsize=9)
        ax.set_xlabel("OOD mass")
    for beta, c in colors.items():
        axes[-1].plot([], [], color=c, label=f"β={beta:g}")
    axes[-1].legend(fontsize=7)
    axes[0].set_ylabel("loss − infimum (symlog); dot = final")
    style.save_figure(fig, path)


def win_vs_d(table: pd.DataFrame, fits: pd.DataFrame, which: str, path: str | Path) -> None:
    """``experiments/toy_scaling.py``'s ``win_vs_d_<which>.png`` from its ``metrics.csv`` and
    ``fits.csv``. Win rate vs d = √KL with fitted ``rl`` curves: one panel per objective, one
    colour per capacity (the paper's Figure 1; ``which`` = "final" or "all" checkpoints)."""
    objs = list(dict.fromkeys(table["objective"]))
    capacities = list(dict.fromkeys(table["capacity"]))
    colors = style.capacity_colors(capacities)
    fig, axes = style.new_figure(len(objs))
    last = table.groupby(["capacity", "run"])["step"].transform("max")
    points = table[table["step"] == last] if which == "final" else table
    for ax, name in zip(axes, objs, strict=True):
        for capacity in capacities:
            sub = points[(points["objective"] == name) & (points["capacity"] == capacity)]
            ax.scatter(sub["d"], sub["win_rate"], s=10, alpha=0.5, color=colors[capacity])
            row = fits[
                (fits["objective"] == name)
                & (fits["capacity"] == capacity)
                & (fits["checkpoints"] == which)
                & (fits["kl"] == "reverse")
                & (fits["form"] == "rl")
            ]
            if len(row) and np.isfinite(row["alpha"].iloc[0]):
                grid = np.linspace(sub["d"].min(), sub["d"].max(), 200)  # over the data only
                curve = scaling.evaluate(
                    "rl", grid, alpha=row["alpha"].iloc[0], beta=row["beta"].iloc[0]
                )
                ax.plot(grid, 0.5 + curve, color=colors[capacity], lw=2, label=capacity)
        ax.axhline(0.5, color="grey", lw=0.8, ls=":")
        ax.set_title(f"{name.upper()} ({which} checkpoints)")
        ax.set_xlabel("d = √KL(π‖π_ref)")
    axes[0].set_ylabel("gold win rate vs π_ref")
    axes[-1].legend(fontsize=7, title="capacity", title_fontsize=7)
    style.save_figure(fig, path)


def confirm(toy: pd.DataFrame, llm: pd.DataFrame, path: str | Path) -> None:
    """``experiments/llm_confirm.py``'s ``confirm.png`` from its ``toy.csv`` and ``llm.csv``.

    Row 1: OOD (solid) and in-distribution (dashed) mass over training, toy and LLM (exact; dots:
    the LLM's sampled OOD share ± 2 SE). Row 2: gold win rate against π_ref."""
    style.set_style()
    objs = list(dict.fromkeys(toy["objective"]))
    fig, axes = plt.subplots(
        2, len(objs), figsize=(style.PANEL_WIDTH * len(objs), 2 * style.PANEL_HEIGHT),
        sharex=True, squeeze=False, constrained_layout=True,
    )  # fmt: skip
    colors = SIDE_COLORS
    beta0 = toy["beta"].iloc[0]
    for j, obj in enumerate(objs):
        top, bottom = axes[0][j], axes[1][j]
        for side in TOY_SIDES:
            g = toy[(toy["objective"] == obj) & (toy["side"] == side) & (toy["beta"] == beta0)]
            top.plot(g["fraction"], g["mass_ood"], color=colors[side], label=f"{side} OOD")
            top.plot(g["fraction"], g["mass_in_dist"], color=colors[side], ls="--")
            bottom.plot(g["fraction"], g["win_rate"], color=colors[side], label=side)
        g = llm[(llm["objective"] == obj) & (llm["beta"] == beta0)]
        c = colors["llm"]
        top.plot(g["fraction"], g["exact_mass_ood"], color=c, marker="o", ms=3, label="LLM OOD")
        top.plot(g["fraction"], g["exact_mass_in_dist"], color=c, ls="--", marker="o", ms=3)
        top.errorbar(g["fraction"], g["ood_fraction"], yerr=2 * g["ood_fraction_se"], fmt="x",
                     color="black", ms=4, label="LLM OOD, sampled")  # fmt: skip
        bottom.plot(g["fraction"], g["exact_win_rate"], color=c, marker="o", ms=3, label="LLM")
        bottom.errorbar(g["fraction"], g["win_rate"], yerr=2 * g["win_rate_se"], fmt="x",
                        color="black", ms=4, label="LLM, sampled")  # fmt: skip
        top.set_title(f"{obj.upper()}, β={beta0:g}")
        top.set_ylim(-0.02, 1.02)
        bottom.set_ylim(-0.02, 1.02)
        bottom.set_xlabel("fraction of training")
    axes[0][0].set_ylabel("mass (solid OOD, dashed in-dist)")
    axes[1][0].set_ylabel("gold win rate vs π_ref")
    axes[0][-1].legend(fontsize=7)
    axes[1][-1].legend(fontsize=7)
    style.save_figure(fig, path)
