"""Where and in what precision the toy trains: ``--device cpu|cuda|auto`` and ``--precision``.

A problem is built on the CPU in float64 (seeds, draws and the SFT fit are the same whatever
the device) and moved whole (``to_device``: every tensor of its tree, policy, pairs and cached
values) to the device that trains it; training creates its own tensors there
(``placement``), and the History comes back on the CPU in float64.

float64 is the default and the reference. float32 is an option for speed on a GPU; it checks
itself (``train``'s ``check_sample``): a sample of the runs is trained again in float64 and
every logged metric compared; beyond ``FLOAT32_TOLERANCE`` it refuses (``PrecisionError``).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor

__all__ = [
    "DEVICES",
    "FLOAT32_TOLERANCE",
    "PRECISIONS",
    "PrecisionError",
    "check_precision",
    "default_dtype",
    "placement",
    "resolve_device",
    "to_device",
]

DEVICES = "cpu, cuda, cuda:N or auto (cuda when one is visible, else cpu)"
"""What ``--device`` takes (the help text and the error messages say it)."""

PRECISIONS = {"float64": torch.float64, "float32": torch.float32}
"""``--precision`` → dtype; float64 is the default and the reference."""

FLOAT32_TOLERANCE = 1e-3
"""The largest |float32 − float64| / (1 + |float64|) allowed on any logged metric of the sampled
runs: absolute for the O(1) metrics (masses, win rate), relative for large ones (KL, an IPO
loss). Measured at most 3.6e-5 on 54 runs (dpo, ipo, slic × β 0.01, 0.1, 0.5 × 6 seeds, b=3,
D=3, 2000 Adam steps at lr 0.01; docs/scale.md): 25× headroom."""


class PrecisionError(ValueError):
    """float32 training strayed from float64 beyond ``FLOAT32_TOLERANCE``."""


def resolve_device(name: str | torch.device | None) -> torch.device:
    """``torch.device`` for a ``--device`` value: ``auto`` (or None) is cuda when one is visible,
    else cpu. ValueError in one line for a device this torch cannot use (``cuda`` without one)."""
    if name is None or str(name) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    from treemdp.runs.cli import check_device  # the flag metadata's module: no I/O

    device = check_device(str(name))
    if device.type == "mps":
        raise ValueError(f"--device {name}: the toy trains on cpu or cuda; use {DEVICES}")
    return device


def check_precision(name: str) -> torch.dtype:
    """The dtype of a ``--precision`` value; ValueError naming the allowed ones."""
    if name not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}; got {name!r}")
    return PRECISIONS[name]


def to_device(obj: Any, device: torch.device, dtype: torch.dtype) -> Any:
    """A copy of ``obj`` (a Problem, Tree, Policy, Pairs, ... or containers of them) with every
    tensor on ``device`` and every floating tensor in ``dtype``; integer and bool tensors keep
    their dtype. Shared objects stay shared (one tree for the problem and its policy), cached
    values (``cached_property``) are moved with the rest; ``obj`` is not changed."""
    return _moved(obj, device, dtype, {})


def _moved(obj: Any, device: torch.device, dtype: torch.dtype, memo: dict[int, Any]) -> Any:
    if id(obj) in memo:
        return memo[id(obj)]
    if isinstance(obj, Tensor):
        out = obj.to(device=device, dtype=dtype if obj.is_floating_point() else obj.dtype)
    elif dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        out = copy.copy(obj)
        memo[id(obj)] = out
        for key, value in vars(obj).items():
            object.__setattr__(out, key, _moved(value, device, dtype, memo))
        return out
    elif isinstance(obj, dict):
        out = {k: _moved(v, device, dtype, memo) for k, v in obj.items()}
    elif isinstance(obj, list | tuple) and not hasattr(obj, "_fields"):
        out = type(obj)(_moved(v, device, dtype, memo) for v in obj)
    else:
        return obj  # numbers, strings, functions: as they are
    memo[id(obj)] = out
    return out


@contextlib.contextmanager
def default_dtype(dtype: torch.dtype) -> Iterator[None]:
    """Floating tensors created in the block default to ``dtype``; the previous default is
    restored after, so a caller in the same process (a test, a notebook) keeps its own."""
    before = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(before)


@contextlib.contextmanager
def placement(device: torch.device, dtype: torch.dtype) -> Iterator[None]:
    """Tensors created in the block without an explicit device go to ``device`` and floating
    ones default to ``dtype``; both restored after. On the CPU no device mode is entered (it
    would intercept every torch call of the training loop for nothing)."""
    on_device = torch.device(device) if device.type != "cpu" else contextlib.nullcontext()
    with default_dtype(dtype), on_device:
        yield
