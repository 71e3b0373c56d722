"""experiments/diagnose_toy.py end to end on its --quick config: every table, the reference's
rows exactly zero, the truth columns are the engine's, a second call reuses the folder, and bad
flags are refused in one line before anything runs."""

from __future__ import annotations

import pytest

from tests.scripts import load_script
from treemdp.runs import read_table
from treemdp.runs.cli import parse_config

toy = load_script("experiments/diagnose_toy.py")


def test_quick_run_writes_every_table(tmp_path, capsys):
    cfg = parse_config(toy.Config, ["--quick", "--out", str(tmp_path)])
    folder = toy.main(cfg)
    out = capsys.readouterr().out
    for name in ("signals", "tracking", "warning", "stopping", "selection", "ches"):
        assert (folder / f"{name}.csv").is_file(), name
    signals = read_table(folder / "signals.csv")
    quick = toy.resolve(cfg)
    n_runs = len(quick.capacities) * len(quick.objectives) * len(quick.beta) * len(quick.seed)
    assert signals.groupby(["seed", "run"]).ngroups == n_runs
    start = signals[signals["step"] == 0]
    for col in ("chosen_logp_change", "rejected_logp_change", "kl", "margin", "win_rate_change"):
        assert (start[col] == 0).all(), col
    assert start["exact_win_rate"].to_numpy() == pytest.approx(0.5, abs=1e-12)
    assert signals["epochs"].max() == quick.epochs
    ches = read_table(folder / "ches.csv")
    assert len(ches) == n_runs and ches["ches_last"].between(-1, 1).all()
    assert "recommended detector" in out and "best stopping rule" in out
    toy.main(cfg)
    assert "reusing" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "match"),
    [
        (["--pairs", "6", "--batch-size", "4"], "--batch-size 4 must divide --pairs 6"),
        (["--seed", "0", "1", "2"], "--seed needs at least 4 seeds"),
        (["--capacities", "mlp0"], "--capacities"),
    ],
)
def test_bad_flags_are_refused(tmp_path, argv, match):
    cfg = parse_config(toy.Config, ["--quick", *argv, "--out", str(tmp_path)])
    with pytest.raises(ValueError, match=match):
        toy.main(cfg)
    assert not any(tmp_path.iterdir())
