"""Full-batch training of R runs at once, as one tensor program, logged to a tidy History.

The runs of a batch share a tree but may differ in objective, β, learning rate, hyperparameters
and problem (seed). The total loss is the sum over runs of each run's mean per-pair loss, so each
run's gradient is exactly its own; the optimisers are element-wise with one learning rate per
run. Runs are grouped by (objective, hyperparameters) only to bind the registry entry once per
group (β and hyperparameters checked there, once per run); nothing branches on an objective's
name. A step reads log-probs → loss → checks → log → update (``_descend``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor
from tqdm.auto import tqdm

from treemdp import objectives
from treemdp.batching import EpochSchedule
from treemdp.devices import (
    FLOAT32_TOLERANCE,
    PrecisionError,
    check_precision,
    placement,
    resolve_device,
    to_device,
)
from treemdp.metrics import METRICS, MetricContext, metrics, win_weights
from treemdp.objectives import BoundObjective, Margins
from treemdp.optim import make_optimizer
from treemdp.problem import Problem
from treemdp.threads import thread_count, threads, with_threads

__all__ = [
    "History",
    "PrecisionError",
    "RunSpec",
    "TrainingDivergedError",
    "check_float32",
    "grid",
    "implicit_margin",
    "train",
]


@dataclass(frozen=True)
class RunSpec:
    """One run's training choices (its problem is the matching row of the ``Problem``).

    Attributes:
        objective: a registry name (``treemdp.objectives.names()``).
        beta: β > 0.
        lr: learning rate > 0.
        hyper: extra objective hyperparameters, as sorted (name, value) pairs.
    """

    objective: str
    beta: float
    lr: float
    hyper: tuple[tuple[str, float], ...] = ()


def grid(
    problems: Problem, objectives: Sequence[str], betas: Sequence[float], lr: float
) -> tuple[Problem, list[RunSpec]]:
    """Every (objective, β, problem) combination as a batch of runs.

    Runs are ordered objective-major, then β, then problem (seed), so run index
    r = (i_objective · |betas| + i_beta) · n_problems + i_problem.

    Args:
        problems: one problem per seed (R0 runs).
        objectives: registry names.
        betas: β values.
        lr: the learning rate of every run.

    Returns:
        The problems laid out as runs (|objectives| · |betas| · R0 of them) and their specs.
    """
    layout = [(o, b, i) for o in objectives for b in betas for i in range(problems.n_runs)]
    specs = [RunSpec(o, b, lr) for o, b, _ in layout]
    return problems.select([i for _, _, i in layout]), specs


@dataclass
class History:
    """Tidy training records: one row per run and logged step.

    Attributes:
        frame: columns run, objective, beta, lr, seed, step, then ``METRICS``.
        theta: the parameters after the last step (detached), shape (R, *param_shape); None
            when training stopped early (``TrainingDivergedError``).
        response_logp: log π(y|x) of every response at every logged step, shape (T, R, L),
            when trained with ``record_responses=True``.
    """

    frame: pd.DataFrame = field(default_factory=pd.DataFrame)
    theta: Tensor | None = None
    response_logp: Tensor | None = None

    def response_frame(self) -> pd.DataFrame:
        """log π(y|x) of every response at every logged step, as a tidy table (run, step,
        response, logp); only when trained with ``record_responses=True``."""
        if self.response_logp is None:
            raise ValueError("response log-probs were not recorded: train(record_responses=True)")
        T, R, L = self.response_logp.shape
        steps = self.frame["step"].to_numpy()[::R]
        return pd.DataFrame(
            {
                "run": np.tile(np.repeat(np.arange(R), L), T),
                "step": np.repeat(steps, R * L),
                "response": np.tile(np.arange(L), T * R),
                "logp": self.response_logp.reshape(-1).numpy(),
            }
        )

    def final(self) -> pd.DataFrame:
        """The last logged row of every run."""
        last = self.frame.groupby("run")["step"].transform("max")
        return self.frame[self.frame["step"] == last].reset_index(drop=True)


class TrainingDivergedError(FloatingPointError):
    """A quantity became NaN or infinite; ``history`` holds every step logged before."""

    def __init__(self, message: str, history: History) -> None:
        super().__init__(message)
        self.history = history

    def __reduce__(self) -> tuple:
        """Picklable with its history (a Ray worker's error reaches the driver whole)."""
        return (type(self), (str(self), self.history), self.__dict__)


def _check_arguments(
    problem: Problem, specs: Sequence[RunSpec], steps: int, log_every: int
) -> None:
    """ValueError naming the argument of ``train`` (or ``RunSpec`` field) out of its range."""
    if steps < 0:
        raise ValueError(f"steps must be >= 0; got {steps}")
    if log_every < 1:
        raise ValueError(f"log_every must be >= 1; got {log_every}")
    if len(specs) != problem.n_runs:
        raise ValueError(
            f"specs must hold one RunSpec per run ({problem.n_runs}); got {len(specs)}"
        )
    for s in specs:
        if not s.lr > 0:
            raise ValueError(f"lr must be > 0; got {s.lr}")


def _run_groups(specs: Sequence[RunSpec]) -> list[tuple[RunSpec, slice | Tensor]]:
    """The runs grouped by (objective, hyperparameters), in order of first appearance: each
    group's first spec and its runs, as a slice when they are contiguous (the usual sweep
    layout: a view instead of a gather and a scatter), else as an index tensor."""
    groups: dict[tuple[str, tuple], list[int]] = {}
    for i, s in enumerate(specs):
        groups.setdefault((s.objective, s.hyper), []).append(i)
    out: list[tuple[RunSpec, slice | Tensor]] = []
    for idx in groups.values():
        contiguous = idx == list(range(idx[0], idx[-1] + 1))
        out.append((specs[idx[0]], slice(idx[0], idx[-1] + 1) if contiguous else torch.tensor(idx)))
    return out


def _bind_groups(specs: Sequence[RunSpec]) -> list[tuple[BoundObjective, slice | Tensor]]:
    """Each group's objective bound to its runs' β (shape (R_g, 1)) and hyperparameters: the one
    place they are checked. (Made where the runs train: ``placement``.)"""
    betas = torch.tensor([s.beta for s in specs], dtype=torch.float64).unsqueeze(1)
    return [
        (objectives.bind(s.objective, beta=betas[runs], **dict(s.hyper)), runs)
        for s, runs in _run_groups(specs)
    ]


def _in_run_order(outs: list[Tensor], runs: list[slice | Tensor], like: Tensor) -> Tensor:
    """The groups' per-pair losses (each (R_g, P)) as one (R, P) tensor in run order: as it is
    for one group, concatenated when every group is a contiguous block, else scattered."""
    if len(outs) == 1:
        return outs[0]
    if all(isinstance(sel, slice) for sel in runs):
        order = sorted(range(len(outs)), key=lambda g: runs[g].start)
        return torch.cat([outs[g] for g in order])
    per_pair = like.new_empty(like.shape)
    for out, sel in zip(outs, runs, strict=True):
        per_pair[sel] = out
    return per_pair


def implicit_margin(
    specs: Sequence[RunSpec], margins: Margins, len_chosen: Tensor, len_rejected: Tensor
) -> Tensor:
    """r(y⁺) − r(y⁻) of every run's pairs, in each run's objective's own implicit-reward form
    (``BoundObjective.rewards``: β times the summed or per-token log-ratio).

    Args:
        specs: one ``RunSpec`` per run.
        margins: the runs' pair log-probs. Shapes (R, P).
        len_chosen: |y⁺|. Shape (R, P).
        len_rejected: |y⁻|. Shape (R, P).

    Returns:
        The margins. Shape (R, P).
    """
    groups = _bind_groups(specs)
    outs = []
    for bound, runs in groups:
        rc, rr = bound.with_lengths(len_chosen[runs], len_rejected[runs]).rewards(
            margins.select(runs)
        )
        outs.append(rc - rr)
    return _in_run_order(outs, [runs for _, runs in groups], margins.logp_chosen)


@dataclass(frozen=True)
class _PairLoss:
    """The runs' per-pair losses from their pairs' log-probs, each group through its bound
    objective. Only the pairs' responses enter: their log-probs come from their paths
    (O(P·D) per step); π_ref's use the same path function, so h is exactly 0 at θ0.

    Attributes:
        logprobs: θ → log π of every pair's chosen then rejected response. Shape (R, 2P).
        ref_chosen: log π_ref(y_w|x). Shape (R, P).
        ref_rejected: log π_ref(y_l|x). Shape (R, P).
        groups: each group's objective (lengths bound) and runs.
    """

    logprobs: Callable[[Tensor], Tensor]
    ref_chosen: Tensor
    ref_rejected: Tensor
    groups: list[tuple[BoundObjective, slice | Tensor]]

    @classmethod
    def build(
        cls, problem: Problem, groups: list[tuple[BoundObjective, slice | Tensor]]
    ) -> _PairLoss:
        """Bind the policy to the pairs' paths and the objectives to the responses' lengths."""
        pairs, P = problem.pairs, problem.pairs.n_pairs
        logprobs = problem.policy.bind(pairs.responses())
        with torch.no_grad():
            ref = logprobs(problem.policy.theta0)
        lengths = problem.tree.response_length.to(problem.ref_logp.dtype)
        len_c, len_r = lengths[pairs.chosen], lengths[pairs.rejected]
        bound = [(b.with_lengths(len_c[runs], len_r[runs]), runs) for b, runs in groups]
        return cls(logprobs, ref[:, :P], ref[:, P:], bound)

    def margins(self, theta: Tensor) -> Margins:
        """The four log-prob tensors of every run's pairs at θ. Shapes (R, P)."""
        pair_logp, P = self.logprobs(theta), self.ref_chosen.shape[1]
        return Margins(pair_logp[:, :P], pair_logp[:, P:], self.ref_chosen, self.ref_rejected)

    def __call__(self, m: Margins) -> Tensor:
        """Per-pair losses. Shape (R, P)."""
        outs = [bound.loss(m.select(runs)) for bound, runs in self.groups]
        return _in_run_order(outs, [runs for _, runs in self.groups], m.logp_chosen)


def _run_label(specs: Sequence[RunSpec], r: int) -> str:
    s = specs[r]
    hyper = "".join(f", {k}={v:g}" for k, v in s.hyper)
    return f"run {r} ({s.objective}, β={s.beta:g}, lr={s.lr:g}{hyper})"


def _check_loss(
    total: Tensor, per_pair: Tensor, specs: Sequence[RunSpec], step: int, log: _Log
) -> None:
    """TrainingDivergedError naming the first run whose mean loss is not finite."""
    if not bool(torch.isfinite(total)):
        bad = torch.nonzero(~torch.isfinite(per_pair.detach().mean(-1)))
        where = _run_label(specs, int(bad[0])) if len(bad) else "the sum over runs"
        raise TrainingDivergedError(f"loss of {where} is not finite at step {step}", log.history())


def _check_gradient(grad: Tensor, specs: Sequence[RunSpec], step: int, log: _Log) -> None:
    """TrainingDivergedError naming the first run whose gradient is not finite."""
    if not bool(torch.isfinite(grad).all()):
        bad = int(torch.nonzero(~torch.isfinite(grad.reshape(len(specs), -1)).all(-1))[0])
        raise TrainingDivergedError(
            f"gradient of {_run_label(specs, bad)} is not finite at step {step}", log.history()
        )


def _check_finite(
    log: dict[str, Tensor], specs: Sequence[RunSpec], step: int, history: Callable[[], History]
) -> None:
    """TrainingDivergedError naming the first metric of ``METRICS`` that is NaN or infinite
    (every one is finite for finite logits: log-space throughout), its run and the step."""
    for name in METRICS:
        value = log[name]
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            r = int(torch.nonzero(~torch.isfinite(value))[0])
            raise TrainingDivergedError(
                f"metric {name} of {_run_label(specs, r)} is {float(value[r])} at step {step}",
                history(),
            )


def _on_the_cpu(t: Tensor) -> Tensor:
    """``t`` on the CPU in float64 (itself when it already is)."""
    return t if t.device.type == "cpu" and t.dtype == torch.float64 else t.to("cpu", torch.float64)


def _frame(
    specs: Sequence[RunSpec], seeds: Tensor, steps: list[int], logs: list[dict]
) -> pd.DataFrame:
    R, T = len(specs), len(steps)
    cols: dict[str, np.ndarray] = {
        "run": np.tile(np.arange(R), T),
        "objective": np.tile(np.array([s.objective for s in specs], dtype=object), T),
        "beta": np.tile(np.array([s.beta for s in specs]), T),
        "lr": np.tile(np.array([s.lr for s in specs]), T),
        "seed": np.tile(seeds.cpu().numpy(), T),
        "step": np.repeat(np.array(steps, dtype=np.int64), R),
    }
    for name in (*METRICS, *(k for k in logs[0] if k not in METRICS)):  # then extra metrics
        values = torch.stack([log[name] for log in logs]).reshape(-1).cpu()
        cols[name] = (values.double() if values.is_floating_point() else values).numpy()
    return pd.DataFrame(cols)


@dataclass
class _Log:
    """The exact metrics of the logged steps and the History they make.

    A logged step's metrics touch every node, so they run with ``n_threads`` (chosen for the
    whole tree) whatever the step's own thread count; the whole-tree context and π_ref's
    log-probs and win-rate weights are computed once, in ``start``.
    """

    problem: Problem
    specs: Sequence[RunSpec]
    schedule: EpochSchedule | None
    extra_metrics: Callable[[Tensor], dict[str, Tensor]] | None
    record_responses: bool
    n_threads: int
    ctx: MetricContext
    ref_weights: Tensor
    steps: list[int] = field(default_factory=list)
    logs: list[dict[str, Tensor]] = field(default_factory=list)
    snapshots: list[Tensor] = field(default_factory=list)

    @classmethod
    def start(
        cls,
        problem: Problem,
        specs: Sequence[RunSpec],
        schedule: EpochSchedule | None,
        extra_metrics: Callable[[Tensor], dict[str, Tensor]] | None,
        record_responses: bool,
    ) -> _Log:
        """The log before any step (its thread count taken from the caller's)."""
        n_threads = thread_count(problem.n_runs * problem.tree.n_nodes)
        with threads(n_threads):  # whole-tree work, done once
            ctx = MetricContext.build(problem.tree, problem.rewards, problem.pairs)
            ref_weights = win_weights(ctx, problem.ref_logp)  # π_ref is fixed: its weights too
        return cls(
            problem, specs, schedule, extra_metrics, record_responses, n_threads, ctx, ref_weights
        )

    def record(self, step: int, theta: Tensor, m: Margins, per_pair: Tensor) -> None:
        """Log the exact metrics at θ; ``m`` and ``per_pair`` (shape (R, P)) are the step's."""
        with torch.no_grad(), threads(self.n_threads):
            logp = self.problem.policy.response_logprobs(theta)
            ref_logp, h = self.problem.ref_logp, m.h
            log = metrics(
                self.ctx, logp, ref_logp, h, per_pair.detach(), ref_weights=self.ref_weights
            )
            _check_finite(log, self.specs, step, self.history)
            if self.extra_metrics is not None:  # a caller's hook sees CPU float64, as built
                log = {**log, **self.extra_metrics(_on_the_cpu(logp))}
            self.logs.append(log)
        if self.record_responses:
            self.snapshots.append(logp.clone())
        self.steps.append(step)

    def history(self, theta: Tensor | None = None) -> History:
        """What was logged so far, with the final θ when training finished."""
        if not self.logs:
            return History()
        frame = _frame(self.specs, self.problem.seeds, self.steps, self.logs)
        if self.schedule is not None:
            for name, col in self.schedule.epoch_columns(frame["step"].to_numpy()).items():
                frame.insert(frame.columns.get_loc("step") + 1 + (name != "epoch"), name, col)
        if theta is None:
            return History(frame)
        snapshots = torch.stack(self.snapshots).cpu().double() if self.record_responses else None
        return History(frame, theta.detach().to("cpu", torch.float64, copy=True), snapshots)


def _total_loss(per_pair: Tensor, schedule: EpochSchedule | None, step: int) -> Tensor:
    """Σ over runs of each run's mean loss over the step's pairs (all of them in full batch),
    so each run's gradient is its own."""
    if schedule is None or schedule.full_batch:
        return per_pair.mean(-1).sum()
    return per_pair[:, schedule.batch(step)].mean(-1).sum()


def _step_work(problem: Problem, *_: Any, **__: Any) -> int:
    """Tensor entries of one step (the loss on the pairs' paths, gradient, update): small unless
    the family must compute every logit (no ``bind``)."""
    tree = problem.tree
    per_run = tree.n_nodes
    if hasattr(problem.policy.family, "bind"):
        per_run = 2 * problem.pairs.n_pairs * tree.max_depth * tree.branching
    return problem.n_runs * per_run


@with_threads(_step_work)
def _descend(
    problem: Problem,
    specs: Sequence[RunSpec],
    groups: list[tuple[BoundObjective, slice | Tensor]],
    log: _Log,
    *,
    steps: int,
    optimizer: str,
    log_every: int,
    progress: bool,
) -> History:
    """The gradient steps from θ0: log-probs → loss → checks → log → update."""
    pair_loss = _PairLoss.build(problem, groups)
    theta = problem.policy.theta0.detach().clone().requires_grad_(True)
    lrs = torch.tensor([s.lr for s in specs], dtype=torch.float64)
    opt = make_optimizer(optimizer, lrs, problem.n_runs)
    with tqdm(total=steps, disable=not progress, desc="training", unit="step", leave=False) as bar:
        for step in range(steps + 1):
            m = pair_loss.margins(theta)
            per_pair = pair_loss(m)
            total = _total_loss(per_pair, log.schedule, step)
            _check_loss(total, per_pair, specs, step, log)
            if step % log_every == 0 or step == steps:
                log.record(step, theta, m, per_pair)
            if step == steps:
                break
            (grad,) = torch.autograd.grad(total, theta)
            _check_gradient(grad, specs, step, log)
            opt.step(theta, grad)
            bar.update(1)
    return log.history(theta)


def train(
    problem: Problem,
    specs: Sequence[RunSpec],
    *,
    steps: int,
    optimizer: str = "adam",
    log_every: int = 10,
    progress: bool = False,
    record_responses: bool = False,
    batch_size: int | None = None,
    batch_seed: int = 0,
    extra_metrics: Callable[[Tensor], dict[str, Tensor]] | None = None,
    device: str | torch.device = "cpu",
    precision: str = "float64",
    check_sample: int = 4,
) -> History:
    """Train every run of ``problem`` from π_ref with full-batch gradient steps.

    Args:
        problem: R runs' problems; the policy starts at θ0 (the reference).
        specs: one ``RunSpec`` per run.
        steps: number of optimiser steps (>= 0).
        optimizer: "adam", "sgd" or "rmsprop".
        log_every: log metrics every this many steps (>= 1); step 0 and the last step are
            always logged.
        progress: show a tqdm progress bar.
        record_responses: also keep every response's log-probability at every logged step
            (``History.response_logp``; T × R × L floats).
        batch_size: pairs per step (>= 1), drawn in epochs (``treemdp.batching.EpochSchedule``:
            a fresh ``batch_seed``-ed order per epoch, the same for every run); None (default)
            or >= P is full batch. With a batch size the History gains ``epoch`` and
            ``fraction_of_epoch`` columns. Logged ``loss`` and ``reward_accuracy`` are always
            over the whole dataset.
        batch_seed: seed of the per-epoch shuffles.
        extra_metrics: called with log π (shape (R, L), detached, on the CPU in float64
            whatever ``device`` and ``precision``) at every logged step; its name → (R,)
            tensors become extra columns after ``METRICS``.
        device: where the runs train: "cpu" (default), "cuda", "cuda:N" or "auto"
            (``treemdp.devices.resolve_device``); the problem is moved there, the History
            comes back on the CPU.
        precision: "float64" (default) or "float32"; float32 trains ``check_sample`` of the runs
            again in float64 and refuses beyond ``FLOAT32_TOLERANCE``.
        check_sample: runs (evenly spaced) the float32 check retrains in float64 (>= 1).

    Returns:
        A ``History`` with (number of logged steps) × R rows (on the CPU, in float64).

    Raises:
        TrainingDivergedError: a loss, gradient or logged metric became non-finite (the message
            names the step, the quantity and the run; ``.history`` holds what was logged before).
        PrecisionError: float32 differed from float64 by more than ``FLOAT32_TOLERANCE``.
        ValueError: a device this torch cannot use (``cuda`` without one), an unknown precision.
    """
    _check_arguments(problem, specs, steps, log_every)
    where, dtype = resolve_device(device), check_precision(precision)
    if check_sample < 1:
        raise ValueError(f"check_sample must be >= 1; got {check_sample}")
    moved = problem
    if where.type != "cpu" or dtype != torch.float64:
        moved = to_device(problem, where, dtype)
    with placement(where, dtype):
        groups = _bind_groups(specs)
        n_pairs = problem.pairs.n_pairs
        schedule = (
            None if batch_size is None else EpochSchedule(n_pairs, batch_size, seed=batch_seed)
        )
        log = _Log.start(moved, specs, schedule, extra_metrics, record_responses)
        history = _descend(
            moved,
            specs,
            groups,
            log,
            steps=steps,
            optimizer=optimizer,
            log_every=log_every,
            progress=progress,
        )
    if dtype != torch.float64:
        sample = sorted(
            {
                round(i * (len(specs) - 1) / max(1, check_sample - 1))
                for i in range(min(check_sample, len(specs)))
            }
        )
        reference = train(
            problem.select(sample),
            [specs[r] for r in sample],
            steps=steps,
            optimizer=optimizer,
            log_every=log_every,
            batch_size=batch_size,
            batch_seed=batch_seed,
            device=where,
        )
        check_float32(history.frame, reference.frame, sample, precision)
    return history


def check_float32(
    frame: pd.DataFrame, reference: pd.DataFrame, sample: Sequence[int], precision: str
) -> float:
    """The largest |``frame`` − ``reference``| / (1 + |``reference``|) over ``METRICS`` on the
    sampled runs (``frame``'s runs ``sample`` are ``reference``'s runs 0, 1, ...):
    absolute for O(1) metrics, relative for large ones (an IPO loss near 1/(2β)²);
    ``PrecisionError`` beyond ``FLOAT32_TOLERANCE``, naming the metric, the run and the step.

    Returns:
        The largest scaled difference.
    """
    ours = frame[frame["run"].isin(sample)].sort_values(["run", "step"], kind="stable")
    theirs = reference.sort_values(["run", "step"], kind="stable")
    worst, where = 0.0, ("", 0, 0)
    for name in METRICS:
        want = theirs[name].to_numpy()
        gap = np.abs(ours[name].to_numpy() - want) / (1 + np.abs(want))
        if gap.size and float(np.nanmax(gap)) > worst:
            i = int(np.nanargmax(gap))
            worst, where = (
                float(gap[i]),
                (name, int(ours["run"].iloc[i]), int(ours["step"].iloc[i])),
            )
    if not worst <= FLOAT32_TOLERANCE:
        name, run, step = where
        raise PrecisionError(
            f"{precision} differs from float64 by {worst:.3g} (scaled) in {name} of run {run} at "
            f"step {step} (tolerance {FLOAT32_TOLERANCE:g}, checked on runs {list(sample)}); train "
            "in float64 (--precision float64)"
        )
    return worst
