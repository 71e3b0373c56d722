"""SFT and DAA training of a causal LM with the objectives of ``treemdp.objectives``.

The loop (``train``) is the DPO reference code's: RMSProp, linear warm-up, a global batch built by
gradient accumulation over micro-batches, gradient-norm clipping, checkpoints every so many
examples (or a given number of them, evenly spread: ``checkpoint_steps``). What a step optimises
is a ``StepLoss``: ``sft_loss`` (negative summed log-prob of the chosen response) or
``DAALoss`` (any registry objective, bound once with ``treemdp.objectives.bind``, which gives its
loss and implicit rewards). Training code never branches on the objective's name.

Data order: epoch e visits the examples in ``randperm(N, seed + e)``; the epochs are concatenated
into one stream and step s takes its positions [s·G, (s+1)·G), G = batch_size, so a checkpoint's
step fixes the data position. ``ceil(epochs · N / G)`` steps are run.

Loss scaling: every rank and micro-batch adds Σ_pairs loss / G to the gradient, and ranks sum
their gradients (all-reduce, or FSDP's reduce-scatter when the policy is sharded with
``llm.fsdp.shard_model``), so one step's gradient is that of the mean loss over the global
batch whatever the number of processes and micro-batches (up to float summation order).
"""

from __future__ import annotations

import csv
import io
import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from tqdm import tqdm

from llm.checkpoint import (
    LATEST,
    checkpoint_name,
    latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
)
from llm.data import Example
from llm.losses import StepLoss
from llm.precision import OPTIMIZERS, build_optimizer
from treemdp.runs import atomic_write_text

__all__ = [
    "TrainConfig",
    "checkpoint_steps",
    "data_stream",
    "read_log",
    "train",
]

