"""Full-batch training of R runs at once, as one tensor program, logged to a tidy History.

The runs of a batch share a tree but may differ in objective, β, learning rate, hyperparameters
and problem (seed). The total loss is the sum over runs of each run's mean per-pair loss, so each
run's gradient is exactly its own; the optimisers are element-wise with one learning rate per
run. Runs are grouped by (objective, hyperparameters) only to call the registry once per group;
nothing branches on an objective's name.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
from torch import Tensor
from tqdm.auto import tqdm

from treemdp import objectives
from treemdp.batching import EpochSchedule
from treemdp.metrics import METRICS, MetricContext, metrics, win_weights
from treemdp.objectives import Margins
from treemdp.optim import make_optimizer
from treemdp.problem import Problem
from treemdp.threads import SMALL_WORK as SMALL_WORK  # re-exported: its old home
from treemdp.threads import thread_count, threads, threads_for

__all__ = ["History", "RunSpec", "TrainingDivergedError", "grid", "train"]


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


def _check_specs(specs: Sequence[RunSpec], n_runs: int) -> None:
    if len(specs) != n_runs:
        raise ValueError(f"specs must hold one RunSpec per run ({n_runs}); got {len(specs)}")
    for s in specs:
        objectives.check_beta(s.beta)
        if not s.lr > 0:
            raise ValueError(f"lr must be > 0; got {s.lr}")
        objectives.check_user_hyper(s.objective, dict(s.hyper))


_threads_for = threads_for  # the old private name, kept for callers that used it


def _run_label(specs: Sequence[RunSpec], r: int) -> str:
    s = specs[r]
    hyper = "".join(f", {k}={v:g}" for k, v in s.hyper)
    return f"run {r} ({s.objective}, β={s.beta:g}, lr={s.lr:g}{hyper})"


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


def _frame(
    specs: Sequence[RunSpec], seeds: Tensor, steps: list[int], logs: list[dict]
) -> pd.DataFrame:
    R, T = len(specs), len(steps)
    cols: dict[str, np.ndarray] = {
        "run": np.tile(np.arange(R), T),
        "objective": np.tile(np.array([s.objective for s in specs], dtype=object), T),
        "beta": np.tile(np.array([s.beta for s in specs]), T),
        "lr": np.tile(np.array([s.lr for s in specs]), T),
        "seed": np.tile(seeds.numpy(), T),
        "step": np.repeat(np.array(steps, dtype=np.int64), R),
    }
    for name in (*METRICS, *(k for k in logs[0] if k not in METRICS)):  # then extra metrics
        cols[name] = torch.stack([log[name] for log in logs]).reshape(-1).numpy()
    return pd.DataFrame(cols)


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
        extra_metrics: called with log π (shape (R, L), detached) at every logged step; its
            name → (R,) tensors become extra columns after ``METRICS``.

    Returns:
        A ``History`` with (number of logged steps) × R rows.

    Raises:
        TrainingDivergedError: a loss, gradient or logged metric became non-finite (the message
            names the step, the quantity and the run; ``.history`` holds what was logged before).
    """
    # Threads per phase: the step (loss on the pairs' paths, gradient, update) is small unless
    # the family must compute every logit; a logged step's exact metrics touch every node.
    R, tree = problem.n_runs, problem.tree
    per_run = tree.n_nodes
    if hasattr(problem.policy.family, "bind"):
        per_run = 2 * problem.pairs.n_pairs * tree.max_depth * tree.branching
    log_threads = thread_count(R * tree.n_nodes)
    with threads_for(R * per_run):
        return _train(
            problem,
            specs,
            log_threads=log_threads,
            steps=steps,
            optimizer=optimizer,
            log_every=log_every,
            progress=progress,
            record_responses=record_responses,
            batch_size=batch_size,
            batch_seed=batch_seed,
            extra_metrics=extra_metrics,
        )


