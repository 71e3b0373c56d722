"""Shared helpers of the benchmark scripts: machine description, best-of timing, bandwidth."""

from __future__ import annotations

import os
import platform
import subprocess
import time
from collections.abc import Callable
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode


def machine() -> str:
    """CPU model, core count, torch threads and the load average right now."""
    model = platform.processor() or "cpu"
    try:
        with open("/proc/cpuinfo") as info:
            names = [line for line in info if line.startswith("model name")]
        model = names[0].split(":", 1)[1].strip() if names else model
    except OSError:
        pass
    load = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    return (
        f"{model}, {os.cpu_count()} cores, torch {torch.__version__} "
        f"({torch.get_num_threads()} threads); uptime: {load}"
    )


def best_of(repeats: int, fn: Callable[[], Any]) -> tuple[float, list[float], Any]:
    """Run ``fn`` ``repeats`` times; (best seconds, all seconds, last result)."""
    times, out = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return min(times), times, out


def copy_bandwidth(mib: int = 512, repeats: int = 5) -> float:
    """Memory bandwidth in bytes/s from a large float64 tensor copy (reads + writes counted)."""
    src = torch.ones(mib * 2**20 // 8, dtype=torch.float64)
    dst = torch.empty_like(src)
    dst.copy_(src)  # touch the pages first
    best, _, _ = best_of(repeats, lambda: dst.copy_(src))
    return 2 * src.nbytes / best


class ByteCounter(TorchDispatchMode):
    """Counts the bytes of every tensor each aten op reads and writes (inputs + outputs).

    With no cache reuse this is the memory traffic of the tensor program: a lower bound on its
    time is bytes / bandwidth.
    """

    def __init__(self) -> None:
        super().__init__()
        self.bytes = 0
        self.ops = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self.ops += 1
        for x in [*_flat(args), *_flat(kwargs or {}), *_flat(out)]:
            if isinstance(x, torch.Tensor):
                self.bytes += x.numel() * x.element_size()
        return out


def _flat(x: Any) -> list[Any]:
    if isinstance(x, list | tuple):
        return [y for item in x for y in _flat(item)]
    if isinstance(x, dict):
        return [y for item in x.values() for y in _flat(item)]
    return [x]
