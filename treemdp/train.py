"""Full-batch training of R runs at once, as one tensor program, logged to a tidy History.

The runs of a batch share a tree but may differ in objective, β, learning rate, hyperparameters
and problem (seed). The total loss is the sum over runs of each run's mean per-pair loss, so each
run's gradient is exactly its own; the optimisers are element-wise with one learning rate per
run. Runs are grouped by (objective, hyperparameters) only to call the registry once per group;
nothing branches on an objective's name.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
from torch import Tensor
from tqdm.auto import tqdm

from treemdp import objectives
from treemdp.batching import EpochSchedule
from treemdp.metrics import METRICS, MetricContext, metrics
from treemdp.optim import make_optimizer
from treemdp.problem import Problem

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


SMALL_WORK = 2**20
"""Below this many (run × node) entries per step, intra-op threads cost more than they save."""


@contextmanager
def _threads_for(work: int) -> Iterator[None]:
    """One intra-op thread for small problems (thread start-up dominates), restored after."""
    before = torch.get_num_threads()
    if work < SMALL_WORK:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


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
        TrainingDivergedError: a loss or gradient became non-finite (the message names the step and
            the quantity; ``.history`` holds what was logged before).
    """
    with _threads_for(problem.n_runs * problem.tree.n_nodes):
        return _train(
            problem,
            specs,
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
    ctx = MetricContext.build(problem.tree, problem.rewards, pairs)
    ref_logp = problem.ref_logp
    ref_c, ref_r = ref_logp.gather(1, pairs.chosen), ref_logp.gather(1, pairs.rejected)
    lengths = problem.tree.response_length.to(ref_logp.dtype)
    len_c, len_r = lengths[pairs.chosen], lengths[pairs.rejected]
    betas = torch.tensor([s.beta for s in specs], dtype=ref_logp.dtype).unsqueeze(1)
    groups: dict[tuple[str, tuple], list[int]] = {}
    for i, s in enumerate(specs):
        groups.setdefault((s.objective, s.hyper), []).append(i)
    group_index = [(name, dict(hyper), torch.tensor(idx)) for (name, hyper), idx in groups.items()]
    whole = len(group_index) == 1

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
        logp = policy.response_logprobs(theta)
        lc, lr = logp.gather(1, pairs.chosen), logp.gather(1, pairs.rejected)
        per_pair = lc.new_empty(lc.shape) if not whole else None
        for name, hyper, idx in group_index:
            sel = slice(None) if whole else idx
            extra = objectives.length_hyper(name, len_c[sel], len_r[sel])
            out = objectives.loss(
                name, lc[sel], lr[sel], ref_c[sel], ref_r[sel], beta=betas[sel], **hyper, **extra
            )
            if whole:
                per_pair = out
            else:
                per_pair[idx] = out
        if schedule is None or schedule.full_batch:
            total = per_pair.mean(-1).sum()
        else:  # each run's gradient is its own minibatch mean; metrics stay whole-dataset
            total = per_pair[:, schedule.batch(step)].mean(-1).sum()
        if not bool(torch.isfinite(total)):
            bad = int(torch.nonzero(~torch.isfinite(per_pair.mean(-1)))[0])
            bar.close()
            raise TrainingDivergedError(
                f"loss of run {bad} is not finite at step {step}", history()
            )
        if step % log_every == 0 or step == steps:
            with torch.no_grad():
                h = (lc - ref_c) - (lr - ref_r)
                log = metrics(ctx, logp.detach(), ref_logp, h, per_pair.detach())
                logs.append(
                    log if extra_metrics is None else {**log, **extra_metrics(logp.detach())}
                )
            if record_responses:
                snapshots.append(logp.detach().clone())
            logged_steps.append(step)
        if step == steps:
            break
        (grad,) = torch.autograd.grad(total, theta)
        if not bool(torch.isfinite(grad).all()):
            bar.close()
            raise TrainingDivergedError(f"gradient is not finite at step {step}", history())
        opt.step(theta, grad)
        bar.update(1)
    bar.close()
    out = history()
    out.theta = theta.detach().clone()
    out.response_logp = torch.stack(snapshots) if record_responses else None
    return out
