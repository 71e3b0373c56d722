"""Training: determinism, batching equals single runs, the tabular property, bad input."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.strategies import trees_with_pairs
from treemdp.problem import ProblemSpec, build_problem
from treemdp.train import RunSpec, TrainingDivergedError, train
from treemdp.tree import Tree

TREE = Tree.complete(3, 3)


def test_same_seed_gives_identical_history():
    runs = [RunSpec("dpo", 0.1, 0.01), RunSpec("ipo", 0.5, 0.02)]
    frames = [
        train(
            build_problem(TREE, [3, 4], ProblemSpec(sft_steps=20)), runs, steps=30, log_every=5
        ).frame
        for _ in range(2)
    ]
    assert frames[0].equals(frames[1])


def test_a_batch_of_runs_equals_the_runs_one_by_one():
    seeds = [0, 1, 2, 3]
    specs = [
        RunSpec("dpo", 0.1, 0.01),
        RunSpec("ipo", 0.5, 0.03),
        RunSpec("slic", 0.01, 0.02),
        RunSpec("rdpo", 0.3, 0.01, (("alpha", 0.2),)),
    ]
    problem = build_problem(TREE, seeds, ProblemSpec(sft_steps=30))
    batch = train(problem, specs, steps=60, log_every=10).frame
    for r in range(len(seeds)):
        single = train(
            build_problem(TREE, [seeds[r]], ProblemSpec(sft_steps=30)),
            [specs[r]],
            steps=60,
            log_every=10,
        )
        one = single.frame.drop(columns="run").reset_index(drop=True)
        mine = batch[batch["run"] == r].drop(columns="run").reset_index(drop=True)
        numeric = one.select_dtypes("number").columns
        assert (one["objective"] == mine["objective"]).all()
        assert ((one[numeric] - mine[numeric]).abs().to_numpy().max()) <= 1e-12


def test_history_logs_step_zero_every_k_and_the_last_step():
    problem = build_problem(TREE, [0], ProblemSpec(sft_steps=5))
    frame = train(problem, [RunSpec("dpo", 0.1, 0.01)], steps=23, log_every=10).frame
    assert frame["step"].tolist() == [0, 10, 20, 23]
    first = frame.iloc[0]
    assert first["kl_reverse"] == 0  # π = π_ref at step 0
    assert first["win_rate"] == pytest.approx(0.5, abs=1e-14)


@settings(max_examples=30)
@given(
    trees_with_pairs(),
    st.sampled_from(["dpo", "slic"]),
    st.floats(0.01, 2.0),
    st.floats(0.01, 5.0),
    st.integers(0, 1000),
)
def test_tabular_sgd_on_one_pair_never_lowers_p_chosen(tree, objective, beta, lr, seed):
    """With tabular logits, a DPO/SLiC gradient step only raises log π(y_w) − log π(y_l): along
    y_w's path every conditional rises and no other node moves π(y_w), whatever the step size."""
    problem = build_problem(tree, [seed], ProblemSpec(policy="tabular", reference="random"))
    frame = train(
        problem, [RunSpec(objective, beta, lr)], steps=15, optimizer="sgd", log_every=1
    ).frame
    p = frame["p_chosen"].to_numpy()
    assert (p[1:] >= p[:-1] - 1e-12).all()


def test_loglinear_dpo_can_lower_p_chosen():
    """Shared parameters break that property: the paper's over-optimization needs them."""
    problem = build_problem(TREE, list(range(10)), ProblemSpec(sft_steps=300))
    frame = train(problem, [RunSpec("dpo", 0.1, 0.01)] * 10, steps=1000, log_every=50).frame
    peak = frame.groupby("run")["p_chosen"].max()
    final = frame[frame["step"] == 1000].set_index("run")["p_chosen"]
    assert ((peak - final) > 0.2).any()


