"""Where toy and LLM agree: the confirm grid's summary figure (``experiments/confirm_grid.py``).

Reads the grid's tables only: ``agreement.csv`` and ``closest_toy_by_size.csv``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from treemdp import plotting

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

    plotting.set_style()
    regimes = list(dict.fromkeys(agreement["regime"]))
    fig, axes = plt.subplots(
        len(regimes),
        2,
        squeeze=False,
        constrained_layout=True,
        figsize=(2.2 * plotting.PANEL_WIDTH, plotting.PANEL_HEIGHT * 1.2 * len(regimes)),
        gridspec_kw={"width_ratios": [3, 2]},
    )
    for i, regime in enumerate(regimes):
        a = agreement[agreement["regime"] == regime]
        pooled = a[
            (a["lr"].astype(str) == "all")
            & (a["objective"].astype(str) != "all")
            & (a["size"].astype(str) != "all")
        ]
        toys = list(dict.fromkeys(pooled["toy"]))
        columns = list(dict.fromkeys(zip(pooled["objective"], pooled["size"], strict=True)))
        rate = np.full((len(toys), len(columns)), np.nan)
        ax = axes[i][0]
        for _, r in pooled.iterrows():
            y, x = toys.index(r["toy"]), columns.index((r["objective"], r["size"]))
            rate[y, x] = r["rate"]
            ax.text(
                x, y, f"{int(r['agree'])}/{int(r['cells'])}", ha="center", va="center", fontsize=7
            )
        image = ax.imshow(rate, vmin=0, vmax=1, cmap="RdYlGn", aspect="auto")
        ax.grid(False)
        ax.set_xticks(range(len(columns)), [f"{o.upper()}\n{s}" for o, s in columns], fontsize=7)
        ax.set_yticks(range(len(toys)), toys, fontsize=7)
        ax.set_title(f"{regime}: toy agrees with LLM (degrades or not)", fontsize=9)
        fig.colorbar(image, ax=ax, label="agreement rate")
        ax = axes[i][1]
        b = by_size[by_size["regime"] == regime]
        sizes = list(dict.fromkeys(b["size"]))
        colors = plotting.capacity_colors(list(dict.fromkeys(b["toy"])))
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
    return plotting.save_figure(fig, path)
