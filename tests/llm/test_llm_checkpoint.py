"""The checkpoint layout: folder names and which folders count as checkpoints."""

from __future__ import annotations

import pytest

from llm.checkpoint import (
    STATE,
    checkpoint_folders,
    checkpoint_name,
    checkpoint_step,
    complete_checkpoints,
)


def test_checkpoint_names_and_steps_are_inverse():
    for step in (0, 7, 1234567, 98765432):  # past 7 digits the name just grows
        assert checkpoint_step(checkpoint_name(step)) == step
    assert checkpoint_name(12) == "step-0000012"
    for bad in ("step-", "step-12a", ".step-0000012.tmp-3", "latest.json"):
        with pytest.raises(ValueError, match="not a checkpoint folder name"):
            checkpoint_step(bad)


def test_checkpoint_folders_by_step_and_the_complete_ones(tmp_path):
    for step in (10, 2, 300):
        (tmp_path / checkpoint_name(step)).mkdir()
    for step in (2, 300):
        (tmp_path / checkpoint_name(step) / STATE).write_bytes(b"state")
    (tmp_path / ".step-0000400.tmp-9").mkdir()  # being written: not a checkpoint yet
    (tmp_path / "step-notes").mkdir()  # not a checkpoint name
    (tmp_path / "step-0000500").write_text("a file")  # not a folder
    assert [p.name for p in checkpoint_folders(tmp_path)] == [
        "step-0000002",
        "step-0000010",
        "step-0000300",
    ]
    assert [p.name for p in complete_checkpoints(tmp_path)] == ["step-0000002", "step-0000300"]
    assert checkpoint_folders(tmp_path / "missing") == []
