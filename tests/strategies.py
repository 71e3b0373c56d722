"""Shared hypothesis strategies (see DESIGN.md: strategies live here, profiles in conftest.py)."""

from __future__ import annotations

import math

import numpy as np
from hypothesis import strategies as st

from treemdp.scaling import FORMS

scaling_forms = st.sampled_from(sorted(FORMS))

non_finite = st.sampled_from([math.nan, math.inf, -math.inf])


@st.composite
def d_grids(draw: st.DrawFn, *, min_size: int = 5, max_size: int = 25) -> np.ndarray:
    """Distinct d = √KL values on a 0.1 lattice in [0, 10], shuffled: shape (N,), N ≥ min_size.

    The lattice keeps points at least 0.1 apart, so every form's design matrix is well conditioned
    and round-off cannot mask a real difference between two fits.
    """
    ticks = draw(st.lists(st.integers(0, 100), min_size=min_size, max_size=max_size, unique=True))
    return np.asarray(ticks, dtype=np.float64) / 10.0


@st.composite
def curve_points(draw: st.DrawFn, *, min_size: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """(d, y): a d grid and arbitrary bounded y of the same shape (N,)."""
    d = draw(d_grids(min_size=min_size))
    y = draw(
        st.lists(
            st.floats(-10, 10, allow_nan=False, allow_infinity=False),
            min_size=d.size,
            max_size=d.size,
        )
    )
    return d, np.asarray(y, dtype=np.float64)
