"""experiments/toy_scaling.py: capacity parsing, fits table, and an end-to-end smoke run."""

import dataclasses

import numpy as np
import pytest

from tests.scripts import load_script
from treemdp.runs import read_table
from treemdp.runs.cli import with_flags

toy = load_script("experiments/toy_scaling.py")


def tiny(tmp_path, **kw):
    base = dict(quick=True, objectives=("dpo", "rdpo"), out=str(tmp_path), n_resamples=5)
    return with_flags(toy.Config(), {**base, **kw})


def test_parse_capacity():
    assert toy.parse_capacity("tabular") == {"policy": "tabular"}
    assert toy.parse_capacity("mlp16") == {"policy": "mlp", "width": 16, "layers": 1}
    assert toy.parse_capacity("mlp8x2") == {"policy": "mlp", "width": 8, "layers": 2}
    for bad in ("mlp", "mlp0", "cnn4", "mlp4x0"):
        with pytest.raises(ValueError, match="--capacities"):
            toy.parse_capacity(bad)


def test_smoke_toy_scaling_writes_table_fits_and_figures(tmp_path, capsys):
    config = tiny(tmp_path)
    folder = toy.main(config)
    for name in (
        "config.json",
        "metrics.csv",
        "fits.csv",
        "win_vs_d_final.png",
        "win_vs_d_all.png",
    ):
        assert (folder / name).exists()
    table = read_table(folder / "metrics.csv")
    needed = [
        "objective",
        "beta",
        "capacity",
        "seed",
        "step",
        "fraction_of_epoch",
        "kl_reverse",
        "kl_forward",
        "d",
        "win_rate",
        "gold_reward",
        "loss",
        "reward_accuracy",
        "mass_ood",
        "length",
        "length_r2",
    ]
    assert set(needed) <= set(table.columns)
    assert table.loc[table["step"] == 0, "length_r2"].isna().all()  # π = π_ref: undefined
    later = table.loc[table["step"] > 0, "length_r2"]
    assert later.notna().all() and later.between(0, 1).all()
    resolved = toy.resolve(config)
    n_runs = len(config.objectives) * len(resolved.beta) * len(resolved.seed)
    assert table.groupby("capacity")["run"].nunique().eq(n_runs).all()
    start = table[table["step"] == 0]
    np.testing.assert_allclose(start["win_rate"], 0.5, atol=1e-12)  # π = π_ref at step 0
    np.testing.assert_allclose(table["d"] ** 2, table["kl_reverse"], rtol=1e-12)
    fits = read_table(folder / "fits.csv")
    assert set(fits["checkpoints"]) == {"final", "all"} and set(fits["kl"]) == {
        "reverse",
        "forward",
    }
    assert {"alpha", "beta", "rmse", "peak_d", "alpha_lo", "rmse_rl_over_quadratic"} <= set(fits)
    assert "results in" in capsys.readouterr().out

    again = toy.main(config)  # a rerun reuses the finished folder
    assert again == folder and "reusing" in capsys.readouterr().out
    forced = toy.main(dataclasses.replace(config, force=True))
    assert forced == folder and "reusing" not in capsys.readouterr().out


def test_bad_capacity_is_a_one_line_cli_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        toy.run(toy.Config, toy.main, ["--quick", "--capacities", "cnn", "--out", str(tmp_path)])
    assert e.value.code == 2 and "--capacities" in capsys.readouterr().err