LOG = "log.csv"


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings; the defaults are the paper's preset (the DPO reference code's)."""

    lr: float = 5e-7  # RMSProp learning rate
    warmup_steps: int = 150  # linear warm-up from lr/(warmup+1) to lr over this many steps
    batch_size: int = 128  # pairs per optimizer step (global, over all processes)
    micro_batch_size: int = 8  # pairs per forward on one process (gradient accumulation)
    max_grad_norm: float = 10.0  # gradient-norm clip
    epochs: float = 1.0  # passes over the data (fractions allowed)
    checkpoint_every: int = 19_968  # examples between checkpoints (0: only the final one)
    # checkpoints evenly spread over the run, the last at its end (checkpoint_steps); > 0
    # replaces checkpoint_every
    checkpoints: int = 0
    seed: int = 0  # data order
    log_every: int = 1  # steps between log rows
    # llm.precision.OPTIMIZERS: torch's RMSprop (state in the weights' dtype), or RMSprop with
    # float32 state whose updates are stochastically rounded into bf16 weights
    optimizer: str = "rmsprop"

    def __post_init__(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(
                f"optimizer must be one of {', '.join(OPTIMIZERS)}; got {self.optimizer!r}"
            )
        checks = {
            "lr": self.lr > 0,
            "warmup_steps": self.warmup_steps >= 0,
            "batch_size": self.batch_size >= 1,
            "micro_batch_size": self.micro_batch_size >= 1,
            "max_grad_norm": self.max_grad_norm > 0,
            "epochs": self.epochs > 0,
            "checkpoint_every": self.checkpoint_every >= 0,
            "checkpoints": self.checkpoints >= 0,
            "log_every": self.log_every >= 1,
        }
        bad = [k for k, ok in checks.items() if not ok]
        if not bad and self.batch_size % self.micro_batch_size:
            raise ValueError(
                f"batch_size ({self.batch_size}) must be a multiple of micro_batch_size "
                f"({self.micro_batch_size})"
            )
        if bad:
            k = bad[0]
            at_least_0 = ("warmup_steps", "checkpoint_every", "checkpoints")
            bound = ">= 0" if k in at_least_0 else "> 0"
            raise ValueError(f"{k} must be {bound}; got {getattr(self, k)!r}")


ADDED_LATER = {"optimizer": "rmsprop", "checkpoints": 0}
"""``TrainConfig`` fields newer than some checkpoints, with the value those checkpoints ran with."""


def data_stream(n_examples: int, n_steps: int, batch_size: int, seed: int) -> Tensor:
    """Example indices of every step: epoch permutations concatenated. Shape (n_steps, G)."""
    need = n_steps * batch_size
    n_epochs = math.ceil(need / n_examples)
    perms = [
        torch.randperm(n_examples, generator=torch.Generator().manual_seed(seed + e))
        for e in range(n_epochs)
    ]
    return torch.cat(perms)[:need].view(n_steps, batch_size)


def _world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _all_reduce_grads(params: list[nn.Parameter]) -> None:
    works = [dist.all_reduce(p.grad, async_op=True) for p in params if p.grad is not None]
    for w in works:
        w.wait()


def _is_sharded(policy: nn.Module) -> bool:
    # No FSDP module can exist before torch.distributed.fsdp is imported; importing it (and
    # llm.fsdp) only when used keeps `import llm.train` fast.
    return "torch.distributed.fsdp" in sys.modules and _fsdp().is_sharded(policy)


def _fsdp() -> Any:
    import llm.fsdp

    return llm.fsdp


def _warmup(warmup_steps: int) -> Callable[[int], float]:
    # The DPO code's LambdaLR: min(1, (step + 1) / (warmup_steps + 1)).
    return lambda step: min(1.0, (step + 1) / (warmup_steps + 1))


def _accumulate(
    policy: nn.Module,
    step_loss: StepLoss,
    examples: Sequence[Example],
    index: Tensor,
    *,
    micro: int,
    scale: int,
    pad_id: int,
) -> tuple[list[str], Tensor]:
    """Forward and backward over ``index`` in micro-batches, adding Σ loss / ``scale`` to the
    gradients. Returns the metric names and their sums, with the token count last.

    Batches stay on the host: ``llm.logprobs`` moves them (padded or packed) to each model's
    device, after its input checks and packing, which then wait for no device."""
    sums: dict[str, Tensor] = {}
    n_tokens = 0
    for i in range(0, len(index), micro):
        part = index[i : i + micro]
        b = step_loss.collate([examples[j] for j in part.tolist()], pad_id)
        n_tokens += b.n_tokens  # counted on the host: no device sync
        loss_sum, metrics = step_loss(policy, b, part)
        (loss_sum / scale).backward()
        for k, v in {"loss": loss_sum, **metrics}.items():  # summed on the device
            sums[k] = sums.get(k, 0.0) + v.detach().float()
    names = list(sums)
    values = torch.stack([sums[k] for k in names]).cpu()  # one device-to-host copy per step
    return names, torch.cat([values, torch.tensor([float(n_tokens)])])


def _check_resume(
    state: dict[str, Any],
    cfg: TrainConfig,
    n_examples: int,
    folder: Path,
    identity: dict[str, Any] | None = None,
) -> None:
    saved = state.get("train_config", {})
    saved = {**ADDED_LATER, **saved}  # checkpoints older than a field ran with its default
    schedule = ("checkpoint_every", "checkpoints")
    ignored = ("log_every", *schedule)
    changed = [k for k, v in asdict(cfg).items() if k not in ignored and saved.get(k) != v]
    # the checkpoint steps count, not how they were asked for (every K·G examples = K steps)
    n_steps = math.ceil(cfg.epochs * n_examples / cfg.batch_size)
    before = replace(cfg, **{k: saved[k] for k in schedule if k in saved})
    if checkpoint_steps(before, n_steps) != checkpoint_steps(cfg, n_steps):
        changed.append("checkpoint steps")
    if identity is not None:  # the caller's whole run identity (config and data fingerprint)
        old = state.get("identity") or {}
        changed += sorted(k for k in identity.keys() | old.keys() if old.get(k) != identity.get(k))
    if changed or state.get("n_examples", n_examples) != n_examples:
        raise ValueError(
            f"cannot resume from {folder}: the run's settings changed "
            f"({changed or 'dataset size'}); use the same flags and data, or a new run folder"
        )


def _weights_finite(params: list[nn.Parameter], sharded: bool) -> bool:
    """Whether every weight is finite (on every rank's shard when the policy is sharded)."""
    local = [p.to_local() if sharded else p for p in params]
    ok = torch.tensor(float(all(bool(torch.isfinite(p).all()) for p in local)))
    if sharded:
        ok = ok.to(local[0].device)
        dist.all_reduce(ok, op=dist.ReduceOp.MIN)
    return bool(ok.item() == 1.0)


def _diverged(what: str, value: float, step: int, out_dir: Path, final: Path | None) -> None:
    """Stop the run: ``what`` (loss, grad_norm, weights) is not finite at ``step``."""
    from treemdp.runs.cli import RunDivergedError  # the command line's exit status 3

    kept = f"the last checkpoint is {final}" if final is not None else "no checkpoint was saved"
    raise RunDivergedError(
        f"training diverged: {what} is not finite ({value}) at step {step}; nothing of that step "
        f"was saved ({out_dir / LOG} holds the steps before it, {kept}); lower the learning rate "
        "(or train fp16/bf16 weights in fp32) and rerun into a fresh run folder"
    )


@dataclass(frozen=True)
class _Run:
    """The parts of one training run that stay fixed while it steps: the model, its optimiser and
    schedule, where it writes, and its place among the processes."""

    policy: nn.Module
    params: list[nn.Parameter]
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    cfg: TrainConfig
    out_dir: Path
    n_examples: int
    rank: int
    world: int
    sharded: bool  # FSDP (llm.fsdp.shard_model): sharded checkpoints, no all-reduce
    tokenizer: Any | None
    run_info: dict[str, Any]

    @classmethod
    def start(
        cls,
        policy: nn.Module,
        n_examples: int,
        cfg: TrainConfig,
        out_dir: Path,
        tokenizer: Any | None,
        run_info: dict[str, Any] | None,
    ) -> _Run:
        """Check the batch layout and the data, and build the optimiser (RMSProp,
        ``cfg.optimizer``; warm-up)."""
        rank, world = _world()
        G, m = cfg.batch_size, cfg.micro_batch_size
        if G % (world * m):
            raise ValueError(
                f"batch_size ({G}) must be a multiple of micro_batch_size ({m}) × processes "
                f"({world})"
            )
        if not n_examples:
            raise ValueError("examples must be non-empty")
        params = [p for p in policy.parameters() if p.requires_grad]
        if not params:
            raise ValueError("policy has no parameter with requires_grad=True")
        optimizer = build_optimizer(params, cfg.optimizer, lr=cfg.lr, seed=cfg.seed)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _warmup(cfg.warmup_steps))
        out_dir.mkdir(parents=True, exist_ok=True)
        return cls(
            policy,
            params,
            optimizer,
            scheduler,
            cfg,
            out_dir,
            n_examples,
            rank,
            world,
            _is_sharded(policy),
            tokenizer,
            run_info or {},
        )

    def restore(self, resume: bool) -> tuple[int, Path | None]:
        """The step to start from and its checkpoint: the latest one when resuming (weights,
        optimiser, schedule and RNG loaded), else step 0."""
        # The global torch RNG (saved in every checkpoint, restored on resume) starts from the
        # seed, so a run's checkpoints are bit-identical across reruns, interrupted or not.
        torch.manual_seed(self.cfg.seed)
        ckpt = latest_checkpoint(self.out_dir) if resume else None
        if ckpt is not None:
            load = _fsdp().load_sharded_checkpoint if self.sharded else load_checkpoint
            state = load(
                ckpt, model=self.policy, optimizer=self.optimizer, scheduler=self.scheduler
            )
            _check_resume(state, self.cfg, self.n_examples, ckpt, self.run_info.get("identity"))
            return state["step"], ckpt
        if self.rank == 0 and not resume:
            # A fresh start rewrites the step folders: a pointer to an old one must not survive
            # a kill that lands while that folder is being replaced.
            (self.out_dir / LATEST).unlink(missing_ok=True)
        return 0, None

    def reduce_and_clip(self, sums: Tensor) -> tuple[Tensor, Tensor]:
        """Sum the gradients and metric ``sums`` over the processes, clip the gradient; the
        summed metrics and the gradient norm before clipping."""
        if self.world > 1:
            if not self.sharded:
                _all_reduce_grads(self.params)
            sums = sums.to(self.params[0].device)
            dist.all_reduce(sums)
            sums = sums.cpu()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.params, self.cfg.max_grad_norm)
        if self.sharded:  # a DTensor: the norm over all shards
            grad_norm = grad_norm.full_tensor()
        return sums, grad_norm

    def update(self) -> None:
        """The optimiser step, the schedule's step, gradients cleared."""
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)

    def save(self, done: int, final: Path | None) -> Path:
        """Checkpoint after step ``done`` (every rank its shards when sharded, else rank 0);
        RunDivergedError instead if a weight is not finite (``final``: the last checkpoint)."""
        if not _weights_finite(self.params, self.sharded):  # e.g. fp16 overflow
            _diverged("the weights", math.nan, done, self.out_dir, final)
        state = {
            "examples_seen": done * self.cfg.batch_size,
            "n_examples": self.n_examples,
            "train_config": asdict(self.cfg),
            **self.run_info,
        }
        if self.sharded or self.rank == 0:
            save = _fsdp().save_sharded_checkpoint if self.sharded else save_checkpoint
            save(
                self.out_dir,
                step=done,
                model=self.policy,
                optimizer=self.optimizer,
                scheduler=self.scheduler,
                state=state,
                tokenizer=self.tokenizer,
            )
        if self.world > 1:
            dist.barrier()
        return self.out_dir / checkpoint_name(done)


