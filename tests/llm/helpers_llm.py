"""Helpers shared by the llm tests (a module, not a conftest, so tests can import them)."""

from __future__ import annotations

import copy
import importlib.util
import os
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]


def perturbed(model, seed: int = 1, scale: float = 0.05):
    """A copy of ``model`` with every weight moved by Gaussian noise (a policy ≠ reference)."""
    out = copy.deepcopy(model)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in out.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g))
    return out


def load_cli():
    """experiments/llm_train.py as a module (experiments is not a package)."""
    path = ROOT / "experiments" / "llm_train.py"
    spec = importlib.util.spec_from_file_location("llm_train_cli", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("llm_train_cli", module)
    spec.loader.exec_module(module)
    return module


def subprocess_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT))
    return env
