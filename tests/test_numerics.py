"""Numerics at the extremes: every objective and every metric stays finite (log-space throughout)
for β from 1e-4 to 1e3, logits of ±1e4 and margins running to infinity; a NaN that appears anyway
stops the run, saves what it has and names the step and the quantity."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from tests.scripts import load_script
from tests.strategies import trees_with_pairs
from treemdp import objectives
from treemdp.data import Pairs
from treemdp.metrics import METRICS, MetricContext, logratio_length_r2, metrics
from treemdp.policy import response_logprobs
from treemdp.problem import ProblemSpec, build_problem
from treemdp.runs import read_table
from treemdp.runs.cli import DIVERGED_EXIT, run
from treemdp.train import RunSpec, train
from treemdp.tree import Tree

betas = st.floats(-4, 3).map(lambda e: 10.0**e)  # β from 1e-4 to 1e3, log-uniform
logps = st.floats(-1e5, 0.0, allow_nan=False)  # log-probs of responses of up to ~10 tokens, ±1e4
lengths = st.integers(1, 64)


def _hyper(name: str, len_chosen: float, len_rejected: float) -> dict:
    return objectives.length_hyper(name, len_chosen, len_rejected)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("name", objectives.names())
@given(quad=st.tuples(logps, logps, logps, logps), beta=betas, lc=lengths, lr=lengths)
def test_every_objective_is_finite_with_finite_gradients_at_extremes(
    name, dtype, quad, beta, lc, lr
):
    # Finiteness, not boundedness: robust_dpo is unbounded below by design (→ -∞ as h → ∞).
    x = [torch.tensor([v], dtype=dtype, requires_grad=True) for v in quad]
    value = objectives.loss(name, *x, beta=beta, **_hyper(name, lc, lr))
    assert bool(torch.isfinite(value).all()), (name, quad, beta, value)
    grads = torch.autograd.grad(value.sum(), x, allow_unused=True)
    for g in grads:
        assert g is None or bool(torch.isfinite(g).all()), (name, quad, beta, grads)


@pytest.mark.parametrize("name", objectives.names())
@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_margins_at_the_float_limit_give_finite_losses(name, sign):
    # h = ±(1e300 − (−1e300)) overflows to ±inf in the margin itself; the losses must not turn
    # that into NaN at the largest margins a float64 policy can represent before it does.
    big = torch.tensor([sign * 1e150], dtype=torch.float64)
    zero = torch.zeros(1, dtype=torch.float64)
    for beta in (1e-4, 1.0, 1e3):
        value = objectives.loss(name, big, -big, zero, zero, beta=beta, **_hyper(name, 3, 5))
        assert not bool(torch.isnan(value).any()), (name, sign, beta, value)


@given(tree=trees_with_pairs(), scale=st.sampled_from([1e2, 1e3, 1e4]), seed=st.integers(0, 99))
def test_every_metric_is_finite_for_logits_of_1e4(tree, scale, seed):
    gen = torch.Generator().manual_seed(seed)
    shape = (2, tree.n_internal, tree.branching)
    logits = scale * (2 * torch.rand(shape, generator=gen, dtype=torch.float64) - 1)
    ref_logits = scale * (2 * torch.rand(shape, generator=gen, dtype=torch.float64) - 1)
    logp, ref = response_logprobs(tree, logits), response_logprobs(tree, ref_logits)
    L = tree.n_responses
    chosen = torch.randint(0, L, (2, 2), generator=gen)
    rejected = (chosen + 1) % L
    rewards = torch.randn(2, L, generator=gen, dtype=torch.float64)
    ctx = MetricContext.build(tree, rewards, Pairs(chosen, rejected))
    h = torch.full((2, 2), 1e4 * scale, dtype=torch.float64)
    loss = objectives.loss("dpo", h, -h, 0 * h, 0 * h, beta=1e3)
    out = metrics(ctx, logp, ref, h, loss)
    for name in METRICS:
        assert bool(torch.isfinite(out[name].double()).all()), (name, out[name])
    assert bool((out["kl_reverse"] >= -1e-9).all() and (out["kl_forward"] >= -1e-9).all())
    for mass in ("p_chosen", "p_rejected", "mass_in_dist", "mass_ood", "max_ood", "win_rate"):
        assert bool(((out[mass] >= 0) & (out[mass] <= 1 + 1e-9)).all()), (mass, out[mass])
    r2 = logratio_length_r2(tree, logp, ref)  # NaN only where undefined, never ±inf
    assert not bool(torch.isinf(r2).any())


@pytest.mark.parametrize("objective", ["dpo", "slic", "ipo", "robust_dpo", "kto", "chipo"])
def test_long_training_with_margins_running_away_stays_finite(objective):
    # Tabular logits, a large learning rate and β at both ends: DPO's margin runs to infinity
    # (its loss → 0 while π(y_l) → 0), every logged metric must stay finite.
    tree = Tree.complete(2, 3)
    problem = build_problem(tree, [0, 1], ProblemSpec(policy="tabular", pairs=2, sft_steps=0))
    specs = [RunSpec(objective, b, 0.5) for b in (1e-4, 1e3)] * 1
    problem = problem.select([0, 1])
    history = train(problem, specs, steps=1500, log_every=100)
    frame = history.frame
    assert frame[list(METRICS)].notna().all().all()
    assert torch.isfinite(torch.tensor(frame[list(METRICS)].to_numpy(dtype=float))).all()
    assert bool(torch.isfinite(history.theta).all())


def test_a_nan_stops_the_experiment_saves_the_partial_table_and_exits_3(tmp_path, capsys):
    # An absurd learning rate overflows θ at the first step: the run stops at step 1, saves the
    # logged step 0, and says which quantity of which run went non-finite.
    om = load_script("experiments/ood_mass.py")
    args = ["--optimizer", "sgd", "--lr", "1e300", "--objectives", "ipo", "--steps", "5"]
    args += ["--seed", "0", "--sft-steps", "0", "--log-every", "1", "--out", str(tmp_path)]
    with pytest.raises(SystemExit) as exit_:
        run(om.Config, om.main, args)
    assert exit_.value.code == DIVERGED_EXIT
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "loss of run 0 (ipo, β=0.1, lr=1e+300) is not finite at step 1" in line
    (partial,) = tmp_path.glob("*/metrics.diverged.csv")
    assert str(partial) in line
    table = read_table(partial)
    assert table["step"].tolist() == [0] and not (partial.parent / "metrics.csv").exists()


def test_a_diverged_sweep_chunk_saves_it_and_names_the_global_run(tmp_path, capsys):
    sweep = load_script("experiments/sweep.py")
    args = ["--objectives", "ipo", "--betas", "0.1", "--seeds", "0-1", "--branching", "2"]
    args += ["--depth", "2", "--steps", "3", "--sft-steps", "0", "--optimizer", "sgd"]
    args += ["--lrs", "1e300", "--log-every", "1", "--no-progress", "--out", str(tmp_path)]
    config = sweep.parse_args(args)
    with pytest.raises(Exception, match=r"chunk 0 .*run \d+ \(ipo, β=0.1") as err:
        sweep.main(config)
    assert type(err.value).__name__ == "RunDivergedError"
    (partial,) = tmp_path.glob("*/chunk-00000-of-00001.diverged.csv")
    assert read_table(partial)["run"].isin([0, 1]).all()
    assert not math.isnan(read_table(partial)["loss"].iloc[0])
