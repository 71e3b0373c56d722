"""``llm.confirm.DAARun``: the spec of one bridge DAA run gives the training schedule, the run
folder's config and the labelled eval table (what ``daa_llm`` used to assemble from 19 keyword
arguments)."""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

import pandas as pd
import pytest
import torch

from llm.confirm import DAARun
from llm.evaluate import TreeTask
from llm.losses import DAALoss
from llm.train import _check_resume, checkpoint_steps, train
from treemdp.tree import Tree


def _spec(**kw) -> DAARun:
    base = dict(
        lr=1e-3, batch_size=4, epochs=1.0, checkpoints=3, seed=5, size="tiny", eval_samples=8
    )
    return DAARun("dpo", 0.1, **{**base, **kw})


def test_full_batch_and_minibatch_schedules():
    # full batch: 2 pairs, batch 4 -> 2 per step, epochs 30 -> 30 steps; 4 checkpoints at
    # ceil(i * 30 / 4) = 8, 15, 23, 30; the data order follows the seed
    full = _spec(batch_size=4, epochs=30.0, checkpoints=4)
    assert full.batch(2) == 2 and full.steps(2) == 30
    cfg = full.train_config(2)
    assert (cfg.batch_size, cfg.micro_batch_size, cfg.checkpoints) == (2, 2, 4)
    assert checkpoint_steps(cfg, full.steps(2)) == [8, 15, 23, 30]
    assert (cfg.seed, cfg.warmup_steps, cfg.lr) == (5, 0, 1e-3)
    # one epoch of 10 pairs in batches of 4: ceil(10 / 4) = 3 steps, 10 checkpoints asked for:
    # one at every step
    mini = _spec(batch_size=4, epochs=1.0, checkpoints=10, data_seed=0, warmup_steps=20)
    assert mini.steps(10) == 3
    cfg = mini.train_config(10)
    assert checkpoint_steps(cfg, 3) == [1, 2, 3]
    assert (cfg.seed, cfg.warmup_steps) == (0, 20)


@pytest.mark.parametrize("steps", range(1, 41))
def test_k_checkpoints_are_exactly_k_evenly_spread_ending_at_the_last_step(steps):
    for k in range(1, steps + 1):
        at = checkpoint_steps(_spec(checkpoints=k).train_config(1), steps)
        gaps = {b - a for a, b in zip([0, *at[:-1]], at, strict=True)}
        assert len(at) == k and at[-1] == steps and max(gaps) - min(gaps) <= 1, (steps, k, at)
        if steps % k == 0:  # divisible: every steps / k steps, as before the count was exact
            assert at == list(range(steps // k, steps + 1, steps // k))


def test_ten_steps_three_checkpoints_train_and_evaluate_three_times(
    tiny_model, text_examples, tmp_path
):
    # 1 pair, full batch, 10 steps: the policy is handed over at steps 4, 7 and 10 only (the
    # spacing every 10 // 3 = 3 steps gave 3, 6, 9 and the last, 10: four checkpoints)
    spec = _spec(batch_size=1, epochs=10.0, checkpoints=3)
    seen: list[int] = []
    loss = DAALoss("dpo", 0.1, reference=copy.deepcopy(tiny_model))
    train(tiny_model, text_examples[:1], loss, spec.train_config(1), tmp_path, pad_id=0,
          progress=False, save=False, on_checkpoint=lambda step, _: seen.append(step))  # fmt: skip
    assert seen == [4, 7, 10]


def test_a_run_from_before_the_exact_count_resumes_when_its_steps_are_the_same(tmp_path):
    # Before the count was exact, K checkpoints were every steps // K steps (checkpoint_every in
    # examples, no ``checkpoints`` field): the same steps when K divides the steps, so such a
    # run resumes; otherwise its checkpoints are elsewhere and it is refused.
    cfg = _spec(batch_size=2, epochs=1.0, checkpoints=4).train_config(16)  # 8 steps of 2
    old = {k: v for k, v in dataclasses.asdict(cfg).items() if k != "checkpoints"}
    _check_resume({"train_config": {**old, "checkpoint_every": 2 * 2}}, cfg, 16, tmp_path)
    three = _spec(batch_size=2, epochs=1.0, checkpoints=3).train_config(16)  # 3, 6, 8 now
    with pytest.raises(ValueError, match=r"cannot resume .*checkpoint steps"):
        _check_resume({"train_config": {**old, "checkpoint_every": 2 * 2}}, three, 16, tmp_path)


def test_config_json_and_labels():
    tree = Tree.complete(2, 2)
    task = TreeTask(tree, torch.zeros(4), torch.tensor([0]), torch.tensor([1]))
    spec = _spec(warmup_steps=10, hyper={"alpha": 0.3})
    config = spec.config_json(Path("sft"), task, n_pairs=1, n_params=7)
    assert config["warmup_steps"] == 10 and config["hyper"] == {"alpha": 0.3}
    assert (config["batch_size"], config["tree_depth"], config["size"]) == (1, 2, "tiny")
    assert "warmup_steps" not in _spec().config_json(Path("sft"), task, n_pairs=1, n_params=7)
    frame = spec.labelled(pd.DataFrame({"checkpoint": [0, 1]}), n_pairs=1)
    assert list(frame["fraction"]) == [0.0, 1.0] and set(frame["side"]) == {"llm"}
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.lr = 1.0  # type: ignore[misc]
