"""The confirm grid (``experiments/confirm_grid.py``, ``llm_confirm.py --grid``): the agreement
summary from a hand-made table, the closest-toy choice on constructed trajectories, the
degradation rule, resume after SIGKILL, the CLI dispatch and the GPU script's dry run."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

import treemdp.agreement as ag
from tests.scripts import ROOT, load_script
from treemdp.bridge import BRIDGE_COLUMNS

grid = load_script("experiments/confirm_grid.py")


def _cells(rows: list[tuple]) -> pd.DataFrame:
    """Cells from (objective, size, lr, seed, toy, toy_degrades, llm_degrades) tuples."""
    out = []
    for objective, size, lr, seed, toy, t, m in rows:
        cell = {
            "regime": "1pref",
            "objective": objective,
            "beta": 0.1,
            "lr": lr,
            "seed": seed,
            "size": size,
        }
        out.append({**cell, "side": "llm", "degrades": m, "llm_degrades": m, "agrees": np.nan})
        out.append({**cell, "side": toy, "degrades": t, "llm_degrades": m, "agrees": t == m})
    return pd.DataFrame(out)


def test_agreement_summary_from_a_hand_made_table():
    rows = [
        # dpo on tiny, lr 1e-3: the toy agrees on 3 of 4 seeds
        ("dpo", "tiny", 1e-3, 0, "loglinear-k8", True, True),
        ("dpo", "tiny", 1e-3, 1, "loglinear-k8", True, False),
        ("dpo", "tiny", 1e-3, 2, "loglinear-k8", False, False),
        ("dpo", "tiny", 1e-3, 3, "loglinear-k8", True, True),
        # ipo on 14m, lr 3e-3: 0 of 2
        ("ipo", "14m", 3e-3, 0, "loglinear-k8", True, False),
        ("ipo", "14m", 3e-3, 1, "loglinear-k8", False, True),
    ]
    table = ag.agreement(_cells(rows))
    fine = table[
        (table["objective"] == "dpo") & (table["size"] == "tiny") & (table["lr"] != "all")
    ].iloc[0]
    assert (fine["cells"], fine["agree"], fine["rate"]) == (4, 3, 0.75)
    assert (fine["toy_degrades"], fine["llm_degrades"]) == (3, 2)
    # the LLM says yes 2 of 4 times: majority 0.5; toy (1, 1, 0, 1) vs LLM (1, 0, 0, 1):
    # p_o = 3/4, p_e = 3/4·2/4 + 1/4·2/4 = 1/2, κ = (3/4 − 1/2) / (1/2) = 1/2
    assert (fine["majority_rate"], fine["kappa"]) == (0.5, pytest.approx(0.5))
    # Wilson 95%, k = 3, n = 4, z² = 3.841459, denominator 1 + z²/4 = 1.960365:
    # centre (0.75 + z²/8) / 1.960365 = 1.230182 / 1.960365 = 0.627527; half-width
    # z·sqrt(0.75·0.25/4 + z²/64) / 1.960365 = 1.959964 · 0.326953 / 1.960365 = 0.326884
    assert fine["ci_low"] == pytest.approx(0.627527 - 0.326884, abs=2e-6)
    assert fine["ci_high"] == pytest.approx(0.627527 + 0.326884, abs=2e-6)
    ipo = table[(table["objective"] == "ipo") & (table["size"] == "all")].iloc[0]
    assert (ipo["cells"], ipo["agree"], ipo["ci_low"]) == (2, 0, 0.0)
    # 0 of 2: the upper end is z²/(n + z²) = 3.8415 / 5.8415
    assert ipo["ci_high"] == pytest.approx(3.841459 / 5.841459, abs=1e-6)
    overall = table[
        (table["objective"] == "all") & (table["size"] == "all") & (table["lr"] == "all")
    ].iloc[0]
    assert (overall["cells"], overall["agree"]) == (6, 3)
    by_lr = table[(table["lr"] != "all") & (table["objective"] == "all")]
    assert sorted(by_lr["cells"]) == [2, 4]
    assert set(table.columns) >= {
        "objective",
        "size",
        "lr",
        "beta",
        "cells",
        "agree",
        "rate",
        "ci_low",
        "ci_high",
    }


def test_wilson_interval_edge_values():
    assert ag.wilson(0, 1) == pytest.approx((0.0, 3.841459 / 4.841459), abs=1e-6)
    assert all(math.isnan(x) for x in ag.wilson(0, 0))
    lo, hi = ag.wilson(50, 100)
    assert lo == pytest.approx(1 - hi) and lo == pytest.approx(0.4038, abs=1e-4)


def _trajectory(side: str, ood, in_dist, kl, *, llm=False) -> pd.DataFrame:
    n = len(ood)
    return pd.DataFrame(
        {
            "regime": "1pref",
            "objective": "dpo",
            "beta": 0.1,
            "lr": 1e-3 if llm else np.nan,
            "seed": 0,
            "size": "tiny" if llm else "",
            "side": side,
            "fraction": np.linspace(0, 1, n),
            "mass_ood": ood,
            "mass_in_dist": in_dist,
            "kl_reverse": kl,
            "win_rate": 0.5,
            "p_chosen": 0.5,
        }
    )


def test_closest_toy_on_constructed_trajectories():
    x = np.linspace(0, 1, 11)
    toys = [
        _trajectory("tabular", 0.1 * (1 - x), 0.9 + 0.1 * x, x),  # OOD mass falls
        _trajectory("loglinear-k8", 0.1 + 0.8 * x, 0.9 - 0.8 * x, 5 * x),  # degrades
        _trajectory("mlp-w4", 0.1 + 0.3 * x, 0.9 - 0.3 * x, 2 * x),
    ]
    # the LLM: the log-linear toy's path at 5 checkpoints, OOD mass 0.1 higher throughout
    at = np.linspace(0, 1, 5)
    llm = _trajectory("llm", 0.2 + 0.8 * at, 0.9 - 0.8 * at, 5 * at, llm=True)
    table = ag.closest_toy(pd.concat([*toys, llm], ignore_index=True))
    assert len(table) == 1
    row = table.iloc[0]
    assert row["closest"] == "loglinear-k8" and row["runner_up"] == "mlp-w4"
    # one of three quantities off by 0.1 at every checkpoint: RMS = sqrt(0.01 / 3)
    assert row["distance"] == pytest.approx(math.sqrt(0.01 / 3), rel=1e-12)
    # the toy's values are interpolated at the LLM's fractions: a toy logged only at the ends
    # of the same straight lines is as far
    coarse = _trajectory("loglinear-k8", [0.1, 0.9], [0.9, 0.1], [0.0, 5.0])
    assert ag.trajectory_distance(llm, coarse) == pytest.approx(math.sqrt(0.01 / 3))
    # KL enters as 1 − exp(−KL): the LLM against itself with KL + 1 everywhere
    shifted = llm.assign(kl_reverse=llm["kl_reverse"] + 1.0)
    gap = np.exp(-llm["kl_reverse"].to_numpy()) * (1 - np.exp(-1.0))
    expected = math.sqrt(np.mean(np.concatenate([np.zeros(10), gap**2])))
    assert ag.trajectory_distance(llm, shifted) == pytest.approx(expected, rel=1e-12)
    summary = ag.closest_by_size(table, ["tabular", "loglinear-k8", "mlp-w4"])
    assert list(summary["runs"]) == [0, 1, 0] and list(summary["share"]) == [0.0, 1.0, 0.0]


def test_degradation_rule_and_cells_table():
    x = np.linspace(0, 1, 6)
    frames = [
        _trajectory("loglinear-k8", 0.1 + 0.5 * x, 0.9 - 0.5 * x, x),  # +0.5 OOD: degrades
        _trajectory("tabular", 0.1 + 0.05 * x, 0.9 - 0.05 * x, x),  # +0.05 < margin 0.1
        _trajectory("llm", 0.1 + 0.2 * x, 0.9 - 0.2 * x, x, llm=True),  # degrades
    ]
    summary = ag.summarise(pd.concat(frames, ignore_index=True), 0.1)
    by = summary.set_index("side")["degrades"]
    assert bool(by["loglinear-k8"]) and not bool(by["tabular"]) and bool(by["llm"])
    cells = ag.cells_table(summary)
    assert list(cells["side"]) == ["llm", "loglinear-k8", "tabular"]
    assert list(cells["lr"]) == [1e-3] * 3 and list(cells["size"]) == ["tiny"] * 3
    assert list(cells["agrees"].iloc[1:]) == [True, False]


TINY = [
    *("--sizes", "tiny", "--objectives", "dpo", "--lrs", "1e-3", "--seeds", "0"),
    *("--regimes", "1pref", "bt", "--toy-ks", "2", "--toy-widths", "4", "--toy-steps", "40"),
    *("--toy-sft-steps", "20", "--bt-support", "2", "--bt-pairs", "8", "--bt-batch", "4"),
    *("--bt-epochs", "1", "--betas", "0.1", "--warmup-steps", "2", "--resamples", "20"),
    *("--sft-samples", "32", "--sft-epochs", "1", "--steps", "4", "--checkpoints", "2"),
    *("--eval-samples", "2", "--depth", "2", "--no-progress"),
]
TABLES = (
    "trajectories.csv",
    "cells.csv",
    "agreement.csv",
    "closest_toy.csv",
    "closest_toy_by_size.csv",
    "bridge.csv",
    "bridge_selection.csv",
)


def test_resume_after_sigkill_gives_the_uninterrupted_tables(tmp_path):
    """The grid SIGKILLs itself (``$TREEMDP_KILL_AFTER``, ``treemdp.runs.killpoint``) right after
    the second LLM run (bt) publishes its first checkpoint: the first run's part is saved, the
    second is mid-training. The rerun's tables equal an uninterrupted run's. No delay decides
    where the kill lands, so a fast or a loaded machine kills at the same point."""
    from treemdp.runs.cli import parse_config
    from treemdp.runs.killpoint import KILL_ENV

    env = dict(
        os.environ,
        OMP_NUM_THREADS="1",
        HF_HUB_OFFLINE="1",
        PYTHONPATH=str(ROOT),
        **{KILL_ENV: "*/llm/bt-*/latest.json:1"},
    )
    killed = tmp_path / "killed"
    argv = [
        sys.executable,
        str(ROOT / "experiments/llm_confirm.py"),
        "--grid",
        *TINY,
        "--out",
        str(killed),
    ]
    done = subprocess.run(
        argv, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    assert done.returncode == -signal.SIGKILL, done.stderr.decode()[-3000:]
    (folder,) = killed.iterdir()
    assert not (folder / "cells.csv").exists()
    done_before = sorted(p.name for p in (folder / "parts").glob("llm-*.pkl"))
    assert done_before == ["llm-1pref-tiny-seed0-lr0.001-dpo-beta0.1.pkl"], done_before
    (run,) = (folder / "llm").glob("bt-*")
    assert (run / "latest.json").is_file() and not (run / "eval.csv").exists()
    resumed = grid.main(parse_config(grid.Config, [*TINY, "--out", str(killed)]))
    fresh = grid.main(parse_config(grid.Config, [*TINY, "--out", str(tmp_path / "fresh")]))
    assert resumed.name == fresh.name
    for name in TABLES:
        assert (resumed / name).read_bytes() == (fresh / name).read_bytes(), name
    cells = pd.read_csv(fresh / "cells.csv")
    assert set(cells["regime"]) == {"1pref", "bt"} and set(cells["lr"]) == {1e-3}
    assert set(cells["side"]) == {"llm", "tabular", "loglinear-k2", "mlp-w4"}
    assert len(cells) == 2 * 4  # regimes × sides
    bt = pd.read_csv(fresh / "trajectories.csv").query("regime == 'bt' and side == 'llm'")
    assert sorted(bt["step"].unique()) == [0, 1, 2]  # 8 pairs / 4 per step: one epoch
    assert not list(fresh.glob("llm/*/step-*"))  # checkpoints dropped once summarised
    bridge = pd.read_csv(fresh / "bridge.csv")
    assert list(bridge.columns) == BRIDGE_COLUMNS
    # one seed: nothing is held out and no interval exists, so nothing is decided
    assert set(bridge["verdict"]) <= {"undecided", "no data"}
    assert not pd.read_csv(fresh / "bridge_selection.csv")["held_out"].any()


def test_grid_flag_dispatch_and_help(capsys):
    confirm = load_script("experiments/llm_confirm.py")
    with pytest.raises(SystemExit) as e:
        confirm.cli(["--grid", "--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    assert "--toy-ks" in text and "--regimes" in text and "--quick" in text
    with pytest.raises(SystemExit) as e:
        confirm.cli(["--grid", "--sizes", "huge", "--out", "/nonexistent/x"])
    assert e.value.code == 2
    assert "--sizes must be Pythia shapes" in capsys.readouterr().err


# scripts/gpu_confirm.sh --cpu-dry-run: tests/llm/test_gpu_all.py, whose dry run runs it.


def test_a_budget_spent_before_the_first_llm_run_is_one_line(tmp_path, capsys):
    confirm = load_script("experiments/llm_confirm.py")
    argv = ["--grid", *TINY, "--regimes", "1pref", "--budget-s", "1e-9", "--out", str(tmp_path)]
    with pytest.raises(SystemExit) as e:
        confirm.cli(argv)
    assert e.value.code == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "--budget-s 1e-09: reached before the first LLM run" in line
    (folder,) = tmp_path.iterdir()
    assert (folder / "parts" / "toy-1pref.pkl").is_file()  # the toy's part is kept for the rerun
    assert not (folder / "cells.csv").exists()


def test_distinct_lrs_and_betas_get_distinct_run_names():
    def name(lr, beta):
        return grid.LLMRun("1pref", "tiny", 0, lr, "dpo", beta).name

    assert name(1e-3, 0.1) == "1pref-tiny-seed0-lr0.001-dpo-beta0.1"  # ordinary values: as before
    assert name(3e-5, 0.03) == "1pref-tiny-seed0-lr3e-05-dpo-beta0.03"
    assert name(0.001, 0.1) != name(0.0010000001, 0.1)  # %g gave both "lr0.001"
    assert name(0.001, 0.1) != name(0.001, 0.1000001)
    assert name(0.0010000001, 0.1) == "1pref-tiny-seed0-lr0.0010000001-dpo-beta0.1"
    names = {item.name for item in grid.plan(grid.resolve(grid.Config(lrs=(1e-3, 1.0000001e-3))))}
    assert len(names) == len(grid.plan(grid.resolve(grid.Config(lrs=(1e-3, 1.0000001e-3)))))


def test_a_bt_epoch_must_be_whole_batches():
    with pytest.raises(ValueError, match="--bt-pairs 7 is not a multiple of --bt-batch 4"):
        grid.resolve(grid.Config(bt_pairs=7, bt_batch=4))
    grid.resolve(grid.Config(bt_pairs=7, bt_batch=4, regimes=("1pref",)))  # no bt: no epoch


@pytest.mark.parametrize("grid_flag", [True, False], ids=["grid", "one-setting"])
def test_an_unknown_device_is_one_line_before_anything_is_written(grid_flag, tmp_path, capsys):
    confirm = load_script("experiments/llm_confirm.py")
    argv = [*(["--grid"] if grid_flag else []), "--device", "tpu", "--out", str(tmp_path / "o")]
    with pytest.raises(SystemExit) as e:
        confirm.cli(argv)
    assert e.value.code == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "--device 'tpu' is not a device torch knows" in line
    assert not (tmp_path / "o").exists()


def test_the_bridge_pools_seeds_under_the_projects_run_identity():
    # config_id is treemdp.runs.identity's seed-free hash: other seeds or another output folder
    # are the same setting, another lr is not
    base = grid.Config()
    assert grid.config_id(base) == grid.config_id(grid.Config(seeds=(7, 8), out="elsewhere"))
    assert grid.config_id(base) != grid.config_id(grid.Config(lrs=(1e-3,)))
