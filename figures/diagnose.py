"""The one-page figure of experiments/diagnose.py: each signal against the training step."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns

from figures.style import PANEL_HEIGHT, PANEL_WIDTH, save_figure, set_style

__all__ = ["plot"]


def _x(table: pd.DataFrame) -> tuple[pd.Series, str]:
    if table["step"].notna().all():
        return table["step"].astype(float), "step"
    return pd.Series(range(len(table)), index=table.index, dtype=float), "checkpoint (order given)"


def plot(table: pd.DataFrame, pairs: pd.DataFrame, path: str | Path) -> list[Path]:
    """Six panels from ``diagnose.csv`` (``table``) and ``pairs.csv`` (``pairs``): log-prob
    changes, both-fall share, margin and accuracy, KL (k1, k3 with 95% intervals), OOD proxy and
    entropy, and CHES against the last checkpoint's displacement per pair."""
    set_style()
    table = table.sort_values("step", na_position="first").reset_index(drop=True)
    x, xlabel = _x(table)
    fig, axes = plt.subplots(
        2, 3, figsize=(PANEL_WIDTH * 3, PANEL_HEIGHT * 2), constrained_layout=True
    )
    a = axes.ravel()
    a[0].plot(x, table["chosen_logp_change"], "o-", label="chosen")
    a[0].plot(x, table["rejected_logp_change"], "s-", label="rejected")
    a[0].axhline(0, color="grey", lw=0.8)
    a[0].set(title="log π − log π_ref (mean over pairs)", ylabel="nats")
    a[0].legend()
    a[1].plot(x, table["both_fall_share"], "o-", label="both fall")
    a[1].plot(x, table["chosen_falls_share"], "s-", label="chosen falls")
    a[1].set(title="share of pairs", ylim=(-0.02, 1.02))
    a[1].legend()
    a[2].plot(x, table["margin"], "o-", label="margin")
    twin = a[2].twinx()
    twin.plot(x, table["accuracy"], "s--", color="C2", label="accuracy")
    twin.set(ylim=(-0.02, 1.02), ylabel="accuracy")
    twin.grid(False)
    a[2].set(title="implicit reward", ylabel="margin")
    for k, (col, marker) in enumerate((("kl_k1", "o-"), ("kl_k3", "s-"))):
        a[3].errorbar(
            x,
            table[col],
            yerr=1.96 * table[f"{col}_se"],
            fmt=marker,
            capsize=3,
            label=col.removeprefix("kl_"),
            color=f"C{k}",
        )
    a[3].axhline(0, color="grey", lw=0.8)
    a[3].set(title="KL(π‖π_ref), 95% intervals", ylabel="nats")
    a[3].legend()
    a[4].errorbar(
        x,
        table["ood_proxy"],
        yerr=1.96 * table["ood_proxy_se"],
        fmt="o-",
        capsize=3,
        label="policy samples",
    )
    a[4].plot(x, table["ood_proxy_reference"], "k:", label="reference samples")
    a[4].set(title="OOD proxy (share of samples)", ylim=(-0.02, 1.02))
    a[4].legend()
    last = table.iloc[-1]["checkpoint"]
    sub = pairs[pairs["checkpoint"] == last]
    sns.scatterplot(x=sub["ches_normalised"], y=sub["chosen_logp_change"], ax=a[5], s=18)
    a[5].set(
        title=f"CHES vs displacement ({last})",
        xlabel="normalised CHES (reference)",
        ylabel="Δ log π(chosen)",
    )
    for ax in a[:5]:
        ax.set_xlabel(xlabel)
    return save_figure(fig, path)
