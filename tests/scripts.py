"""Load experiment and figure scripts as modules, and run them as a user would (subprocess)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[1]


def load_script(relative: str) -> ModuleType:
    """Import ``ROOT/relative`` (e.g. "experiments/ood_mass.py") under its file stem."""
    path = ROOT / relative
    name = f"_script_{path.stem}"
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses resolve their annotations through sys.modules
    spec.loader.exec_module(module)
    return module


def run_script(relative: str, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run ``python ROOT/relative ARGS`` from the repository root; capture text output."""
    return subprocess.run(
        [sys.executable, str(ROOT / relative), *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=timeout,
    )
