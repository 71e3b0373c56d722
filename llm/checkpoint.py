"""Atomic training checkpoints: safetensors weights + optimizer + scheduler + RNG + data position.

This module is the one definition of the checkpoint layout: ``checkpoint_name`` /
``checkpoint_step`` (the folder name ``step-NNNNNNN``), ``STATE`` (the trainer-state file that
makes a folder complete), ``checkpoint_folders`` and ``complete_checkpoints``.

A checkpoint is a folder ``step-0000123/`` holding ``model.safetensors`` and ``config.json``
(written by ``save_pretrained``, so the folder loads with ``from_pretrained`` as a model), the
tokenizer files, and ``trainer_state.pt`` (optimizer, scheduler, torch RNG, step, examples seen).
Weights are restored through ``from_pretrained``. A checkpoint is written into a temporary
folder, flushed to disk, and moved into place with ``os.replace``;
only then is the pointer file ``latest.json`` rewritten (temp file + ``os.replace``). A run killed
at any moment therefore leaves ``latest.json`` naming a complete checkpoint, or no pointer.

Every checkpoint also holds ``checksums.json`` (sha256 and size of each of its files, written
before the folder is moved into place); ``load_checkpoint`` verifies them, so a truncated or
altered checkpoint is reported by file, with what to do, instead of being resumed from.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
from pathlib import Path
from typing import Any

import torch

from llm.model import progress_bars_off
from treemdp.runs import (
    atomic_write_text,
    file_sha256,
    temporary_path,
    verify_listing,
    write_listing,
)

__all__ = [
    "CHECKSUMS",
    "LATEST",
    "STATE",
    "checkpoint_digest",
    "checkpoint_folders",
    "checkpoint_name",
    "checkpoint_step",
    "complete_checkpoints",
    "latest_checkpoint",
    "load_checkpoint",
    "publish_checkpoint",
    "save_checkpoint",
    "verify_checkpoint",
]

LATEST = "latest.json"
STATE = "trainer_state.pt"
CHECKSUMS = "checksums.json"
WEIGHTS = "model.safetensors"
_NAME = re.compile(r"step-(\d+)")


def verify_checkpoint(folder: Path) -> None:
    """Check every file of checkpoint ``folder`` against its ``checksums.json`` (size, then
    sha256); ValueError naming the file and what to do. Checkpoints written before checksums
    existed (no ``checksums.json``) are only checked for ``trainer_state.pt``."""
    what_to_do = (
        f"delete {folder} and point {folder.parent / LATEST} at an earlier checkpoint "
        "(or rerun without --resume to start afresh)"
    )
    if not (folder / CHECKSUMS).is_file():
        if not (folder / STATE).is_file():
            raise ValueError(f"checkpoint {folder} lacks {STATE}; {what_to_do}")
        return
    verify_listing(folder, CHECKSUMS, what_to_do, kind="checkpoint file")


def _fsync_tree(folder: Path) -> None:
    for path in folder.rglob("*"):
        if path.is_file():
            with path.open("rb") as f:
                os.fsync(f.fileno())


def _interned(obj: Any) -> Any:
    """``obj`` with every string interned (dicts, lists and tuples rebuilt around them).

    pickle writes a string once and refers back to it by object identity, so equal state
    pickles to different bytes when its keys are different str objects: an optimizer state read
    back from a checkpoint (after a resume) holds fresh copies of "step" where an uninterrupted
    run holds the interned literal. Interned, the bytes depend on the values only.
    """
    if type(obj) is str:
        return sys.intern(obj)
    if isinstance(obj, dict):
        return {_interned(k): _interned(v) for k, v in obj.items()}
    if type(obj) in (list, tuple):
        return type(obj)(_interned(v) for v in obj)
    return obj


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
    final = root / checkpoint_name(step)
    tmp = temporary_path(final)
    with progress_bars_off():  # "Writing model shards" would break the training bar
        model.save_pretrained(tmp)  # safetensors: the only format of transformers 5
    if tokenizer is not None:
        tokenizer.save_pretrained(tmp)
    trainer_state = {
        "step": step,
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "torch_rng": torch.get_rng_state(),
        **state,
    }
    torch.save(_interned(trainer_state), tmp / STATE)
    return publish_checkpoint(tmp, final)


def checkpoint_name(step: int) -> str:
    """The folder name of the checkpoint after ``step`` optimizer steps: ``step-NNNNNNN``."""
    return f"step-{step:07d}"


def checkpoint_step(folder: str | Path) -> int:
    """The optimizer steps of checkpoint ``folder`` (the inverse of ``checkpoint_name``);
    ValueError for a name that is not ``step-NNNNNNN``."""
    match = _NAME.fullmatch(Path(folder).name)
    if match is None:
        raise ValueError(f"{folder} is not a checkpoint folder name (step-NNNNNNN)")
    return int(match.group(1))


def publish_checkpoint(tmp: Path, final: Path) -> Path:
    """Move the complete checkpoint written in ``tmp`` to ``final`` and point ``latest.json`` at
    it: checksums listed, files flushed, folder renamed, then the pointer rewritten atomically."""
    write_listing(tmp, CHECKSUMS)
    _fsync_tree(tmp)
    if final.exists():  # left by a run killed between the move and the pointer update
        shutil.rmtree(final)
    os.replace(tmp, final)
    step = checkpoint_step(final)
    pointer = json.dumps({"checkpoint": final.name, "step": step}) + "\n"
    atomic_write_text(final.parent / LATEST, pointer)
    return final


def latest_checkpoint(root: Path) -> Path | None:
    """The folder ``root/latest.json`` points at, or None when there is no pointer (no checkpoint
    was completed). ValueError when the pointer is corrupt or names a missing or incomplete folder
    (with the latest complete checkpoint to point it at)."""
    pointer = root / LATEST
    if not pointer.is_file():
        return None
    try:
        folder = root / json.loads(pointer.read_text(encoding="utf-8"))["checkpoint"]
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as e:
        raise ValueError(
            f"{pointer} is corrupt ({e!r}); delete it to start afresh, or write "
            '{"checkpoint": "step-NNNNNNN"} naming a complete checkpoint folder to resume from'
        ) from None
    if (folder / STATE).is_file():
        return folder
    # A pointer never names an incomplete folder (it is rewritten after the move); a user or a
    # tool removed it. Starting from step 0 would silently redo (and overwrite) the run.
    complete = complete_checkpoints(root)
    hint = (
        f'write {{"checkpoint": "{complete[-1].name}"}} into it to resume from the latest '
        "complete checkpoint"
        if complete
        else "no complete checkpoint is left: delete it (and the run folder's log.csv) to start "
        "afresh"
    )
    raise ValueError(f"{pointer} names {folder.name}, which is missing or incomplete; {hint}")


def checkpoint_folders(root: str | Path) -> list[Path]:
    """Every checkpoint folder ``root/step-NNNNNNN``, complete or not, by step (temporary
    folders being written, ``.step-NNNNNNN.tmp-*``, are not among them)."""
    found = [p for p in Path(root).glob("step-*") if _NAME.fullmatch(p.name) and p.is_dir()]
    return sorted(found, key=checkpoint_step)


def complete_checkpoints(root: str | Path) -> list[Path]:
    """The checkpoint folders ``root/step-NNNNNNN`` that hold a trainer state, by step."""
    return [p for p in checkpoint_folders(root) if (p / STATE).is_file()]


def checkpoint_digest(folder: Path) -> str:
    """The sha256 of checkpoint ``folder``'s weights (``model.safetensors``), as recorded in its
    ``checksums.json`` (computed when the checkpoint has none): what an evaluation row measured."""
    listing = folder / CHECKSUMS
    if listing.is_file():
        try:
            entry = json.loads(listing.read_text(encoding="utf-8")).get(WEIGHTS)
        except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
            entry = None
        if isinstance(entry, dict) and isinstance(entry.get("sha256"), str):
            return entry["sha256"]
    return file_sha256(folder / WEIGHTS)


def load_checkpoint(
    folder: Path, *, model: Any, optimizer: torch.optim.Optimizer, scheduler: Any
) -> dict[str, Any]:
    """Restore weights, optimizer, scheduler and the torch RNG from ``folder``; return its state
    dict (with ``step`` and whatever ``save_checkpoint`` was given). ValueError naming the file
    when the checkpoint is truncated or altered (``verify_checkpoint``)."""
    # from_pretrained maps the saved tensor names (e.g. Pythia's ``embed_out``) to the in-memory
    # ones (``lm_head`` in transformers 5), so the weights go through the real loading code.
    from transformers import AutoModelForCausalLM

    verify_checkpoint(folder)
    dtype = next(model.parameters()).dtype
    saved = AutoModelForCausalLM.from_pretrained(str(folder), dtype=dtype)
    model.load_state_dict(saved.state_dict(), strict=True)
    del saved
    state = torch.load(folder / STATE, map_location="cpu", weights_only=False)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["torch_rng"])
    return state