@dataclass
class _LogFile:
    """``log.csv``, rewritten whole (temp file + rename) at each row: a kill never leaves a
    half-written row, and a resumed run keeps exactly the rows of the steps it will not redo.
    Only rank 0 writes."""

    path: Path
    lines: list[str]

    @classmethod
    def open(cls, path: Path, start: int, writer: bool) -> _LogFile:
        """The rows of the steps up to ``start``; a file without any is removed."""
        lines = _kept_log_lines(path, start) if writer else []
        if writer and path.is_file() and not lines:
            path.unlink()
        return cls(path, lines)

    def append(self, row: dict[str, Any]) -> None:
        """Add a row (the header first), then rewrite the file atomically."""
        if not self.lines:
            self.lines.append(_csv_line(list(row)))
        self.lines.append(_csv_line(list(row.values())))
        atomic_write_text(self.path, "".join(self.lines))


def _log_row(
    done: int, lr: float, names: list[str], sums: Tensor, grad_norm: Tensor, seconds: float, G: int
) -> dict[str, Any]:
    """One log row: the step's metrics as means over the global batch of ``G`` examples
    (``sums``: the metric sums, the token count last), the rate it used, and its speed."""
    return {
        "step": done,
        "examples": done * G,
        "lr": lr,
        **{k: v / G for k, v in zip(names, sums[:-1].tolist(), strict=True)},
        "grad_norm": float(grad_norm),
        "tokens_per_s": float(sums[-1]) / seconds,
        "pairs_per_s": G / seconds,
    }


