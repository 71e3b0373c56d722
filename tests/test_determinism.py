"""Determinism: the same seed gives bit-identical tables on CPU, for the treemdp engine (a whole
experiment, minibatch training) and for the llm package (weights, optimizer state, log)."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from tests.scripts import load_script
from treemdp.problem import ProblemSpec, build_problem
from treemdp.runs.cli import parse_config
from treemdp.train import RunSpec, train
from treemdp.tree import Tree


def test_an_experiment_twice_gives_bit_identical_tables(tmp_path):
    om = load_script("experiments/ood_mass.py")
    args = ["--steps", "60", "--seed", "0", "1", "--sft-steps", "20", "--log-every", "10"]
    args += ["--objectives", "dpo", "ipo", "slic", "kto", "--beta", "0.1", "1.0"]
    a = om.main(parse_config(om.Config, [*args, "--out", str(tmp_path / "a")]))
    b = om.main(parse_config(om.Config, [*args, "--out", str(tmp_path / "b")]))
    for name in ("metrics.csv", "responses.csv"):  # config.json differs by --out only
        assert (a / name).read_bytes() == (b / name).read_bytes(), name


def test_minibatch_training_of_a_network_twice_is_bit_identical():
    tree = Tree.with_stop(3, 3)
    frames = []
    for _ in range(2):
        problem = build_problem(
            tree, [3, 4], ProblemSpec(policy="mlp", width=4, pairs=8, sft_steps=10)
        )
        specs = [RunSpec("dpo", 0.1, 0.03), RunSpec("rdpo", 0.3, 0.03, (("alpha", 0.1),))]
        frames.append(train(problem, specs, steps=30, log_every=5, batch_size=3).frame)
    pd.testing.assert_frame_equal(frames[0], frames[1], check_exact=True)


@pytest.mark.slow
def test_llm_training_twice_gives_bit_identical_checkpoints_and_log(tmp_path):
    lt = load_script("experiments/llm_train.py")
    args = ["--model", "tiny", "--source", "tree", "--tree-pairs", "0>1,5>7,3>20"]
    args += ["--objective", "ipo", "--batch-size", "2", "--micro-batch-size", "1"]
    args += ["--lr", "1e-3", "--warmup-steps", "1", "--epochs", "2", "--reference-dtype", "fp32"]
    args += ["--checkpoint-every", "2", "--no-progress", "--out", str(tmp_path)]
    runs = []
    for name in ("a", "b"):
        lt.main(parse_config(lt.Config, [*args, "--run-name", name]))
        runs.append(tmp_path / name)
    a, b = runs
    checkpoints = sorted(p.name for p in a.glob("step-*"))
    assert checkpoints == sorted(p.name for p in b.glob("step-*")) and checkpoints
    for step in checkpoints:
        weights = "model.safetensors"
        assert (a / step / weights).read_bytes() == (b / step / weights).read_bytes(), step
        sa = torch.load(a / step / "trainer_state.pt", weights_only=False)
        sb = torch.load(b / step / "trainer_state.pt", weights_only=False)
        assert torch.equal(sa["torch_rng"], sb["torch_rng"])  # seeded: resumes are identical
        for x, y in zip(
            sa["optimizer"]["state"].values(), sb["optimizer"]["state"].values(), strict=True
        ):
            assert all(torch.equal(x[k], y[k]) for k in x), step
    timing = ["tokens_per_s", "pairs_per_s"]
    log_a = pd.read_csv(a / "log.csv").drop(columns=timing)
    log_b = pd.read_csv(b / "log.csv").drop(columns=timing)
    pd.testing.assert_frame_equal(log_a, log_b, check_exact=True)
