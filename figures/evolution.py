"""Win rate and KL over the epoch, one line per β (paper Fig. 2).

Writes, per objective (DPO, SLiC, IPO) and size:

- `Winrate_evolution_over_epoch_for_{OBJ}_{size}`: win rate vs fraction of the epoch;
- `KL_evolution_over_epoch_for_{OBJ}_{size}`: KL(π‖π_ref) vs fraction of the epoch.

With several seeds per β: the mean over seeds and a min–max band; with one seed and a standard
error (LLM): the value and a ±1 SE band.

    python figures/evolution.py [--toy-run DIR | --llm-runs DIR...] [--out figures/out]
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from figures import checkpoints, style
from figures.common import (
    Writer,
    beta_colors,
    beta_label,
    file_size,
    objectives,
    say_if_empty,
    select,
    sizes,
    title,
)

METRICS = {
    "win_rate": ("Winrate", "win rate", "win_rate_se"),
    "kl_reverse": ("KL", "KL(π‖π_ref)  (nats)", "kl_reverse_se"),
}
"""column → (file-name prefix, axis label, its standard-error column)."""
FILE_OBJECTIVE = {"dpo": "DPO", "ipo": "IPO", "slic": "SLiC"}


def seed_counts(sub: pd.DataFrame) -> str:
    """The real number of seeds behind each β's curve: "one seed", "mean of 3 seeds ± 1 SE", or
    "mean of 2–3 seeds ± 1 SE (n per β in the legend)" when the β differ."""
    n = sub.groupby("beta")["run"].nunique()
    if n.max() == 1:
        return "one seed"
    if n.min() == n.max():
        return f"mean of {n.max()} seeds ± 1 SE"
    return f"mean of {n.min()}–{n.max()} seeds ± 1 SE (n per β in the legend)"


def plot(table: pd.DataFrame, objective: str, size: str, metric: str = "win_rate"):
    """``metric`` vs fraction of the epoch, one line (and band) per β."""
    sub = select(table, objective, size)
    colors = beta_colors(table)
    _, label, se = METRICS[metric]
    fig, (ax,) = style.new_figure(1)
    fig.set_size_inches(style.PANEL_WIDTH * 1.35, style.PANEL_HEIGHT * 1.15)
    # Widest line first, each later β narrower on top: lines that coincide (e.g. SLiC's hinge
    # at small β) stay visible as nested stripes instead of hiding each other.
    band = None  # what the shaded band is, named in the legend
    n_runs = sub.groupby("beta")["run"].nunique()
    for i, (beta, g) in enumerate(sub.groupby("beta")):
        stats = g.groupby("fraction")[metric].agg(["mean", "sem", "count"])
        color = colors[beta]
        ax.plot(
            stats.index,
            stats["mean"],
            color=color,
            lw=max(3.4 - 0.5 * i, 1.0),
            marker="o",
            ms=3,
            label=beta_label(beta)
            + (f" (n={n_runs[beta]})" if n_runs.min() != n_runs.max() else ""),
        )
        if stats["count"].max() > 1:  # ±1 standard error of the mean over seeds
            half = stats["sem"]
            counts = sorted({n_runs.min(), n_runs.max()})
            band = f"band: ±1 SE of the mean over {'–'.join(map(str, counts))} seeds"
        elif g[se].fillna(0).gt(0).any():  # one run: its estimate's SE (0: an exact value)
            half = g.groupby("fraction")[se].mean()
            band = "band: ±1 SE of the run's estimate"
        else:
            continue
        lo, hi = stats["mean"] - half, stats["mean"] + half
        ax.fill_between(stats.index, lo, hi, color=color, alpha=0.15, lw=0)
    if metric == "win_rate":
        say_if_empty(ax, sub[metric])
    spread = seed_counts(sub)
    ax.set_title(f"{title(objective)}, size {size}: {label.split('  ')[0]} ({spread})", fontsize=9)
    ax.set_xlabel("epochs (passes over the preference data)")
    ax.set_ylabel(label)
    ax.set_xlim(0, max(1.0, sub["fraction"].max()))
    if metric == "kl_reverse":
        ax.set_ylim(bottom=0)
    if band is not None:
        ax.fill_between([], [], [], color="grey", alpha=0.3, lw=0, label=band)
    ax.legend(
        fontsize=8, title="β", title_fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5)
    )
    return fig


def main(data: checkpoints.Data, out: str | Path = "figures/out") -> list[Path]:
    """Write both figures for every (objective, size); return the files written."""
    writer = Writer(out, data.kind, data.source)
    table = data.table
    for objective in objectives(table):
        sub = table[table["objective"] == objective]
        for size in sizes(sub):
            cell = sub[sub["size"] == size]
            for metric, (prefix, label, _) in METRICS.items():
                obj = FILE_OBJECTIVE.get(objective, objective.upper())
                name = f"{prefix}_evolution_over_epoch_for_{obj}_{file_size(size)}"
                caption = (
                    f"{title(objective)}, size {size}: {label} vs fraction of the epoch, one "
                    "colour per β (the same β colours in every figure; smaller β drawn wider, so "
                    f"coinciding lines show as nested stripes); {seed_counts(cell)}"
                    " (one seed: a band of the run's own standard error where the table has one)."
                )
                writer.save(plot(table, objective, size, metric), name, caption)
    return writer.written


if __name__ == "__main__":
    checkpoints.command_line(__doc__, main)
