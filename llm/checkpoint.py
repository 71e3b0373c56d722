"""Atomic training checkpoints: safetensors weights + optimizer + scheduler + RNG + data position.

A checkpoint is a folder ``step-0000123/`` holding ``model.safetensors`` and ``config.json``
(written by ``save_pretrained``, so the folder loads with ``from_pretrained`` as a model), the
tokenizer files, and ``trainer_state.pt`` (optimizer, scheduler, torch RNG, step, examples seen).
Weights are restored through ``from_pretrained``. A checkpoint is written into a temporary
folder, flushed to disk, and moved into place with ``os.replace``;
only then is the pointer file ``latest.json`` rewritten (temp file + ``os.replace``). A run killed
at any moment therefore leaves ``latest.json`` naming a complete checkpoint, or no pointer.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch

__all__ = ["LATEST", "latest_checkpoint", "load_checkpoint", "save_checkpoint", "write_atomic"]

LATEST = "latest.json"
STATE = "trainer_state.pt"


def _fsync_tree(folder: Path) -> None:
    for path in folder.rglob("*"):
        if path.is_file():
            with path.open("rb") as f:
                os.fsync(f.fileno())


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and ``os.replace``."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with tmp.open("w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def save_checkpoint(
    root: Path,
    *,
    step: int,
    model: Any,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    state: dict[str, Any],
    tokenizer: Any | None = None,
) -> Path:
    """Write checkpoint ``root/step-{step:07d}`` atomically and point ``root/latest.json`` at it.

    Args:
        root: the run folder.
        step: optimizer steps taken so far (the data position is derived from it).
        model: a transformers model (``save_pretrained`` writes safetensors + config).
        optimizer: its ``state_dict`` is saved.
        scheduler: its ``state_dict`` is saved.
        state: extra JSON-able or tensor state (examples seen, config, ...).
        tokenizer: saved beside the weights when given, so the folder is a loadable model.

    Returns:
        The checkpoint folder.
    """
    root.mkdir(parents=True, exist_ok=True)
    name = f"step-{step:07d}"
    final = root / name
    tmp = root / f".{name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # "Writing model shards" would break the training bar
    try:
        model.save_pretrained(tmp, safe_serialization=True)
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    if tokenizer is not None:
        tokenizer.save_pretrained(tmp)
    torch.save(
        {
            "step": step,
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "torch_rng": torch.get_rng_state(),
            **state,
        },
        tmp / STATE,
    )
    _fsync_tree(tmp)
    if final.exists():  # left by a run killed between the move and the pointer update
        shutil.rmtree(final)
    os.replace(tmp, final)
    write_atomic(root / LATEST, json.dumps({"checkpoint": name, "step": step}) + "\n")
    return final


def latest_checkpoint(root: Path) -> Path | None:
    """The folder ``root/latest.json`` points at, or None when there is no complete checkpoint."""
    pointer = root / LATEST
    if not pointer.is_file():
        return None
    folder = root / json.loads(pointer.read_text(encoding="utf-8"))["checkpoint"]
    return folder if (folder / STATE).is_file() else None


def load_checkpoint(
    folder: Path, *, model: Any, optimizer: torch.optim.Optimizer, scheduler: Any
) -> dict[str, Any]:
    """Restore weights, optimizer, scheduler and the torch RNG from ``folder``; return its state
    dict (with ``step`` and whatever ``save_checkpoint`` was given)."""
    # from_pretrained maps the saved tensor names (e.g. Pythia's ``embed_out``) to the in-memory
    # ones (``lm_head`` in transformers 5), so the weights go through the real loading code.
    from transformers import AutoModelForCausalLM

    dtype = next(model.parameters()).dtype
    saved = AutoModelForCausalLM.from_pretrained(str(folder), dtype=dtype)
    model.load_state_dict(saved.state_dict(), strict=True)
    del saved
    state = torch.load(folder / STATE, map_location="cpu", weights_only=False)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["torch_rng"])
    return state
