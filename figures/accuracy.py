"""Do implicit-reward accuracy and training loss predict the win rate? (paper Fig. 4)

Writes, per objective (dpo, ipo, slic):

- `{objective}_all_ckpts_acc_vs_win`: implicit-reward accuracy vs win rate, every checkpoint;
- `{objective}_all_ckpts_loss_vs_win`: the objective's loss vs win rate, every checkpoint.

One panel per size (the paper's claim is *within* a size), points coloured by β. The panel's title
gives the Spearman rank correlation: for accuracy (one scale for every β) over all the panel's
checkpoints; for the loss, whose scale changes with β (IPO's by ~10⁴ over the grid), within each
β (the mean and range over β; each β's ρ is in the legend), not pooled.

    python figures/accuracy.py [--toy-run DIR | --llm-runs DIR...] [--out figures/out]
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from figures import checkpoints, style
from figures.common import (
    Writer,
    beta_colors,
    beta_label,
    objectives,
    say_if_empty,
    select,
    sizes,
    spearman,
    spearman_within,
    title,
)

METRICS = {"reward_accuracy": ("acc", "implicit-reward accuracy"), "loss": ("loss", "loss")}
"""column → (file-name part, axis label)."""


def plot(table: pd.DataFrame, objective: str, metric: str = "reward_accuracy"):
    """``metric`` vs win rate: one panel per size, colour per β, Spearman ρ in each title."""
    # Step 0 (π = π_ref) has h = 0 on every pair: accuracy 0 by the strict h > 0 convention, a
    # point that says nothing about the question and squashes the axis. Drop it.
    sub = select(table[table["step"] > 0], objective)
    colors = beta_colors(table)
    panels = sizes(sub)
    fig, axes = style.new_figure(len(panels), sharey=True)
    fig.set_size_inches(3.3 * len(panels) + 0.6, style.PANEL_HEIGHT * 1.1)
    label = METRICS[metric][1]
    for ax, size in zip(axes, panels, strict=True):
        pts = sub[sub["size"] == size]
        for beta, g in pts.groupby("beta"):
            ax.scatter(g["win_rate"], g[metric], s=10, alpha=0.6, color=colors[beta], lw=0)
        if metric == "loss":  # per β: the loss's scale changes with β
            per_beta = spearman_within(pts, "win_rate", metric).dropna()
            rho_text = (
                f"ρ within β: mean {per_beta.mean():.2f}, {per_beta.min():.2f} … "
                f"{per_beta.max():.2f}"
                if len(per_beta)
                else "ρ undefined: a constant"
            )
        else:
            rho = spearman(pts["win_rate"], pts[metric])
            rho_text = f"ρ = {rho:.2f}" if rho == rho else "ρ undefined: a constant"  # NaN ≠ NaN
        say_if_empty(ax, pts["win_rate"])
        ax.set_title(f"{size}   (Spearman {rho_text})", fontsize=8)
        ax.set_xlabel("win rate")
    values = sub[metric].dropna()
    spans_decades = len(values) and values.min() > 0 and values.max() / values.min() > 30
    if metric == "loss" and spans_decades:  # e.g. IPO: (h − 1/(2β))² spans 1e-3 … 1e3 over β
        for ax in axes:
            ax.set_yscale("log")
        label += " (log scale)"
    axes[0].set_ylabel(f"{title(objective)} {label}")
    for beta in sorted(sub["beta"].unique()):
        text = beta_label(beta)
        if metric == "loss":  # each β's within-β ρ, one per size (panels left to right)
            rhos = [
                spearman(g["win_rate"], g[metric])
                for size in panels
                for g in [sub[(sub["size"] == size) & (sub["beta"] == beta)]]
            ]
            text += "  (ρ " + ", ".join("–" if r != r else f"{r:.2f}" for r in rhos) + ")"
        axes[-1].scatter([], [], s=18, color=colors[beta], label=text)
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
                "colour per β; Spearman rank correlation in each title: "
                + (
                    "within each β (mean and range over β; per β and size in the legend), "
                    "since the loss's scale changes with β; "
                    if metric == "loss"
                    else "over the panel's checkpoints; "
                )
                + "step 0 (π = π_ref, accuracy 0 by the strict h > 0 rule) left out."
            )
            writer.save(
                plot(table, objective, metric), f"{objective}_all_ckpts_{part}_vs_win", caption
            )
    return writer.written


if __name__ == "__main__":
    checkpoints.command_line(__doc__, main)
