"""experiments/sweep.py: a sweep equals its runs trained one by one, an interrupted sweep
(SIGKILL, Ctrl-C) resumes to the identical table, grid files are checked before any run."""

import json
import os
import random
import signal
import subprocess
import sys
from dataclasses import replace

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from tests.oracles import pairwise_win_rate
from tests.scripts import ROOT, load_script, run_script
from tests.strategies import logits, tied_rewards, trees_with_pairs
from treemdp.data import Pairs
from treemdp.metrics import MetricContext, metrics, win_rate, win_weights
from treemdp.policy import response_logprobs
from treemdp.problem import ProblemSpec, build_problem
from treemdp.runs import read_table
from treemdp.runs.cli import with_flags
from treemdp.train import RunSpec, train
from treemdp.tree import Tree

sweep = load_script("experiments/sweep.py")

SMALL = with_flags(
    sweep.Config(),
    dict(
        objectives=("dpo", "ipo", "slic"),
        betas=(0.1, 0.5),
        seeds=("3-4",),
        branching=(2,),
        depth=(2, 3),
        pairs=(1, 2),
        steps=20,
        log_every=5,
        sft_steps=10,
        chunk_runs=5,
        progress=False,
    ),
)


def test_a_sweep_equals_its_runs_started_one_by_one(tmp_path):
    config = replace(SMALL, out=str(tmp_path))
    frame = read_table(sweep.main(config) / "metrics.csv")
    n_runs = 2 * 2 * 3 * 2 * 2
    assert sorted(frame["run"].unique()) == list(range(n_runs))
    assert len(frame) == n_runs * 5  # steps 0, 5, 10, 15, 20
    numeric = [c for c in frame.columns if c not in ("run", "objective", "pair_source")]
    for (run, b, d, p, objective, beta, lr, seed), rows in frame.groupby(
        ["run", "branching", "depth", "pairs", "objective", "beta", "lr", "seed"]
    ):
        problem = build_problem(Tree.complete(b, d), [seed], ProblemSpec(pairs=p, sft_steps=10))
        alone = train(problem, [RunSpec(objective, beta, lr)], steps=20, log_every=5).frame
        rows = rows.reset_index(drop=True)
        for column in numeric:
            if column in alone:
                gap = (rows[column] - alone[column]).abs().max()
                assert gap <= 1e-12, (run, column, gap)


def _reference_table(tmp_path, config):
    folder = sweep.main(replace(config, out=str(tmp_path / "whole")))
    return (folder / "metrics.csv").read_bytes()


KILL = replace(SMALL, depth=(3,), pairs=(1,), steps=400, log_every=50, chunk_runs=1)


