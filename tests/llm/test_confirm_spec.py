"""``llm.confirm.DAARun``: the spec of one bridge DAA run gives the training schedule, the run
folder's config and the labelled eval table (what ``daa_llm`` used to assemble from 19 keyword
arguments)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pandas as pd
import pytest
import torch

from llm.confirm import DAARun
from llm.evaluate import TreeTask
from treemdp.tree import Tree


def _spec(**kw) -> DAARun:
    base = dict(
        lr=1e-3, batch_size=4, epochs=1.0, checkpoints=3, seed=5, size="tiny", eval_samples=8
    )
    return DAARun("dpo", 0.1, **{**base, **kw})


def test_full_batch_and_minibatch_schedules():
    # full batch: 2 pairs, batch 4 -> 2 per step, epochs 30 -> 30 steps; checkpoint every
    # 30 // 4 = 7 steps = 14 examples; the data order follows the seed
    full = _spec(batch_size=4, epochs=30.0, checkpoints=4)
    assert full.batch(2) == 2 and full.steps(2) == 30
    cfg = full.train_config(2)
    assert (cfg.batch_size, cfg.micro_batch_size, cfg.checkpoint_every) == (2, 2, 14)
    assert (cfg.seed, cfg.warmup_steps, cfg.lr) == (5, 0, 1e-3)
    # one epoch of 10 pairs in batches of 4: ceil(10 / 4) = 3 steps, checkpoint every step
    mini = _spec(batch_size=4, epochs=1.0, checkpoints=10, data_seed=0, warmup_steps=20)
    assert mini.steps(10) == 3
    cfg = mini.train_config(10)
    assert (cfg.checkpoint_every, cfg.seed, cfg.warmup_steps) == (4, 0, 20)


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
