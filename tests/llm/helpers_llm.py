"""Helpers shared by the llm tests (a module, not a conftest, so tests can import them)."""

from __future__ import annotations

import copy
import os
from pathlib import Path

import torch

from tests.scripts import load_script

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
    return load_script("experiments/llm_train.py")


def subprocess_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT))
    return env
