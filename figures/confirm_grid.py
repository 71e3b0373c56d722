"""Where toy and LLM agree: the confirm grid's summary figure (``experiments/confirm_grid.py``).

Reads the grid's tables only: ``agreement.csv`` and ``closest_toy_by_size.csv``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from figures import style

__all__ = ["plot_agreement"]


def plot_agreement(agreement: pd.DataFrame, by_size: pd.DataFrame, path: str | Path) -> list[Path]:
    """Per regime, a heatmap of each toy capacity's agreement rate with the LLM (rows) per
    objective and model size (columns; pooled over lr and β; text: agree/cells), and a stacked
    bar per model size of the share of its LLM runs each capacity is closest to.

    Args:
        agreement: ``treemdp.agreement.agreement`` rows (columns toy, regime, objective, size, lr,
            beta, cells, agree, rate).
        by_size: ``treemdp.agreement.closest_by_size`` rows (size, regime, toy, share).
        path: the PNG to write.

    Returns:
        The files written.
    """
    import matplotlib.pyplot as plt

    style.set_style()
    regimes = list(dict.fromkeys(agreement["regime"]))
    fig, axes = plt.subplots(
        len(regimes),
        2,
        squeeze=False,
        constrained_layout=True,
        figsize=(2.2 * style.PANEL_WIDTH, style.PANEL_HEIGHT * 1.2 * len(regimes)),
        gridspec_kw={"width_ratios": [3, 2]},
    )
    for i, regime in enumerate(regimes):
        _agreement_panel(fig, axes[i][0], agreement[agreement["regime"] == regime], regime)
        _closest_panel(axes[i][1], by_size[by_size["regime"] == regime], regime)
    return style.save_figure(fig, path)


def _agreement_panel(fig, ax, a: pd.DataFrame, regime: str) -> None:
    """The heatmap of one regime: agreement rate per toy capacity (rows) and (objective, model
    size) (columns), pooled over lr and β, with agree/cells written in each cell."""
    pooled = a[
        (a["lr"].astype(str) == "all")
        & (a["objective"].astype(str) != "all")
        & (a["size"].astype(str) != "all")
    ]
    toys = list(dict.fromkeys(pooled["toy"]))
    columns = list(dict.fromkeys(zip(pooled["objective"], pooled["size"], strict=True)))
    rate = np.full((len(toys), len(columns)), np.nan)
    for _, r in pooled.iterrows():
        y, x = toys.index(r["toy"]), columns.index((r["objective"], r["size"]))
        rate[y, x] = r["rate"]
        ax.text(x, y, f"{int(r['agree'])}/{int(r['cells'])}", ha="center", va="center", fontsize=7)
    image = ax.imshow(rate, vmin=0, vmax=1, cmap="RdYlGn", aspect="auto")
    ax.grid(False)
    ax.set_xticks(range(len(columns)), [f"{o.upper()}\n{s}" for o, s in columns], fontsize=7)
    ax.set_yticks(range(len(toys)), toys, fontsize=7)
    ax.set_title(f"{regime}: toy agrees with LLM (degrades or not)", fontsize=9)
    fig.colorbar(image, ax=ax, label="agreement rate")


def _closest_panel(ax, b: pd.DataFrame, regime: str) -> None:
    """The stacked bars of one regime: per model size, the share of its LLM runs each toy
    capacity is closest to."""
    sizes = list(dict.fromkeys(b["size"]))
    colors = style.capacity_colors(list(dict.fromkeys(b["toy"])))
    bottom = np.zeros(len(sizes))
    for toy, g in b.groupby("toy", sort=False):
        share = g.set_index("size").reindex(sizes)["share"].fillna(0).to_numpy()
        ax.bar(range(len(sizes)), share, bottom=bottom, color=colors[toy], label=toy)
        bottom += share
    ax.set_xticks(range(len(sizes)), sizes)
    ax.set_ylim(0, 1)
    ax.set_ylabel("share of LLM runs")
    ax.set_title(f"{regime}: closest toy trajectory", fontsize=9)
    ax.legend(fontsize=6, loc="upper left", bbox_to_anchor=(1, 1))