def test_a_killed_sweep_resumes_to_the_identical_table(tmp_path):
    """The sweep SIGKILLs itself right after its k-th chunk is saved (``$TREEMDP_KILL_AFTER``,
    k seeded at random): the kill lands where the test chooses, however fast the machine."""
    from treemdp.runs.killpoint import KILL_ENV

    whole = _reference_table(tmp_path, KILL)
    out = tmp_path / "killed"
    args = [
        *("--objectives", *KILL.objectives, "--betas", *map(str, KILL.betas)),
        *("--seeds", *KILL.seeds, "--branching", "2", "--depth", "3", "--steps", "400"),
        *("--log-every", "50", "--sft-steps", "10", "--chunk-runs", "1", "--no-progress"),
        *("--out", str(out)),
    ]
    n_chunks = len(sweep.plan(KILL))
    k = random.Random(0).randint(1, n_chunks - 1)
    done = subprocess.run(
        [sys.executable, str(ROOT / "experiments/sweep.py"), *args],
        cwd=ROOT,
        env={**os.environ, KILL_ENV: f"*/parts/*.pkl:{k}"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    assert done.returncode == -signal.SIGKILL
    parts = list(out.glob("*/parts/*.pkl"))
    assert len(parts) == k, f"killed after chunk {k} left {len(parts)} parts"
    assert not list(out.glob("*/metrics.csv"))
    folder = sweep.main(replace(KILL, out=str(out)))  # the rerun
    assert (folder / "metrics.csv").read_bytes() == whole
    assert len(list((folder / "parts").glob("*.pkl"))) == n_chunks
    assert not list((folder / "parts").glob(".*"))  # no temporary left behind


def test_ctrl_c_then_rerun_gives_the_identical_table(tmp_path, monkeypatch):
    whole = _reference_table(tmp_path, KILL)
    real, calls = sweep.run_chunk, []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(sweep, "run_chunk", interrupted)
    config = replace(KILL, out=str(tmp_path / "ctrl-c"))
    with pytest.raises(KeyboardInterrupt):
        sweep.main(config)
    monkeypatch.setattr(sweep, "run_chunk", real)
    folder = sweep.main(config)
    assert (folder / "metrics.csv").read_bytes() == whole
    again = sweep.main(config)  # a finished sweep is reused, not rerun
    assert again == folder and (folder / "metrics.csv").read_bytes() == whole


@pytest.mark.parametrize(
    ("suffix", "text", "message"),
    [
        (".json", '{"betas": [0.1], "betaz": [0.2]}', "unknown key 'betaz'"),
        (".toml", 'seeds = ["0-4", "9-7"]', "the range '9-7' is empty"),
        (".toml", "betas = [0.1, -0.5]", "betas must be > 0; got -0.5"),
        (".toml", 'objectives = ["dpo", "ppo"]', "objectives must be one of .*got 'ppo'"),
        (".json", '{"depth": "three"}', "depth must hold int values; got 'three'"),
        (".json", '{"lrs": []}', "lrs must hold at least one value"),
        (".toml", "steps = 10\nsteps = 20", "not valid toml"),
    ],
)
def test_bad_grid_files_fail_before_any_run_naming_the_problem(
    tmp_path, monkeypatch, suffix, text, message
):
    grid = tmp_path / f"grid{suffix}"
    grid.write_text(text)

    def no_runs(*args, **kwargs):
        raise AssertionError("a run started")

    monkeypatch.setattr(sweep, "run_chunk", no_runs)
    with pytest.raises(ValueError, match=message):
        grid_config = with_flags(sweep.Config(), sweep.load_grid(grid))
        sweep.main(replace(grid_config, out=str(tmp_path / "o")))
    assert not (tmp_path / "o").exists()


def test_bad_grid_file_on_the_command_line_exits_2_with_one_line(tmp_path):
    grid = tmp_path / "grid.json"
    grid.write_text(json.dumps({"objectives": ["dpo"], "sedes": "0-3"}))
    result = run_script("experiments/sweep.py", "--grid", str(grid), "--out", str(tmp_path))
    assert result.returncode == 2
    assert "unknown key 'sedes'" in result.stderr
    assert "Traceback" not in result.stderr
    assert list(tmp_path.iterdir()) == [grid]


def test_flags_override_the_grid_file_which_overrides_defaults(tmp_path):
    grid = tmp_path / "grid.toml"
    grid.write_text('betas = [0.2, 0.4]\nsteps = 7\nseeds = ["0-2", 5]\nlog-every = 3\n')
    config = sweep.parse_args(["--grid", str(grid), "--steps", "9"])
    assert (config.betas, config.steps, config.log_every) == ((0.2, 0.4), 9, 3)
    assert config.seeds == ("0-2", "5")
    assert config.objectives == sweep.Config().objectives


def test_seed_specs_expand_and_compress():
    assert sweep.parse_seeds(["0-3", "7", 9, "10-11"]) == [0, 1, 2, 3, 7, 9, 10, 11]
    assert sweep.compress_seeds([0, 1, 2, 3, 7, 9, 10, 11]) == ("0-3", "7", "9-11")
    with pytest.raises(ValueError, match="seeds must be distinct; repeated: \\[2\\]"):
        sweep.parse_seeds(["0-3", "2"])
    with pytest.raises(ValueError, match="'x-2' is neither an integer nor a range"):
        sweep.parse_seeds(["x-2"])


def test_runs_are_enumerated_in_a_fixed_order_and_chunked():
    chunks = sweep.plan(replace(SMALL, chunk_runs=7))
    runs = [r for c in chunks for r in c.runs]
    assert [r[0] for r in runs] == list(range(len(runs)))
    assert all(len(c.runs) <= 7 for c in chunks)
    # one shape and dataset kind per chunk, shapes in the order given
    assert [(c.depth, c.pairs) for c in chunks][:4] == [(2, 1), (2, 1), (2, 2), (2, 2)]


def test_memory_budget_bounds_the_chunk_size():
    config = replace(SMALL, chunk_runs=0, memory_mb=64)
    size = sweep.chunk_size(config, 3, 10)
    assert size >= 1 and size * sweep.run_bytes(config, 3, 10) <= 64 * 2**20


@given(trees_with_pairs(), st.data(), st.integers(0, 2**31))
def test_sorting_win_rate_equals_pairwise_definition_with_many_ties(tree, data, seed):
    rewards = data.draw(tied_rewards(tree.n_responses))
    pair = Pairs(torch.zeros(2, 1, dtype=torch.long), torch.ones(2, 1, dtype=torch.long))
    ctx = MetricContext.build(tree, rewards, pair)
    logp = response_logprobs(tree, logits(tree, 2, seed))
    ref = response_logprobs(tree, logits(tree, 2, seed + 1))
    fast = win_rate(ctx, logp, ref)
    for r in range(2):
        slow = pairwise_win_rate(tree, logp[r].exp(), ref[r].exp(), rewards[r])
        assert abs(float(fast[r]) - slow) <= 1e-12


@given(trees_with_pairs(), st.data(), st.integers(0, 2**31))
def test_precomputed_win_weights_give_identical_metrics(tree, data, seed):
    rewards = data.draw(tied_rewards(tree.n_responses))
    pair = Pairs(torch.zeros(2, 1, dtype=torch.long), torch.ones(2, 1, dtype=torch.long))
    ctx = MetricContext.build(tree, rewards, pair)
    logp = response_logprobs(tree, logits(tree, 2, seed))
    ref = response_logprobs(tree, logits(tree, 2, seed + 1))
    h = torch.zeros(2, 1, dtype=torch.float64)
    weights = win_weights(ctx, ref)
    assert bool(((weights >= 0) & (weights <= 1)).all())
    once = metrics(ctx, logp, ref, h, h, ref_weights=weights)
    for name, value in metrics(ctx, logp, ref, h, h).items():
        assert torch.equal(value, once[name]), name
    assert torch.equal(win_rate(ctx, logp, ref, weights=weights), once["win_rate"])