def _train(
    problem: Problem,
    specs: Sequence[RunSpec],
    *,
    steps: int,
    optimizer: str,
    log_every: int,
    progress: bool,
    record_responses: bool,
    batch_size: int | None,
    batch_seed: int,
    extra_metrics: Callable[[Tensor], dict[str, Tensor]] | None,
    log_threads: int,
) -> History:
    if steps < 0:
        raise ValueError(f"steps must be >= 0; got {steps}")
    if log_every < 1:
        raise ValueError(f"log_every must be >= 1; got {log_every}")
    _check_specs(specs, problem.n_runs)
    policy, pairs = problem.policy, problem.pairs
    schedule = (
        None if batch_size is None else EpochSchedule(pairs.n_pairs, batch_size, seed=batch_seed)
    )
    with threads(log_threads):  # whole-tree work, done once
        ctx = MetricContext.build(problem.tree, problem.rewards, pairs)
        ref_logp = problem.ref_logp
        ref_weights = win_weights(ctx, ref_logp)  # π_ref is fixed: the win-rate weights too
    # The loss needs only the pairs' responses: their log-probs come from their paths (O(P·D)
    # per step), and every response's only at logged steps (O(nodes), no gradient). π_ref's
    # pair log-probs use the same path function, so h is exactly 0 at θ0.
    responses = pairs.responses()
    n_pairs = pairs.n_pairs
    pair_logprobs = policy.bind(responses)
    with torch.no_grad():
        ref_pair = pair_logprobs(policy.theta0)
    ref_c, ref_r = ref_pair[:, :n_pairs], ref_pair[:, n_pairs:]
    lengths = problem.tree.response_length.to(ref_logp.dtype)
    len_c, len_r = lengths[pairs.chosen], lengths[pairs.rejected]
    betas = torch.tensor([s.beta for s in specs], dtype=ref_logp.dtype).unsqueeze(1)
    groups: dict[tuple[str, tuple], list[int]] = {}
    for i, s in enumerate(specs):
        groups.setdefault((s.objective, s.hyper), []).append(i)
    # Per group: its registry entry, hyperparameters resolved once, and its runs as a slice when
    # they are contiguous (the usual sweep layout: a view instead of a gather and a scatter).
    group_index = []
    for (name, hyper), idx in groups.items():
        entry = objectives.get(name)
        sel: slice | Tensor = torch.tensor(idx)
        if idx == list(range(idx[0], idx[-1] + 1)):
            sel = slice(idx[0], idx[-1] + 1)
        extra = objectives.length_hyper(name, len_c[sel], len_r[sel])
        kwargs = objectives.resolve_hyper(entry, {**dict(hyper), **extra})
        objectives.check_beta(betas[sel])
        group_index.append((entry, kwargs, sel))
    whole = len(group_index) == 1
    contiguous = all(isinstance(sel, slice) for _, _, sel in group_index)

    theta = policy.theta0.detach().clone().requires_grad_(True)
    lrs = torch.tensor([s.lr for s in specs], dtype=torch.float64)
    opt = make_optimizer(optimizer, lrs, problem.n_runs)
    logged_steps: list[int] = []
    logs: list[dict[str, Tensor]] = []
    snapshots: list[Tensor] = []

    def history() -> History:
        if not logs:
            return History()
        frame = _frame(specs, problem.seeds, logged_steps, logs)
        if schedule is not None:
            for name, col in schedule.epoch_columns(frame["step"].to_numpy()).items():
                frame.insert(frame.columns.get_loc("step") + 1 + (name != "epoch"), name, col)
        return History(frame)

    bar = tqdm(total=steps, disable=not progress, desc="training", unit="step", leave=False)
    for step in range(steps + 1):
        pair_logp = pair_logprobs(theta)
        lc, lr = pair_logp[:, :n_pairs], pair_logp[:, n_pairs:]
        # The registry's functions on each group's runs (β checked once above, so the entry's
        # function is called directly rather than through objectives.loss).
        outs = [
            entry.fn(Margins(lc[sel], lr[sel], ref_c[sel], ref_r[sel]), beta=betas[sel], **kwargs)
            for entry, kwargs, sel in group_index
        ]
        if whole:
            per_pair = outs[0]
        elif contiguous:  # groups in run order, each a contiguous block
            order = sorted(range(len(outs)), key=lambda g: group_index[g][2].start)
            per_pair = torch.cat([outs[g] for g in order])
        else:
            per_pair = lc.new_empty(lc.shape)
            for out, (_, _, sel) in zip(outs, group_index, strict=True):
                per_pair[sel] = out
        if schedule is None or schedule.full_batch:
            total = per_pair.mean(-1).sum()
        else:  # each run's gradient is its own minibatch mean; metrics stay whole-dataset
            total = per_pair[:, schedule.batch(step)].mean(-1).sum()
        if not bool(torch.isfinite(total)):
            bar.close()
            bad = torch.nonzero(~torch.isfinite(per_pair.detach().mean(-1)))
            where = _run_label(specs, int(bad[0])) if len(bad) else "the sum over runs"
            raise TrainingDivergedError(f"loss of {where} is not finite at step {step}", history())
        if step % log_every == 0 or step == steps:
            with torch.no_grad(), threads(log_threads):
                h = (lc - ref_c) - (lr - ref_r)
                logp = policy.response_logprobs(theta)
                log = metrics(ctx, logp, ref_logp, h, per_pair.detach(), ref_weights=ref_weights)
                _check_finite(log, specs, step, history)
                logs.append(log if extra_metrics is None else {**log, **extra_metrics(logp)})
            if record_responses:
                snapshots.append(logp.clone())
            logged_steps.append(step)
        if step == steps:
            break
        (grad,) = torch.autograd.grad(total, theta)
        if not bool(torch.isfinite(grad).all()):
            bar.close()
            bad = int(torch.nonzero(~torch.isfinite(grad.reshape(len(specs), -1)).all(-1))[0])
            raise TrainingDivergedError(
                f"gradient of {_run_label(specs, bad)} is not finite at step {step}", history()
            )
        opt.step(theta, grad)
        bar.update(1)
    bar.close()
    out = history()
    out.theta = theta.detach().clone()
    out.response_logp = torch.stack(snapshots) if record_responses else None
    return out
