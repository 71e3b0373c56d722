"""experiments/diagnose_truth.py end to end on two tiny llm_overopt seeds: its step-0 rows are
exactly the reference's (no change, no KL), its exact signals agree with the run's own eval.csv
where both measure the same thing, and it writes every table. (The analysis itself,
``treemdp.claims.early_warning``, is tested on planted tables in tests/test_early_warning.py.)"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from tests.scripts import load_script
from treemdp.runs import read_table
from treemdp.runs.cli import parse_config

overopt = load_script("experiments/llm_overopt.py")
truth = load_script("experiments/diagnose_truth.py")

TINY = [
    *("--objectives", "dpo", "--betas", "0.1", "--pairs", "8", "--batch", "4"),
    *("--checkpoints", "2", "--eval-samples", "4", "--eval-pairs", "4", "--sft-samples", "16"),
    *("--sft-epochs", "1", "--toy-sft-steps", "10", "--sizes", "tiny", "--branching", "3"),
    *("--max-length", "2", "--device", "cpu", "--no-progress"),
]


def test_diagnose_truth_on_two_tiny_seeds(tmp_path, capsys):
    roots = []
    for seed in (0, 1):
        root = tmp_path / f"s{seed}"
        overopt.main(parse_config(overopt.Config, [*TINY, "--seed", str(seed), "--out", str(root)]))
        roots.append(str(root))
    out = tmp_path / "truth"
    cfg = parse_config(
        truth.Config, ["--runs", *roots, "--out", str(out), "--n-resamples", "20", "--no-progress"]
    )
    truth.main(cfg)
    signals = read_table(out / "signals.csv")
    assert sorted(signals["seed"].unique()) == [0, 1]
    start = signals[signals["step"] == 0]
    for col in ("chosen_logp_change", "rejected_logp_change", "kl", "margin", "win_rate_change"):
        assert (start[col] == 0).all(), col
    later = signals[signals["step"] > 0]
    assert (later["kl"] > 0).all()
    # the exact KL and OOD mass here are those the run's own evaluation wrote
    for seed, root in zip((0, 1), roots, strict=True):
        (eval_csv,) = list(Path(root).rglob("llm/*/eval.csv"))
        ev = read_table(eval_csv).set_index("checkpoint")
        mine = signals[signals["seed"] == seed].set_index("step")
        assert mine["kl"].to_numpy() == pytest.approx(
            ev.loc[mine.index, "exact_kl_reverse"].to_numpy(), abs=1e-6
        )
        assert mine["exact_mass_ood"].to_numpy() == pytest.approx(
            ev.loc[mine.index, "exact_mass_ood"].to_numpy(), abs=0
        )
    warn = read_table(out / "warning.csv")
    assert {"setting_prior", "kl", "kl_rise", "argmax_mass"} <= set(warn["signal"])
    assert (warn["selection_seeds"] + warn["scored_seeds"] == 2).all()
    track = read_table(out / "tracking.csv")
    assert set(track["truth"]) == {"exact_mass_ood", "win_rate_change"}
    ches = read_table(out / "ches.csv")
    assert len(ches) == 2 and ches["ches_rank_corr"].between(-1, 1).all()
    assert "recommended detector" in capsys.readouterr().out
    assert {"stopping.csv", "selection.csv"} <= {p.name for p in out.iterdir()}
    # a second call reuses each run's cached rows and gives the same table
    truth.main(cfg)
    pd.testing.assert_frame_equal(read_table(out / "signals.csv"), signals)