def test_nonfinite_loss_stops_training_naming_step_and_run():
    # A reference with zero probability on the chosen response makes h undefined.
    z = torch.zeros(TREE.n_internal, 3, dtype=torch.float64)
    problem = build_problem(TREE, [0], ProblemSpec(reference="given"), reference_logits=z)
    bad = int(problem.pairs.chosen[0, 0])
    node = int(TREE.leaves[bad])
    z[int(TREE.internal_index[TREE.parent[node]]), int(TREE.action[node])] = float("-inf")
    problem = build_problem(TREE, [0], ProblemSpec(reference="given"), reference_logits=z)
    with pytest.raises(
        TrainingDivergedError,
        match=r"loss of run 0 \(dpo, β=0.1, lr=0.01\) is not finite at step 0",
    ) as err:
        train(problem, [RunSpec("dpo", 0.1, 0.01)], steps=5)
    assert err.value.history.frame.empty


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (RunSpec("dpo", 0.0, 0.01), "beta"),
        (RunSpec("dpo", -1.0, 0.01), "beta"),
        (RunSpec("nope", 0.1, 0.01), "objective must be one of"),
        (RunSpec("dpo", 0.1, 0.0), "lr"),
        (RunSpec("dpo", 0.1, 0.01, (("gamma", 1.0),)), "unknown"),
    ],
)
def test_bad_run_specs_are_refused(spec, message):
    problem = build_problem(TREE, [0], ProblemSpec(sft_steps=0))
    with pytest.raises(ValueError, match=message):
        train(problem, [spec], steps=1)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"steps": -1}, "steps"),
        ({"steps": 1, "log_every": 0}, "log_every"),
        ({"steps": 1, "optimizer": "lbfgs"}, "optimizer must be one of"),
    ],
)
def test_bad_training_arguments_are_refused(kwargs, message):
    problem = build_problem(TREE, [0], ProblemSpec(sft_steps=0))
    with pytest.raises(ValueError, match=message):
        train(problem, [RunSpec("dpo", 0.1, 0.01)], **kwargs)


def test_one_spec_per_run_is_required():
    problem = build_problem(TREE, [0, 1], ProblemSpec(sft_steps=0))
    with pytest.raises(ValueError, match="one RunSpec per run"):
        train(problem, [RunSpec("dpo", 0.1, 0.01)], steps=1)


def test_recorded_response_logprobs_agree_with_the_logged_masses():
    problem = build_problem(TREE, [0, 1], ProblemSpec(sft_steps=20))
    specs = [RunSpec("dpo", 0.1, 0.05), RunSpec("slic", 0.1, 0.05)]
    history = train(problem, specs, steps=20, log_every=10, record_responses=True)
    table = history.response_frame()
    assert len(table) == 3 * 2 * TREE.n_responses
    probs = torch.exp(history.response_logp)  # (T, R, L)
    chosen = problem.pairs.chosen.squeeze(1)
    p_chosen = probs[:, torch.arange(2), chosen].reshape(-1).numpy()
    assert abs(p_chosen - history.frame["p_chosen"].to_numpy()).max() <= 1e-15
    with pytest.raises(ValueError, match="record_responses=True"):
        train(problem, specs, steps=1).response_frame()


def test_interleaved_objective_groups_train_as_the_same_runs_in_blocks():
    """Runs grouped by objective train alike whether a group's runs are contiguous (a slice)
    or interleaved (scattered back into run order)."""
    problem = build_problem(TREE, [0, 1], ProblemSpec(sft_steps=5))
    a, b = RunSpec("dpo", 0.1, 0.02), RunSpec("ipo", 0.4, 0.01)
    interleaved = train(problem.select([0, 1, 1, 0]), [a, b, a, b], steps=12, log_every=4)
    blocks = train(problem.select([0, 1, 1, 0]), [a, a, b, b], steps=12, log_every=4)
    # Run order [a0, b1, a1, b0] against [a0, a1, b1, b0]: map interleaved runs onto blocks.
    for r_inter, r_block in [(0, 0), (1, 2), (2, 1), (3, 3)]:
        x = interleaved.frame[interleaved.frame["run"] == r_inter].drop(columns="run")
        y = blocks.frame[blocks.frame["run"] == r_block].drop(columns="run")
        numeric = x.select_dtypes("number").columns
        assert (x["objective"].to_numpy() == y["objective"].to_numpy()).all()
        assert (x[numeric].to_numpy() - y[numeric].to_numpy()).max() <= 1e-12


def test_every_runs_beta_is_checked_exactly_once(monkeypatch):
    from treemdp import objectives

    checked = []
    check = objectives.check_beta
    monkeypatch.setattr(objectives, "check_beta", lambda b: checked.append(b.numel()) or check(b))
    problem = build_problem(TREE, [0], ProblemSpec(sft_steps=0)).select([0, 0, 0])
    specs = [RunSpec("dpo", 0.1, 0.01), RunSpec("ipo", 0.2, 0.01), RunSpec("dpo", 0.3, 0.01)]
    train(problem, specs, steps=3, log_every=1)
    assert sorted(checked) == [1, 2]  # one check per group, covering each run once
