"""The rank side of tests/llm/test_fsdp.py: sharded training runs in processes forked from a
forkserver that has imported torch and transformers once (four rank processes would otherwise
spend most of the test importing them)."""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import socket
from pathlib import Path
from typing import Any

import torch

from llm.data import TruncationConfig, byte_tokenizer, tokenize_rows
from llm.fsdp import init_distributed, shard_model
from llm.losses import DAALoss
from llm.model import load_policy_and_reference
from llm.train import TrainConfig, train


def sharded_run(
    rows: list[dict[str, str]],
    cfg: dict[str, Any],
    out: Path,
    *,
    kill_at: int,
    resume: bool,
    shard: bool = True,
) -> None:
    """DPO (β 0.2) on ``rows`` with a sharded tiny policy and reference (full replicas with
    all-reduced gradients when ``shard`` is False); SIGKILL after step ``kill_at`` (-1: never)."""
    tok = byte_tokenizer()
    examples, _ = tokenize_rows(enumerate(rows, 1), tok, TruncationConfig())
    policy, reference = load_policy_and_reference(
        "tiny", vocab_size=len(tok), reference_dtype=torch.float32, seed=0
    )
    if shard:
        shard_model(policy)
        shard_model(reference)

    def on_step(step: int) -> None:
        if step == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)

    train(policy, examples, DAALoss("dpo", 0.2, reference=reference), TrainConfig(**cfg), out,
          pad_id=0, tokenizer=tok, resume=resume, on_step=on_step, progress=False)  # fmt: skip


def _rank(rank: int, world: int, port: int, runs: list[tuple[Any, ...]]) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))  # fmt: skip
    torch.set_num_threads(1)
    init_distributed(torch.device("cpu"))
    for rows, cfg, out, kill_at, resume, *shard in runs:
        sharded_run(rows, cfg, out, kill_at=kill_at, resume=resume, shard=shard != [False])
    torch.distributed.destroy_process_group()


def run_ranks(runs: list[tuple[Any, ...]], *, world: int = 2, timeout: float = 300) -> list[int]:
    """Run ``sharded_run(*run)`` for each run in turn on ``world`` gloo ranks; exit codes."""
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload([__name__])
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = [ctx.Process(target=_rank, args=(r, world, port, runs)) for r in range(world)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout)
        if p.exitcode is None:
            p.kill()
            p.join()
    return [p.exitcode for p in procs]
