"""Smoke test of experiments/theory_check.py: a tiny config writes a complete run folder."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pandas as pd

from treemdp.runs.cli import with_flags

SCRIPT = Path(__file__).resolve().parents[1] / "experiments" / "theory_check.py"


def _module():
    spec = importlib.util.spec_from_file_location("theory_check", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(mod)
    return mod


def test_smoke_theory_check_writes_a_run_folder(tmp_path: Path, capsys) -> None:
    mod = _module()
    settings = dict(beta=(0.5,), seed=(0,), steps=5, sft_steps=5, log_every=5)
    config = with_flags(mod.Config(), {**settings, "out": str(tmp_path)})
    folder = mod.main(config)
    for name in ("config.json", "theory_check.csv", "trajectory.csv", "theory_check.png"):
        assert (folder / name).exists(), name
    assert json.loads((folder / "config.json").read_text())["steps"] == 5
    table = pd.read_csv(folder / "theory_check.csv")
    assert len(table) == 3 and set(table["objective"]) == {"dpo", "ipo", "slic"}
    assert (table["excess_loss"] >= -1e-12).all()
    assert (table["minimiser_loss_lo"] - table["minimiser_loss_hi"]).abs().max() < 1e-12
    assert str(folder) in capsys.readouterr().out
    mod.main(config)  # a rerun finds the folder
    assert "reusing" in capsys.readouterr().out
