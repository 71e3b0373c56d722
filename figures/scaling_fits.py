"""Win rate against d = √KL with fitted scaling-law curves, one colour per size (paper Fig. 1, 5).

Writes, per objective (dpo, ipo, slic):

- `{objective}_scaling_law_curve_fits_final_kl`: final checkpoints, d = √KL(π‖π_ref);
- `{objective}_scaling_law_curve_fits_kl`: every checkpoint of the epoch;
- `..._final_forward_kl` and `..._forward_kl`: the same against d = √KL(π_ref‖π).

The curve is the RL form R(d) = d(α − β log d) (`treemdp.scaling`, form "rl") fitted by least
squares to the win-rate *gain* over the run's initial (step-0) value, drawn at initial + R(d). Where
a size has no step-0 checkpoint (an LLM table without the SFT row), the fit has a free offset.

    python figures/scaling_fits.py [--toy-run DIR | --llm-runs DIR...] [--out figures/out]
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from figures import checkpoints, style
from figures.common import Writer, objectives, select, size_colors, size_markers, sizes, title
from treemdp import scaling

FORM = "rl"
AXES = {
    "d": ("kl", "d = √KL(π‖π_ref)  (√nats)"),
    "d_forward": ("forward_kl", "d = √KL(π_ref‖π), forward  (√nats)"),
}
"""x column → (file-name part, axis label)."""


def initial_win_rate(table: pd.DataFrame) -> pd.Series:
    """Win rate at each run's first checkpoint if that is step 0; else the mean step-0 win rate
    of its size (runs of a size share the initial model); NaN where neither exists. Index: run."""
    start = table[table["step"] == 0]
    own = start.groupby("run")["win_rate"].mean()
    per_size = start.groupby("size")["win_rate"].mean()
    runs = table.drop_duplicates("run").set_index("run")["size"]
    return runs.index.to_series().map(own).fillna(runs.map(per_size))


def fit_sizes(table: pd.DataFrame, objective: str, x: str = "d", final: bool = False):
    """One RL-form fit per size: a DataFrame (size, alpha, beta, initial, offset_fit, rmse, n,
    peak_d, d_max, peak_inside, note) with NaN parameters and a note where the fit was
    impossible. ``d_max`` is the largest d of the fitted points; ``peak_inside`` says whether the
    fitted peak d* lies inside the data (d* <= d_max): a d* beyond the data is an extrapolation,
    not a peak the data show."""
    sub = select(table, objective)
    base = initial_win_rate(table)
    rows = []
    for size in sizes(sub):
        points = sub[sub["size"] == size]
        if final:
            points = points[points["final"]]
        initial = base.loc[points["run"]].to_numpy()
        row = {"size": size, "alpha": np.nan, "beta": np.nan, "rmse": np.nan, "peak_d": np.nan}
        row |= {"n": len(points), "note": "", "d_max": float(points[x].max()), "peak_inside": False}
        free = bool(np.isnan(initial).any())
        row["offset_fit"] = free
        y = points["win_rate"].to_numpy() - (0 if free else initial)
        try:
            fit = scaling.fit(FORM, points[x].to_numpy(), y, offset=free)
        except ValueError as e:
            row["note"] = str(e)
            row["initial"] = np.nan if free else float(np.mean(initial))
        else:
            row |= {"alpha": fit.params["alpha"], "beta": fit.params["beta"], "rmse": fit.rmse}
            row["peak_d"] = fit.peak_d
            row["peak_inside"] = bool(np.isfinite(fit.peak_d) and fit.peak_d <= row["d_max"])
            row["initial"] = fit.offset if free else float(np.mean(initial))
        rows.append(row)
    return pd.DataFrame(rows)


def plot(table: pd.DataFrame, objective: str, *, x: str = "d", final: bool = False):
    """Win rate vs d (checkpoints as points) with one fitted RL-form curve per size."""
    sub = select(table, objective)
    colors, markers = size_colors(table), size_markers(table)
    fits = fit_sizes(table, objective, x, final).set_index("size")
    fig, (ax,) = style.new_figure(1)
    fig.set_size_inches(style.PANEL_WIDTH * 1.25, style.PANEL_HEIGHT * 1.2)
    for size in sizes(sub):
        points = sub[sub["size"] == size]
        if final:
            points = points[points["final"]]
        color = colors[size]
        ax.scatter(
            points[x],
            points["win_rate"],
            s=26 if final else 10,
            marker=markers[size],
            alpha=0.8 if final else 0.45,
            color=color,
            edgecolor="white" if final else "none",
            linewidth=0.5,
        )
        f = fits.loc[size]
        label = size
        if np.isfinite(f["alpha"]):
            # The curve is drawn over the data only: a fitted hump beyond the largest d is an
            # extrapolation, so it is neither drawn nor reported as a peak.
            grid = np.linspace(0, max(f["d_max"], 1e-9), 200)
            curve = f["initial"] + scaling.evaluate(FORM, grid, alpha=f["alpha"], beta=f["beta"])
            ax.plot(grid, curve, color=color, lw=2)
            peak = f["peak_d"]
            label += f"  (d*={peak:.2g})" if f["peak_inside"] else "  (no peak inside the data)"
        ax.plot([], [], color=color, marker=markers[size], lw=2, label=label)
    initial = initial_win_rate(table)
    if initial.notna().any() and np.allclose(initial.dropna(), initial.dropna().iloc[0]):
        ax.axhline(initial.dropna().iloc[0], color="grey", lw=0.8, ls=":", zorder=0)
    which = "final checkpoints" if final else "all checkpoints"
    ax.set_title(f"{title(objective)}: win rate vs KL ({which})")
    ax.set_xlabel(AXES[x][1])
    ax.set_ylabel("win rate")
    ax.set_xlim(left=0)
    ax.legend(
        fontsize=8, title="size (fitted peak d*; curves: RL fit)", title_fontsize=8, loc="best"
    )
    return fig


def describe_fits(table: pd.DataFrame, objective: str, x: str, final: bool) -> str:
    """The fitted parameters, one line per size, for the caption."""
    lines = []
    for _, f in fit_sizes(table, objective, x, final).iterrows():
        if np.isfinite(f["alpha"]):
            extra = " (free offset)" if f["offset_fit"] else ""
            where = "" if f["peak_inside"] else " — no peak inside the data"
            lines.append(
                f"  {f['size']}: α={f['alpha']:.4g}, β={f['beta']:.4g}, d*={f['peak_d']:.3g} "
                f"(largest d {f['d_max']:.3g}{where}), RMSE={f['rmse']:.3g}, n={f['n']}{extra}"
            )
        else:
            lines.append(f"  {f['size']}: no fit ({f['note']})")
    return "\n".join(lines)


def main(data: checkpoints.Data, out: str | Path = "figures/out") -> list[Path]:
    """Write the four figures per objective; return the files written."""
    writer = Writer(out, data.kind, data.source)
    table = data.table
    for objective in objectives(table):
        for x, (part, label) in AXES.items():
            for final in (True, False):
                name = f"{objective}_scaling_law_curve_fits_{'final_' if final else ''}{part}"
                which = "final checkpoint of each run" if final else "every checkpoint"
                caption = (
                    f"{title(objective)} win rate vs {label} ({which}), one colour per size; "
                    f"curves: R(d) = d(α − β log d) fitted by least squares to the win-rate gain "
                    f"over the run's step-0 value and drawn at step-0 value + R(d) over the data's "
                    f"range only; d* = fitted peak, given only when it lies inside the data "
                    f"(else: no peak inside the data). Dotted line: the step-0 win rate.\n"
                    + describe_fits(table, objective, x, final)
                )
                writer.save(plot(table, objective, x=x, final=final), name, caption)
    return writer.written


if __name__ == "__main__":
    checkpoints.command_line(__doc__, main)
