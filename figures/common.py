"""Helpers the checkpoint-table figure families share: ordering, colours, selection, saving."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from figures import style

PAPER_OBJECTIVES = ("dpo", "ipo", "slic")
"""The objectives the paper draws a figure for each."""
TITLES = {"dpo": "DPO", "ipo": "IPO", "slic": "SLiC", "rdpo": "R-DPO"}


def title(objective: str) -> str:
    """DPO, IPO, SLiC, R-DPO, or the name in capitals."""
    return TITLES.get(objective, objective.upper())


def sizes(table: pd.DataFrame) -> list[str]:
    """Sizes from small to large."""
    return list(table.drop_duplicates("size").sort_values("size_rank")["size"])


def size_colors(table: pd.DataFrame) -> dict:
    """One colour per size, the same in every figure drawn from this table."""
    return style.capacity_colors(sizes(table))


MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")


def size_markers(table: pd.DataFrame) -> dict:
    """One marker per size (small to large), so sizes differ by shape as well as colour."""
    return {s: MARKERS[i % len(MARKERS)] for i, s in enumerate(sizes(table))}


def beta_colors(table: pd.DataFrame) -> dict:
    """One colour per β over every β in the table (so a β has one colour in all figures)."""
    return style.beta_colors(sorted(table["beta"].unique()))


def objectives(table: pd.DataFrame, wanted=PAPER_OBJECTIVES) -> list[str]:
    """The objectives of ``wanted`` that the table has rows for."""
    present = set(table["objective"])
    return [o for o in wanted if o in present]


def select(table: pd.DataFrame, objective: str | None = None, size: str | None = None):
    """Rows of one objective and/or size; ValueError naming the cell if there are none."""
    sub = table
    if objective is not None:
        sub = sub[sub["objective"] == objective]
    if size is not None:
        sub = sub[sub["size"] == size]
    if sub.empty:
        cell = ", ".join(f"{k} {v!r}" for k, v in (("objective", objective), ("size", size)) if v)
        raise ValueError(f"the checkpoint table has no rows for {cell}")
    return sub


PAPER_SIZES = {"1b": "1B", "2.8b": "2.8B", "6.9b": "6.9B"}
"""The Pythia shapes the paper's LLM figure names carry (``..._1B``, ``..._2.8B``, ``..._6.9B``):
``llm.model.PYTHIA_SHAPES`` key → the paper's spelling."""


def paper_size(size: str) -> str | None:
    """The paper's size label of a model that has one of its Pythia shapes, else None.

    Only these spellings count: the ``llm.model.PYTHIA_SHAPES`` key (``1b``), the hub name
    (``pythia-1b``, ``EleutherAI/pythia-1b``, and ``-deduped``), any letter case. Anything else
    (``tiny``, ``14m``, ``pythia-160m``, ``1b-ish``) has none: a model is never given a paper size
    it is not.
    """
    name = str(size).strip().lower()
    if name.startswith("eleutherai/"):
        name = name.removeprefix("eleutherai/")
    name = name.removeprefix("pythia-").removesuffix("-deduped")
    return PAPER_SIZES.get(name)


def file_size(size: str) -> str:
    """A size inside a file name: the paper's label for a Pythia 1B / 2.8B / 6.9B shape
    (``paper_size``), else the size name with characters unsafe in a file name replaced."""
    label = paper_size(size)
    if label is not None:
        return label
    return "".join(c if c.isalnum() or c in ".-_" else "-" for c in str(size))


def beta_label(beta: float) -> str:
    """A β legend entry (the legend's title says β)."""
    return f"{beta:g}"


def spearman(x: pd.Series, y: pd.Series) -> float:
    """Spearman rank correlation (NaN with fewer than 3 points or a constant variable)."""
    ok = x.notna() & y.notna()
    if ok.sum() < 3 or x[ok].nunique() < 2 or y[ok].nunique() < 2:
        return np.nan
    return float(x[ok].rank().corr(y[ok].rank()))


def spearman_within(table: pd.DataFrame, x: str, y: str, by: str = "beta") -> pd.Series:
    """Spearman ρ(x, y) within each level of ``by`` (index: the level). Where the scale of a
    column changes with ``by`` (IPO's loss (h − 1/(2β))² spans ~10⁴ over a β grid), a pooled
    ρ mostly ranks the levels against each other; within-level ρ does not."""
    return table.groupby(by)[[x, y]].apply(lambda g: spearman(g[x], g[y]))


NO_WIN_RATE = "no win rate: every value is NaN\n(runs evaluated with judge 'none'?)"
"""What a win-rate panel without a single value says in its middle."""


def say_if_empty(ax, values: pd.Series, text: str = NO_WIN_RATE) -> bool:
    """Write ``text`` in the middle of ``ax`` when ``values`` has no finite value (a figure of
    runs evaluated with judge ``none``: its win rates are NaN), so an empty panel is never
    silent; return whether it did."""
    if np.isfinite(pd.to_numeric(values, errors="coerce")).any():
        return False
    ax.text(0.5, 0.5, text, transform=ax.transAxes, ha="center", va="center", fontsize=8,
            color="firebrick")  # fmt: skip
    return True


class Writer:
    """Saves figures as PNG + PDF with a caption file under ``out/<kind>/``."""

    def __init__(self, out: str | Path, kind: str, source: str) -> None:
        self.folder = Path(out) / kind
        self.source = source
        self.written: list[Path] = []

    def save(self, fig: Figure, name: str, caption: str) -> None:
        self.written.extend(style.save_figure(fig, self.folder / f"{name}.png", pdf=True))
        text = f"{name}: {caption}\n{self.source}\n"
        self.written.append(style.write_caption(self.folder / f"{name}.txt", text))
