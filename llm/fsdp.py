"""Sharded data parallel training with PyTorch's FSDP2 (``torch.distributed.fsdp.fully_shard``).

``shard_model`` shards a transformers causal LM over all processes: each decoder block
(``model._no_split_modules``) is one FSDP unit, the base model (input embedding and final norm)
another, the output projection a third, and the whole model the root. The output projection is
its own unit because the response-only log-prob path (``llm.logprobs.response_logps``) calls
``model.base_model`` and ``model.get_output_embeddings()`` directly instead of ``model(...)``:
each of the two then gathers its own weights in its own FSDP pre-forward hook and
reduce-scatters its own gradients in backward.

Gradients are summed over processes (divide factor 1), as ``llm.train`` expects: every rank adds
Σ loss / G of its share of the global batch. Optional mixed precision computes in bf16 on fp32
master weights and reduces gradients in fp32 (``MixedPrecisionPolicy``).

Checkpoints (``save_sharded_checkpoint``): the folder ``step-NNNNNNN/`` keeps the layout of
``llm.checkpoint`` (``model.safetensors`` + ``config.json`` that ``from_pretrained`` loads, the
tokenizer, ``trainer_state.pt``, ``checksums.json``, written into a temporary folder and moved
into place) and adds ``dcp/``: the sharded model and optimizer state written by every rank with
``torch.distributed.checkpoint`` (a shared file system is needed across nodes). Resuming reads
``dcp/``, on any number of processes.
"""

from __future__ import annotations

import os
import shutil
import socket
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import Tensor, nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_state_dict,
    set_state_dict,
)
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard

from llm.checkpoint import STATE, checkpoint_name, publish_checkpoint, verify_checkpoint
from llm.model import progress_bars_off

__all__ = [
    "DCP",
    "export_weights",
    "init_distributed",
    "is_sharded",
    "load_sharded_checkpoint",
    "save_sharded_checkpoint",
    "shard_model",
]

DCP = "dcp"
"""Subfolder of a checkpoint holding the sharded model and optimizer state."""


def init_distributed(device: torch.device) -> None:
    """Start the default process group (NCCL on CUDA, gloo on CPU) if none is running.

    Under ``torchrun`` the rendezvous comes from its environment; a plain one-process run
    (``--fsdp on`` without torchrun) gets a group of one on a free local port.
    """
    if dist.is_initialized():
        return
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":  # "cuda" without an index: this process's LOCAL_RANK GPU
        index = device.index if device.index is not None else int(os.environ.get("LOCAL_RANK", 0))
        torch.cuda.set_device(index)
    if "MASTER_ADDR" in os.environ:
        dist.init_process_group(backend)
        return
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)


def is_sharded(model: nn.Module) -> bool:
    """Whether ``fully_shard`` was applied to ``model`` (or any of its submodules)."""
    return any(isinstance(m, FSDPModule) for m in model.modules())


def shard_model(
    model: nn.Module, *, mixed_precision: bool = False, reshard_after_forward: bool = True
) -> nn.Module:
    """Shard ``model`` in place over the default process group with FSDP2.

    Args:
        model: a transformers causal LM on its device (CPU with gloo, or the rank's GPU),
            float32 for a trained policy; a frozen reference (``requires_grad`` off) works too.
        mixed_precision: compute in bf16 (weights gathered in bf16), keep float32 master weights
            and reduce gradients in float32. Needs a float32 model.
        reshard_after_forward: free the gathered weights of each block after its forward
            (ZeRO-3; False keeps them until backward, ZeRO-2-like, more memory, less traffic).

    Returns:
        ``model`` itself, now an ``FSDPModule`` whose parameters are DTensors.
    """
    if not dist.is_initialized():
        raise ValueError("shard_model needs a process group: call init_distributed first")
    dtypes = {p.dtype for p in model.parameters()}
    if mixed_precision and dtypes != {torch.float32}:
        raise ValueError(f"mixed_precision needs a float32 model; got {sorted(map(str, dtypes))}")
    device = next(model.parameters()).device
    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    policy = (
        MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
        if mixed_precision
        else MixedPrecisionPolicy()
    )
    kw = {"mesh": mesh, "mp_policy": policy, "reshard_after_forward": reshard_after_forward}
    block_types = set(getattr(model, "_no_split_modules", None) or ())
    blocks = [m for m in model.modules() if type(m).__name__ in block_types]
    if not blocks:
        raise ValueError(f"no decoder blocks ({block_types or 'no _no_split_modules'}) to shard")
    for block in blocks:
        fully_shard(block, **kw)
    head = model.get_output_embeddings()
    # The head's output is log-softmaxed in float32; cast it back so no bf16 logits leak out.
    head_policy = (
        MixedPrecisionPolicy(
            param_dtype=torch.bfloat16, reduce_dtype=torch.float32, output_dtype=torch.float32
        )
        if mixed_precision
        else policy
    )
    fully_shard(head, **{**kw, "mp_policy": head_policy})
    fully_shard(model.base_model, **kw)
    fully_shard(model, **kw)
    for m in model.modules():
        if isinstance(m, FSDPModule):
            m.set_gradient_divide_factor(1.0)  # sum over ranks, as llm.train's loss scaling wants
            if device.type != "cuda" and hasattr(m, "set_force_sum_reduction_for_comms"):
                m.set_force_sum_reduction_for_comms(True)  # gloo has no PREMUL_SUM (scaled sum)
    return model


