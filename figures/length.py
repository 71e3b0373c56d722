"""Length: R-DPO against DPO, and how much of the implicit reward is length (paper Fig. 3).

Writes:

- `dpo_rdpo`: win rate and mean response length against d = √KL(π‖π_ref) (the paper's axis), DPO
  and R-DPO (the length-regularised DPO), one size (default: the middle one, as the paper's 2.8B);
- `kl_length_corr`: R² of the regression of the implicit log-ratio log π/π_ref on response length,
  against KL(π‖π_ref), one colour per size, one panel per objective.

    python figures/length.py [--toy-run DIR | --llm-runs DIR...] [--size mlp16] [--out ...]
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from figures import checkpoints, style
from figures.common import (
    Writer,
    objectives,
    say_if_empty,
    select,
    size_colors,
    size_markers,
    sizes,
    title,
)
from treemdp import scaling

PAIR = ("dpo", "rdpo")


def middle_size(table: pd.DataFrame) -> str:
    """The middle size among those with both DPO and R-DPO runs (the larger of two middles)."""
    both = [s for s in sizes(table) if set(PAIR) <= set(table.loc[table["size"] == s, "objective"])]
    if not both:
        raise ValueError(
            "the checkpoint table has no size with both dpo and rdpo runs; toy: rerun "
            f"python {checkpoints.TOY_EXPERIMENT} with --objectives dpo rdpo ..."
        )
    return both[len(both) // 2]


def plot_dpo_rdpo(table: pd.DataFrame, size: str | None = None):
    """Win rate (left) and mean length (right) vs d = √KL for DPO and R-DPO at one size."""
    size = middle_size(table) if size is None else size
    fig, axes = style.new_figure(2, sharey=False)
    fig.set_size_inches(style.PANEL_WIDTH * 2.2, style.PANEL_HEIGHT * 1.15)
    top = 0.0
    for objective in PAIR:
        sub = select(table, objective, size)
        color = style.OBJECTIVE_COLORS[objective]
        rest, final = sub[~sub["final"]], sub[sub["final"]]
        for ax, col in zip(axes, ("win_rate", "length"), strict=True):
            ax.scatter(rest["d"], rest[col], s=8, alpha=0.3, color=color, lw=0)
            ax.scatter(final["d"], final[col], s=28, color=color, edgecolor="white", lw=0.6)
        top = max(top, sub["d"].max())
        # RL-form fit on every checkpoint (gain over the step-0 value), over the data's range.
        start = sub.loc[sub["step"] == 0, "win_rate"]
        label = title(objective)
        if len(start):
            try:
                fit = scaling.fit("rl", sub["d"], sub["win_rate"] - start.mean())
            except ValueError:
                fit = None
            if fit is not None:
                d = np.linspace(0, sub["d"].max(), 200)
                axes[0].plot(d, start.mean() + fit.predict(d), color=color, lw=2)
        for ax in axes:
            ax.plot([], [], color=color, marker="o", lw=2 if ax is axes[0] else 0, label=label)
    say_if_empty(axes[0], table["win_rate"])
    axes[0].set_ylabel("win rate")
    axes[1].set_ylabel("mean response length")
    for ax in axes:
        ax.set_xlabel("d = √KL(π‖π_ref)  (√nats)")
        ax.set_xlim(0, top * 1.05)
    axes[0].set_title(f"Win rate vs √KL, size {size}")
    axes[1].set_title(f"Length vs √KL, size {size}")
    axes[0].legend(fontsize=8, title="large dots: final; line: RL fit", title_fontsize=7)
    return fig


def plot_kl_length_corr(table: pd.DataFrame):
    """length_r2 vs KL(π‖π_ref), one colour per size, one panel per objective."""
    objs = objectives(table)
    if not objs:
        raise ValueError("the checkpoint table has no dpo, ipo or slic rows")
    colors, markers = size_colors(table), size_markers(table)
    fig, axes = style.new_figure(len(objs))
    fig.set_size_inches(style.PANEL_WIDTH * len(objs), style.PANEL_HEIGHT * 1.15)
    usable = table[table["length_r2"].notna() & (table["kl_reverse"] > 0)]
    if usable.empty:
        raise ValueError("the checkpoint table has no length_r2 values (column all NaN)")
    for ax, objective in zip(axes, objs, strict=True):
        sub = usable[usable["objective"] == objective]
        for size in sizes(table):
            pts = sub[sub["size"] == size]
            if pts.empty:
                continue
            rest, final = pts[~pts["final"]], pts[pts["final"]]
            c, m = colors[size], markers[size]
            ax.scatter(
                rest["kl_reverse"], rest["length_r2"], s=7, alpha=0.3, color=c, marker=m, lw=0
            )
            ax.scatter(
                final["kl_reverse"],
                final["length_r2"],
                s=26,
                color=c,
                marker=m,
                edgecolor="white",
                lw=0.5,
            )
            ax.plot([], [], color=c, marker=m, lw=0, label=size)
        ax.set_xscale("log")
        ax.set_title(title(objective))
        ax.set_xlabel("KL(π‖π_ref)  (nats, log scale)")
        ax.set_ylim(-0.02, 1.02)
    axes[0].set_ylabel("R² of log π/π_ref on length")
    axes[-1].legend(
        fontsize=8,
        title="size\n(large markers:\nfinal)",
        title_fontsize=7,
        loc="center left",
        bbox_to_anchor=(1.02, 0.5),
    )
    return fig


def main(
    data: checkpoints.Data, out: str | Path = "figures/out", size: str | None = None
) -> list[Path]:
    """Write `dpo_rdpo` (when the table has R-DPO runs) and `kl_length_corr` (when responses
    differ in length: on a complete tree's language every response has D tokens)."""
    writer = Writer(out, data.kind, data.source)
    table = data.table
    if "rdpo" in set(table["objective"]):
        size = middle_size(table) if size is None else size
        writer.save(
            plot_dpo_rdpo(table, size),
            "dpo_rdpo",
            f"DPO and R-DPO (length-regularised DPO) at size {size}: win rate (left, with the RL "
            "form fitted to all checkpoints' win-rate gain over step 0, drawn over the data's "
            "range) "
            "and mean response length (right) vs d = √KL(π‖π_ref); small dots: every "
            "checkpoint, large: final.",
        )
    else:
        print("dpo_rdpo: skipped, the table has no rdpo runs")
    if table["length_r2"].isna().all():
        print("kl_length_corr: skipped, every response has one length (R² undefined)")
        return writer.written
    writer.save(
        plot_kl_length_corr(table),
        "kl_length_corr",
        "R² of the regression of the implicit log-ratio log π(y)/π_ref(y) on response length vs "
        "KL(π‖π_ref), one colour per size (toy: exact, π-weighted least squares over all "
        "responses; LLM: over sampled responses); step 0 omitted (R² undefined at π = π_ref).",
    )
    return writer.written


if __name__ == "__main__":
    checkpoints.command_line(__doc__, main, size="size of dpo_rdpo [default: the middle]")