def _checkpoint_due(cfg: TrainConfig, step: int, n_steps: int) -> bool:
    """Whether the step after ``step`` ends with a checkpoint (``checkpoint_steps``)."""
    done = step + 1
    if cfg.checkpoints:  # done crosses i · n_steps / K for some i
        K = cfg.checkpoints
        return (done * K) // n_steps > (step * K) // n_steps or done == n_steps
    every, G = cfg.checkpoint_every, cfg.batch_size
    return bool(every and (done * G) // every > (step * G) // every) or done == n_steps


def checkpoint_steps(cfg: TrainConfig, n_steps: int) -> list[int]:
    """The steps (1 … ``n_steps``, counted after the update) a run of ``n_steps`` steps ends
    with a checkpoint: with ``cfg.checkpoints`` = K > 0, exactly min(K, n_steps) steps,
    ⌈i · n_steps / K⌉ for i = 1 … K (every n_steps / K steps when K divides n_steps); else each
    step that crosses a multiple of ``cfg.checkpoint_every`` examples, and the last step."""
    return [step + 1 for step in range(n_steps) if _checkpoint_due(cfg, step, n_steps)]


def _descend(
    run: _Run,
    step_loss: StepLoss,
    examples: Sequence[Example],
    start: int,
    final: Path | None,
    pad_id: int,
    on_step: Callable[[int], None] | None,
    progress: bool,
    save: bool = True,
    on_checkpoint: Callable[[int, nn.Module], None] | None = None,
) -> Path | None:
    """The optimizer steps from ``start`` to the end: gradients (accumulated) → sum over the
    processes and clip → checks → update → log → checkpoint (written when ``save``, handed to
    ``on_checkpoint``). Returns the last checkpoint (None when nothing is saved)."""
    cfg, out_dir = run.cfg, run.out_dir
    n_steps = math.ceil(cfg.epochs * len(examples) / cfg.batch_size)
    stream = data_stream(len(examples), n_steps, cfg.batch_size, cfg.seed)
    log = _LogFile.open(out_dir / LOG, start, writer=run.rank == 0)
    G, shard = cfg.batch_size, cfg.batch_size // run.world
    bar = tqdm(total=n_steps, initial=start, desc="train", disable=not progress or run.rank != 0)
    with bar:
        for step in range(start, n_steps):
            t0 = time.perf_counter()
            lr = run.optimizer.param_groups[0]["lr"]  # the rate this step uses
            mine = stream[step, run.rank * shard : (run.rank + 1) * shard]
            names, sums = _accumulate(
                run.policy,
                step_loss,
                examples,
                mine,
                micro=cfg.micro_batch_size,
                scale=G,
                pad_id=pad_id,
            )
            sums, grad_norm = run.reduce_and_clip(sums)
            for what, value in (("the loss", float(sums[0]) / G), ("the gradient norm", grad_norm)):
                if not math.isfinite(float(value)):  # stop before the update spreads it
                    _diverged(what, float(value), step + 1, out_dir, final)
            run.update()
            seconds, done = time.perf_counter() - t0, step + 1
            if run.rank == 0 and (done % cfg.log_every == 0 or done == n_steps):
                log.append(_log_row(done, lr, names, sums, grad_norm, seconds, G))
            if _checkpoint_due(cfg, step, n_steps):
                if save:
                    final = run.save(done, final)
                elif not _weights_finite(run.params, run.sharded):
                    _diverged("the weights", math.nan, done, out_dir, final)
                if on_checkpoint is not None:
                    on_checkpoint(done, run.policy)
            bar.update(1)
            if on_step is not None:
                on_step(done)
    if final is None and save:
        raise RuntimeError(f"no steps to run and no checkpoint in {out_dir}")
    return final


def train(
    policy: nn.Module,
    examples: Sequence[Example],
    step_loss: StepLoss,
    cfg: TrainConfig,
    out_dir: Path,
    *,
    pad_id: int,
    tokenizer: Any | None = None,
    resume: bool = False,
    run_info: dict[str, Any] | None = None,
    on_step: Callable[[int], None] | None = None,
    progress: bool = True,
    save: bool = True,
    on_checkpoint: Callable[[int, nn.Module], None] | None = None,
) -> Path | None:
    """Train ``policy`` in place on ``examples``; write ``log.csv`` and checkpoints to ``out_dir``.

    Args:
        policy: the trained model (float32 in the paper's dtype policy), on its device.
        examples: the dataset (``llm.data.Example``), in source order.
        step_loss: ``sft_loss`` or a ``DAALoss``. One with ``packing`` (not ``off``) is first
            checked on the first micro-batch (``llm.logprobs.check_packing``):
            PackingMismatchError when its padding-free forward disagrees with the padded one.
        cfg: optimisation settings.
        out_dir: run folder; with several processes only rank 0 writes.
        pad_id: padding token id.
        tokenizer: saved into each checkpoint so the folder is a loadable model.
        resume: continue from ``out_dir``'s latest checkpoint (fresh start when there is none);
            ValueError if it was written with other settings or another dataset size, or (when
            ``run_info`` has an ``identity``) another identity.
        run_info: extra state stored in each checkpoint (e.g. the CLI config); its
            ``identity`` (a JSON-able dict: the whole config and a data fingerprint) must equal
            the checkpoint's to resume.
        on_step: called with the step number after each optimizer step (tests use it).
        progress: show a tqdm bar on rank 0.
        save: write the checkpoints; False keeps nothing on disk but ``log.csv`` (a 6.9b
            checkpoint, weights and RMSProp state, is ~56 GB): the run then cannot resume and
            starts from step 0.
        on_checkpoint: called at every checkpoint step (after it is written when ``save``) with
            the step and the policy in memory, e.g. to evaluate it there
            (``llm.eval_run.RunEvaluation``); it must leave the weights as it found them.

    Returns:
        The path of the final checkpoint folder (None when ``save`` is False).

    Raises:
        treemdp.runs.cli.RunDivergedError: at the first step whose loss or gradient norm (or, before
            a checkpoint, whose weights) is not finite; that step is neither logged nor saved.
    """
    run = _Run.start(policy, len(examples), cfg, out_dir, tokenizer, run_info)
    start, final = run.restore(resume and save)
    if step_loss.packing != "off":  # every process, the same batch: sharded forwards are collective
        first = step_loss.collate(examples[: cfg.micro_batch_size], pad_id)
        step_loss.check_packing(policy, first)
    return _descend(
        run, step_loss, examples, start, final, pad_id, on_step, progress, save, on_checkpoint
    )


def _csv_line(values: Sequence[Any]) -> str:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerow(values)
    return buffer.getvalue()


def _kept_log_lines(log_path: Path, step: int) -> list[str]:
    """The header and the log rows of steps ≤ ``step`` (those a resumed run will not redo), as
    written; ValueError naming the file if a row is damaged."""
    if step == 0 or not log_path.is_file():
        return []
    rows = read_log(log_path.parent)
    lines = log_path.read_text(encoding="utf-8").splitlines(keepends=True)
    kept = [line for line, r in zip(lines[1:], rows, strict=True) if r["step"] <= step]
    return [lines[0], *kept] if kept else []


def read_log(run_dir: Path) -> list[dict[str, float]]:
    """The rows of a run's ``log.csv`` as floats; ValueError naming the file and row if a row is
    incomplete or not numeric."""
    path = run_dir / LOG
    with path.open(encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        rows = []
        for i, row in enumerate(reader, 2):
            if None in row or None in row.values():
                raise ValueError(
                    f"{path} line {i} has the wrong number of fields (truncated or edited); "
                    "delete the file and rerun with --resume from the last checkpoint"
                )
            try:
                rows.append({k: float(v) for k, v in row.items()})
            except ValueError:
                raise ValueError(
                    f"{path} line {i} is not numeric; delete the file and rerun with --resume"
                ) from None
    return rows