def export_weights(model: nn.Module) -> dict[str, Tensor]:
    """The full (unsharded) state dict on the CPU on rank 0, an empty dict elsewhere.
    A collective: every rank must call it."""
    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return get_model_state_dict(model, options=options)


def save_sharded_checkpoint(
    root: Path,
    *,
    step: int,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    state: dict[str, Any],
    tokenizer: Any | None = None,
) -> Path:
    """Write checkpoint ``root/step-{step:07d}`` from every rank and point ``root/latest.json``
    at it (a collective; rank 0 writes everything but the shards).

    The folder holds the sharded model and optimizer (``dcp/``), the full weights as
    ``model.safetensors`` + ``config.json`` (loadable with ``from_pretrained``), the tokenizer,
    and ``trainer_state.pt`` (step, scheduler, torch RNG, ``state``). Written into a temporary
    folder and moved into place only when complete, like ``llm.checkpoint.save_checkpoint``.

    Returns:
        The checkpoint folder.
    """
    rank = dist.get_rank()
    final = root / checkpoint_name(step)
    tmp = final.with_name(f".{final.name}.sharded.tmp")  # one name on every rank
    if rank == 0:
        root.mkdir(parents=True, exist_ok=True)
        if tmp.exists():  # left by a killed run
            shutil.rmtree(tmp)
        tmp.mkdir()
    dist.barrier()
    model_sd, optim_sd = get_state_dict(model, optimizer)
    dcp.save({"model": model_sd, "optimizer": optim_sd}, checkpoint_id=str(tmp / DCP))
    full = export_weights(model)
    if rank == 0:
        _save_pretrained(model, full, tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        torch.save(
            {
                "step": step,
                "scheduler": scheduler.state_dict(),
                "torch_rng": torch.get_rng_state(),
                "sharded": dist.get_world_size(),
                **state,
            },
            tmp / STATE,
        )
        publish_checkpoint(tmp, final)
    dist.barrier()
    return final


def _save_pretrained(model: nn.Module, state_dict: dict[str, Tensor], folder: Path) -> None:
    # An unsharded twin built on the meta device takes the gathered tensors, so save_pretrained
    # sees the model's own class and writes the names from_pretrained expects (embed_out).
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        twin = AutoModelForCausalLM.from_config(model.config)
    twin.load_state_dict(state_dict, strict=True, assign=True)
    with progress_bars_off():
        twin.save_pretrained(folder)  # safetensors: the only format of transformers 5


def load_sharded_checkpoint(
    folder: Path, *, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any
) -> dict[str, Any]:
    """Restore a sharded model, its optimizer, the scheduler and the torch RNG from ``folder``
    (written by ``save_sharded_checkpoint``, on any number of processes); return its state.
    A collective. ValueError naming the problem when ``folder`` has no shards or is damaged."""
    verify_checkpoint(folder)
    if not (folder / DCP).is_dir():
        raise ValueError(
            f"checkpoint {folder} has no sharded state ({DCP}/): it was written without FSDP; "
            "resume it without --fsdp, or start a new run folder"
        )
    model_sd, optim_sd = get_state_dict(model, optimizer)
    sd = {"model": model_sd, "optimizer": optim_sd}
    dcp.load(sd, checkpoint_id=str(folder / DCP))
    set_state_dict(model, optimizer, model_state_dict=sd["model"], optim_state_dict=sd["optimizer"])
    state = torch.load(folder / STATE, map_location="cpu", weights_only=False)
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["torch_rng"])
    return state
