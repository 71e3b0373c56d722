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


FITS_TABLE = "scaling_law_fits.csv"
"""The table every fit of a family's scaling-law figures is written to (under ``out/<kind>/``)."""
FIT_COLUMNS = (
    "size", "alpha", "beta", "initial", "offset_fit", "rmse", "n", "peak_d", "d_min", "d_max",
    "peak_in_data", "note",
)  # fmt: skip
"""Columns of ``fit_sizes``."""


def fit_sizes(table: pd.DataFrame, objective: str, x: str = "d", final: bool = False):
    """One RL-form fit per size: a DataFrame (``FIT_COLUMNS``) with NaN parameters and a note
    where the fit was impossible. ``d_min``/``d_max`` are the range of the fitted points' d;
    ``peak_in_data`` says whether the fitted peak d* lies inside it (d_min ≤ d* ≤ d_max,
    ``treemdp.scaling.Fit.peak_in_data``): a d* before every point or beyond every point is an
    extrapolation of the form, not a peak the data show."""
    sub = select(table, objective)
    base = initial_win_rate(table)
    rows = []
    for size in sizes(sub):
        points = sub[sub["size"] == size]
        if final:
            points = points[points["final"]]
        initial = base.loc[points["run"]].to_numpy()
        row = {"size": size, "alpha": np.nan, "beta": np.nan, "rmse": np.nan, "peak_d": np.nan}
        row |= {"n": len(points), "note": "", "peak_in_data": False}
        row |= {"d_min": float(points[x].min()), "d_max": float(points[x].max())}
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
            row["peak_in_data"] = fit.peak_in_data
            row["initial"] = fit.offset if free else float(np.mean(initial))
        rows.append(row)
    return pd.DataFrame(rows, columns=list(FIT_COLUMNS))


def peak_label(f: pd.Series) -> str:
    """The legend's word on a fit's peak: d* inside the data, or where it lies instead."""
    if f["peak_in_data"]:
        return f"d*={f['peak_d']:.2g}"
    if not np.isfinite(f["peak_d"]):
        return "no peak"
    side = "before" if f["peak_d"] < f["d_min"] else "beyond"
    return f"d*={f['peak_d']:.2g} {side} the data"


def plot(
    table: pd.DataFrame,
    objective: str,
    *,
    x: str = "d",
    final: bool = False,
    fits: pd.DataFrame | None = None,
):
    """Win rate vs d (checkpoints as points) with one fitted RL-form curve per size, drawn over
    that size's data range [d_min, d_max] only. ``fits``: ``fit_sizes``'s table (computed if
    not given)."""
    sub = select(table, objective)
    colors, markers = size_colors(table), size_markers(table)
    fits = (fit_sizes(table, objective, x, final) if fits is None else fits).set_index("size")
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
            # The curve is drawn over the data only: a fitted hump before or beyond the points
            # is an extrapolation, so it is neither drawn nor reported as a peak.
            grid = np.linspace(f["d_min"], f["d_max"], CURVE_POINTS)
            curve = f["initial"] + scaling.evaluate(FORM, grid, alpha=f["alpha"], beta=f["beta"])
            ax.plot(grid, curve, color=color, lw=2)
            label += f"  ({peak_label(f)})"
        ax.plot([], [], color=color, marker=markers[size], lw=2, label=label)
    initial = initial_win_rate(table)
    if initial.notna().any() and np.allclose(initial.dropna(), initial.dropna().iloc[0]):
        ax.axhline(initial.dropna().iloc[0], color="grey", lw=0.8, ls=":", zorder=0)
    say_if_empty(ax, sub["win_rate"])
    which = "final checkpoints" if final else "all checkpoints"
    ax.set_title(f"{title(objective)}: win rate vs KL ({which})")
    ax.set_xlabel(AXES[x][1])
    ax.set_ylabel("win rate")
    ax.set_xlim(left=0)
    ax.legend(
        fontsize=8, title="size (fitted peak d*; curves: RL fit)", title_fontsize=8, loc="best"
    )
    return fig


CURVE_POINTS = 200
"""Points of a drawn fitted curve."""


def describe_fits(
    table: pd.DataFrame,
    objective: str,
    x: str,
    final: bool,
    fits: pd.DataFrame | None = None,
) -> str:
    """The fitted parameters, one line per size, for the caption."""
    lines = []
    fits = fit_sizes(table, objective, x, final) if fits is None else fits
    for _, f in fits.iterrows():
        if np.isfinite(f["alpha"]):
            extra = " (free offset)" if f["offset_fit"] else ""
            where = "" if f["peak_in_data"] else " — PEAK OUTSIDE THE DATA"
            lines.append(
                f"  {f['size']}: α={f['alpha']:.4g}, β={f['beta']:.4g}, d*={f['peak_d']:.3g} "
                f"(data d {f['d_min']:.3g}–{f['d_max']:.3g}{where}), RMSE={f['rmse']:.3g}, "
                f"n={f['n']}{extra}"
            )
        else:
            lines.append(f"  {f['size']}: no fit ({f['note']})")
    return "\n".join(lines)


def main(data: checkpoints.Data, out: str | Path = "figures/out") -> list[Path]:
    """Write the four figures per objective and the table of their fits (``FITS_TABLE``, one
    row per figure and size, with ``peak_in_data``); return the files written."""
    writer = Writer(out, data.kind, data.source)
    table = data.table
    tables = []
    for objective in objectives(table):
        for x, (part, label) in AXES.items():
            for final in (True, False):
                name = f"{objective}_scaling_law_curve_fits_{'final_' if final else ''}{part}"
                which = "final checkpoint of each run" if final else "every checkpoint"
                fits = fit_sizes(table, objective, x, final)
                caption = (
                    f"{title(objective)} win rate vs {label} ({which}), one colour per size; "
                    f"curves: R(d) = d(α − β log d) fitted by least squares to the win-rate gain "
                    f"over the run's step-0 value and drawn at step-0 value + R(d) over each "
                    f"size's data range [d_min, d_max] only; d* = the fitted peak, flagged "
                    f"(legend: before/beyond the data; here: PEAK OUTSIDE THE DATA) when it lies "
                    f"outside that range, where it is an extrapolation of the form. Dotted line: "
                    f"the step-0 win rate. Fits: {FITS_TABLE} (column peak_in_data).\n"
                    + describe_fits(table, objective, x, final, fits)
                )
                fig = plot(table, objective, x=x, final=final, fits=fits)
                writer.save(fig, name, caption)
                tables.append(fits.assign(figure=name, objective=objective, d_axis=x, final=final))
    if tables:
        frame = pd.concat(tables, ignore_index=True)
        front = ["figure", "objective", "d_axis", "final"]
        frame = frame[front + [c for c in frame.columns if c not in front]]
        writer.written.append(write_fits(frame, writer.folder / FITS_TABLE))
    return writer.written


def write_fits(frame: pd.DataFrame, path: Path) -> Path:
    """The fits table as CSV (floats as their repr: the same bytes for the same fits)."""
    text = frame.to_csv(index=False, float_format=lambda v: repr(float(v)), lineterminator="\n")
    return style.write_caption(path, text)


if __name__ == "__main__":
    checkpoints.command_line(__doc__, main)
