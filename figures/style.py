"""The one place for figure style: seaborn theme, colours per objective / β / size, saving.

Figures are built with matplotlib's object API (no global pyplot state beyond creating the
figure) and saved atomically as PNG (and PDF when asked).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display is needed or assumed

import matplotlib.pyplot as plt
import seaborn as sns
from matplotlib.figure import Figure

from treemdp.runs import atomic_write

__all__ = [
    "OBJECTIVE_COLORS",
    "beta_colors",
    "capacity_colors",
    "new_figure",
    "save_figure",
    "set_style",
    "write_caption",
]

OBJECTIVE_COLORS = {"dpo": "#1f77b4", "ipo": "#2ca02c", "slic": "#d62728", "rdpo": "#9467bd"}
"""Fixed colours for the paper's objectives, the same in every figure."""

PANEL_WIDTH, PANEL_HEIGHT = 4.2, 3.2
PDF_METADATA = {"CreationDate": None}
"""PDF metadata: no creation date, so the same figure is the same bytes (reproducible)."""


def set_style() -> None:
    """The project's seaborn theme."""
    sns.set_theme(context="notebook", style="whitegrid", font_scale=0.9)


def beta_colors(betas: Sequence[float]) -> dict[float, tuple[float, float, float]]:
    """One colour per β, ordered from small (light) to large (dark), consistent across figures."""
    ordered = sorted(set(betas))
    palette = sns.color_palette("viridis_r", n_colors=max(len(ordered), 1))
    return dict(zip(ordered, palette, strict=True))


def new_figure(n_panels: int, *, sharey: bool = True) -> tuple[Figure, list]:
    """A row of ``n_panels`` axes in the house size."""
    set_style()
    fig, axes = plt.subplots(
        1,
        n_panels,
        figsize=(PANEL_WIDTH * n_panels, PANEL_HEIGHT),
        sharey=sharey,
        squeeze=False,
        constrained_layout=True,
    )
    return fig, list(axes[0])


def save_figure(fig: Figure, path: str | Path, *, pdf: bool = False) -> list[Path]:
    """Save ``fig`` to ``path`` (PNG) and optionally a PDF beside it, atomically; closes it.

    Both files depend on the figure only, not on when it was drawn: the PNG carries no time, and
    the PDF's ``CreationDate`` is left out (``PDF_METADATA``), so a figure redrawn from the same
    table on the same machine is the same bytes."""
    path = Path(path)
    written = [atomic_write(path, lambda p: fig.savefig(p, format="png", dpi=150))]
    if pdf:
        pdf_path = path.with_suffix(".pdf")
        written.append(
            atomic_write(pdf_path, lambda p: fig.savefig(p, format="pdf", metadata=PDF_METADATA))
        )
    plt.close(fig)
    return written


def write_caption(path: str | Path, text: str) -> Path:
    """Write a figure's caption file (what data it shows) atomically."""
    return atomic_write(path, lambda p: p.write_text(text))


def capacity_colors(names: Sequence[str]) -> dict[str, tuple[float, float, float]]:
    """One colour per model capacity (or size), in the given order from small to large."""
    ordered = list(dict.fromkeys(names))
    palette = sns.color_palette("flare", n_colors=max(len(ordered), 1))
    return dict(zip(ordered, palette, strict=True))
