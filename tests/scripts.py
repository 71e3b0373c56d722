"""Load experiment scripts as modules, and run scripts as a user would (subprocess).

The figures are a package: tests import them as ``figures.<module>``."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[1]


def load_script(relative: str) -> ModuleType:
    """Import ``ROOT/relative`` (e.g. "experiments/ood_mass.py") under its file stem.

    The script's folder goes on ``sys.path`` as when Python runs the script, so the sibling
    scripts it imports (experiments/claims.py imports experiments/paper_runs.py) are found."""
    path = ROOT / relative
    if str(path.parent) not in sys.path:
        sys.path.append(str(path.parent))
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
