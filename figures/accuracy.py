"""Do implicit-reward accuracy and training loss predict the win rate? (paper Fig. 4)

Writes, per objective (dpo, ipo, slic):

- `{objective}_all_ckpts_acc_vs_win`: implicit-reward accuracy vs win rate, every checkpoint;
- `{objective}_all_ckpts_loss_vs_win`: the objective's loss vs win rate, every checkpoint.

One panel per size (the paper's claim is *within* a size), points coloured by β, with the
Spearman rank correlation over the panel's checkpoints in its title.

    python figures/accuracy.py [--toy-run DIR | --llm-runs DIR...] [--out figures/out]
"""

from __future__ import annotations

from pathlib import Path

import checkpoints
import pandas as pd
from common import Writer, beta_colors, beta_label, objectives, select, sizes, spearman, title

from treemdp import plotting

METRICS = {"reward_accuracy": ("acc", "implicit-reward accuracy"), "loss": ("loss", "loss")}
"""column → (file-name part, axis label)."""


def plot(table: pd.DataFrame, objective: str, metric: str = "reward_accuracy"):
    """``metric`` vs win rate: one panel per size, colour per β, Spearman ρ in each title."""
    # Step 0 (π = π_ref) has h = 0 on every pair: accuracy 0 by the strict h > 0 convention, a
    # point that says nothing about the question and squashes the axis. Drop it.
    sub = select(table[table["step"] > 0], objective)
    colors = beta_colors(table)
    panels = sizes(sub)
    fig, axes = plotting.new_figure(len(panels), sharey=True)
    fig.set_size_inches(3.3 * len(panels) + 0.6, plotting.PANEL_HEIGHT * 1.1)
    label = METRICS[metric][1]
    for ax, size in zip(axes, panels, strict=True):
        pts = sub[sub["size"] == size]
        for beta, g in pts.groupby("beta"):
            ax.scatter(g["win_rate"], g[metric], s=10, alpha=0.6, color=colors[beta], lw=0)
        rho = spearman(pts["win_rate"], pts[metric])
        ax.set_title(f"{size}   (Spearman ρ = {rho:.2f})", fontsize=9)
        ax.set_xlabel("win rate")
    values = sub[metric].dropna()
    spans_decades = len(values) and values.min() > 0 and values.max() / values.min() > 30
    if metric == "loss" and spans_decades:  # e.g. IPO: (h − 1/(2β))² spans 1e-3 … 1e3 over β
        for ax in axes:
            ax.set_yscale("log")
        label += " (log scale)"
    axes[0].set_ylabel(f"{title(objective)} {label}")
    for beta in sorted(sub["beta"].unique()):
        axes[-1].scatter([], [], s=18, color=colors[beta], label=beta_label(beta))
    axes[-1].legend(
        fontsize=7, title="β", title_fontsize=8, loc="center left", bbox_to_anchor=(1.02, 0.5)
    )
    fig.suptitle(f"{title(objective)}: {label} vs win rate, all checkpoints", fontsize=10)
    return fig


def main(data: checkpoints.Data, out: str | Path = "figures/out") -> list[Path]:
    """Write both figures per objective; return the files written."""
    writer = Writer(out, data.kind, data.source)
    table = data.table
    for objective in objectives(table):
        for metric, (part, label) in METRICS.items():
            caption = (
                f"{title(objective)}: {label} vs win rate at every checkpoint, one panel per size, "
                "colour per β; Spearman rank correlation over each panel's checkpoints in its "
                "title; "
                "step 0 (π = π_ref, accuracy 0 by the strict h > 0 rule) left out."
            )
            writer.save(
                plot(table, objective, metric), f"{objective}_all_ckpts_{part}_vs_win", caption
            )
    return writer.written


if __name__ == "__main__":
    checkpoints.command_line(__doc__, main)
