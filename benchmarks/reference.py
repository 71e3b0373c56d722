"""A straightforward one-run-at-a-time trainer: the oracle and the baseline for the engine.

Written plainly on purpose: one Python loop per run, ``torch.optim.Adam`` on one parameter
vector, every response's log-probability as an explicit sum of log-conditionals along its path,
the three objectives written out, and the metrics from their definitions (the win rate from the
pairwise (L × L) comparison). Only for single-prompt, log-linear problems (the paper's toy).
It shares nothing with the engine but the problem's data (features, θ_ref, rewards, pairs).
"""

from __future__ import annotations

import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor

from treemdp.metrics import METRICS
from treemdp.problem import Problem
from treemdp.tree import Tree


def path_table(tree: Tree) -> tuple[Tensor, Tensor]:
    """(internal node, action) along every response's path, root to leaf. Shapes (L, D).

    Complete trees only (every path has D steps); built by walking parents in Python.
    """
    rows, actions = [], []
    for leaf in tree.leaves.tolist():
        node, r, a = leaf, [], []
        while int(tree.parent[node]) >= 0:
            parent = int(tree.parent[node])
            r.append(int(tree.internal_index[parent]))
            a.append(int(tree.action[node]))
            node = parent
        rows.append(r[::-1])
        actions.append(a[::-1])
    return torch.tensor(rows), torch.tensor(actions)


def all_logprobs(features: Tensor, theta: Tensor, rows: Tensor, actions: Tensor) -> Tensor:
    """log π(y) = Σ_t log π(a_t | s_t) for every response y. Shape (L,)."""
    cond = torch.log_softmax(features @ theta, dim=-1)  # (M, b)
    return cond[rows, actions].sum(-1)


def loss_of(objective: str, h: Tensor, beta: float) -> Tensor:
    """Per-pair loss, written out: DPO, IPO, SLiC."""
    if objective == "dpo":
        return -F.logsigmoid(beta * h)
    if objective == "ipo":
        return (h - 1.0 / (2.0 * beta)) ** 2
    if objective == "slic":
        return torch.relu(1.0 - beta * h)
    raise ValueError(f"objective must be dpo, ipo or slic; got {objective!r}")


def metrics_of(
    logp: Tensor,
    ref: Tensor,
    rewards: Tensor,
    chosen: Tensor,
    rejected: Tensor,
    h: Tensor,
    loss: Tensor,
) -> dict[str, float]:
    """The engine's METRICS from their definitions, for one single-prompt run."""
    p, q = logp.exp(), ref.exp()
    chosen_set, rejected_set = set(chosen.tolist()), set(rejected.tolist())
    in_dist = chosen_set | rejected_set
    ood = [y for y in range(p.numel()) if y not in in_dist]
    max_ood, max_ood_response = 0.0, -1
    for y in ood:
        if float(p[y]) > max_ood:
            max_ood, max_ood_response = float(p[y]), y
    better = (rewards[:, None] > rewards[None, :]).double()  # (L, L): r(y) > r(y')
    tie = (rewards[:, None] == rewards[None, :]).double()
    return {
        "p_chosen": float(sum(p[y] for y in chosen_set)),
        "p_rejected": float(sum(p[y] for y in rejected_set)),
        "mass_in_dist": float(sum(p[y] for y in in_dist)),
        "mass_ood": float(sum(p[y] for y in ood)),
        "max_ood": max_ood,
        "max_ood_response": max_ood_response,
        "kl_reverse": float((p * (logp - ref)).sum()),
        "kl_forward": float((q * (ref - logp)).sum()),
        "gold_reward": float((p * rewards).sum()),
        "win_rate": float(p @ (better + 0.5 * tie) @ q),
        "reward_accuracy": float((h > 0).double().mean()),
        "loss": float(loss.mean()),
    }


def train_one(
    problem: Problem,
    run: int,
    objective: str,
    beta: float,
    lr: float,
    *,
    steps: int,
    log_every: int,
    paths: tuple[Tensor, Tensor],
) -> list[dict]:
    """Train run ``run`` of ``problem`` alone with torch.optim.Adam; one record per logged step."""
    features = problem.policy.family.features
    features = features[run] if features.dim() == 4 else features
    rows, actions = paths
    rewards = problem.rewards[run]
    chosen, rejected = problem.pairs.chosen[run], problem.pairs.rejected[run]
    theta = problem.policy.theta0[run].detach().clone().requires_grad_(True)
    with torch.no_grad():
        ref = all_logprobs(features, theta, rows, actions)
    opt = torch.optim.Adam([theta], lr=lr)
    records = []
    for step in range(steps + 1):
        logp = all_logprobs(features, theta, rows, actions)
        h = (logp[chosen] - ref[chosen]) - (logp[rejected] - ref[rejected])
        loss = loss_of(objective, h, beta)
        if step % log_every == 0 or step == steps:
            with torch.no_grad():
                row = metrics_of(logp, ref, rewards, chosen, rejected, h, loss)
            records.append({"step": step, **row})
        if step == steps:
            break
        opt.zero_grad()
        loss.mean().backward()
        opt.step()
    return records


def train_reference(
    problem: Problem, layout: list[tuple[str, float, float]], *, steps: int, log_every: int
) -> pd.DataFrame:
    """Every run of ``problem`` one at a time; ``layout[i]`` = (objective, β, lr) of run i.

    Returns a table with the engine's columns (run, objective, beta, lr, seed, step, METRICS).
    """
    if problem.tree.n_prompts != 1 or not problem.tree.is_complete:
        raise ValueError("the reference handles single-prompt complete trees only")
    paths = path_table(problem.tree)
    records = []
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny per-run ops: threads only add overhead (see treemdp.threads)
    try:
        for run, (objective, beta, lr) in enumerate(layout):
            seed = int(problem.seeds[run])
            for rec in train_one(
                problem, run, objective, beta, lr, steps=steps, log_every=log_every, paths=paths
            ):
                records.append(
                    {"run": run, "objective": objective, "beta": beta, "lr": lr, "seed": seed} | rec
                )
    finally:
        torch.set_num_threads(threads)
    frame = pd.DataFrame.from_records(records)
    return frame[["run", "objective", "beta", "lr", "seed", "step", *METRICS]]
