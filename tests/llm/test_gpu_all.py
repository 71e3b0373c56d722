"""scripts/gpu_all.sh: one GPU call, stages by priority inside 540 s, and its CPU dry run: the
suite's one end-to-end run of gpu_figures.sh and gpu_confirm.sh --cpu-dry-run and of gpu_speed.sh's
TRL stage (tests/llm/test_gpu_speed.py runs gpu_speed.sh's other stages)."""

from __future__ import annotations

import json
import subprocess
import sys

import pandas as pd
import pytest

from tests.llm.helpers_llm import ROOT, subprocess_env
from tests.llm.test_gpu_speed import _check_trl_rows
from treemdp.runs import read_table

STAGES = ["setup", "figures", "speed", "trl", "confirm"]


def _gpu_all(out, *args: str, timeout: int, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", str(ROOT / "scripts" / "gpu_all.sh"), *args],
        env={**subprocess_env(), "OUT": str(out), "PYTHON": sys.executable, **env},
        cwd=ROOT, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip


def test_gpu_plan_fits_nine_minutes_and_each_script_fits_its_stage(tmp_path):
    res = _gpu_all(tmp_path, "--plan", timeout=30)
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert [line.split()[0] for line in lines] == [*STAGES, "total"]  # by priority
    caps = {s: int(line.split()[1]) for s, line in zip(STAGES[:-1], lines, strict=False)}
    assert sum(caps.values()) <= 540 and lines[-1] == "total 540"  # setup included
    assert lines[4] == f"confirm {540 - sum(caps.values())} (what is left)"
    for line in lines[1:4]:  # the scripts' own timeouts end before the stage is stopped
        _, cap, _, inner = line.split()
        assert 0 < int(inner) <= int(cap) - 5, line
    assert not (tmp_path / "summary.csv").exists()  # --plan runs nothing


def test_a_stage_cut_by_its_timeout_keeps_what_it_wrote_and_later_ones_are_skipped(tmp_path):
    # A 20 s budget: setup runs, the figures stage is stopped at what is left, nothing else starts.
    res = _gpu_all(tmp_path, "--cpu-dry-run", timeout=90, BUDGET="20", MIN_STAGE="3")
    assert res.returncode == 1, res.stdout[-3000:] + res.stderr[-3000:]
    summary = pd.read_csv(tmp_path / "summary.csv")
    assert list(summary["stage"]) == STAGES
    status = dict(zip(summary["stage"], summary["status"], strict=True))
    assert status["setup"] == "ok" and status["figures"] == "timeout", status
    assert all(status[s].startswith("skipped (") for s in ("speed", "trl", "confirm"))
    assert summary["seconds"].sum() <= 20 + 2
    assert list((tmp_path / "figures" / "logs").glob("*.log"))  # what it had written stays
    assert (tmp_path / "versions.json").is_file()
    # the stopped stage's processes (gpu_figures.sh, its timeout, python) are all gone
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    assert str(tmp_path) not in ps


@pytest.mark.slow
def test_smoke_gpu_all_cpu_dry_run_runs_every_stage(tmp_path):
    res = _gpu_all(tmp_path, "--cpu-dry-run", timeout=1100)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    summary = pd.read_csv(tmp_path / "summary.csv")
    assert list(summary["stage"]) == STAGES and set(summary["status"]) == {"ok"}
    _check_figures(tmp_path / "figures")
    figures = {p.name for p in (tmp_path / "figures" / "figures").rglob("*.png")}
    for obj in ("DPO", "IPO", "SLiC"):  # the 18 names' pattern, at the dry run's one size
        for metric in ("Winrate", "KL"):
            assert f"{metric}_evolution_over_epoch_for_{obj}_tiny.png" in figures
    speed = pd.read_csv(tmp_path / "speed" / "results.csv")
    assert speed.query("stage == 'packing'")["metric"].tolist() == ["skipped"]  # no CUDA here
    mfu = speed.query("stage == 'benchmark' and metric == 'mfu'")
    assert {i.split()[1] for i in mfu["item"]} == {"llm.train", "llm.train:pairs"}
    trl = pd.read_csv(tmp_path / "trl" / "results.csv")
    assert set(trl["stage"]) <= {"trl", "skipped", "timing"} and len(trl)  # ran, or said why
    _check_trl_rows(trl)
    (grid,) = (tmp_path / "confirm" / "grid").iterdir()  # gpu_confirm.sh --cpu-dry-run
    for name in ("agreement.csv", "closest_toy.csv", "cells.csv", "agreement.png", "bridge.csv"):
        assert (grid / name).is_file(), name
    log = (tmp_path / "confirm.log").read_text()
    assert "timings" in log and (tmp_path / "confirm" / "timings.txt").is_file()


def _check_figures(out) -> None:
    """gpu_figures.sh --cpu-dry-run's stages (what gpu_all gives it): 8 runs in 3 stages, the
    third in bf16-weights (recorded in timings.txt and each run's config), each evaluated in
    memory at exactly 10 checkpoints inside the epoch, and the llm family drawn under ``out``."""
    timings = (out / "timings.txt").read_text()
    assert timings.count("exit status 0") == 5, timings  # 3 training stages, figures, total
    runs = sorted(p.parent for p in (out / "runs").rglob("eval.csv"))
    assert len(runs) == 8 and len({p.name for p in runs}) == 8  # no run twice
    # the last stage trains bf16 weights (what the 6.9b stage gets on an 80 GB card)
    assert "precision bf16-weights" in timings and timings.count("precision fp32") == 2
    # (config.json names a precision only when it is not fp32, so older folders keep theirs)
    precisions = [
        json.loads((r / "config.json").read_text()).get("precision", "fp32") for r in runs
    ]
    assert sorted(precisions) == ["bf16-weights"] * 2 + ["fp32"] * 6
    for run_dir in runs:
        assert json.loads((run_dir / "config.json").read_text())["size"] == "tiny"
        assert not list(run_dir.glob("step-*"))  # evaluated in memory: no weights kept
        inside = read_table(run_dir / "eval.csv").query("checkpoint > 0")["fraction_of_epoch"]
        assert len(inside) == 10 and inside.between(0, 1, inclusive="right").all()
    drawn = list((out / "figures").rglob("*.png"))
    assert drawn and all(p.is_relative_to(out / "figures") for p in drawn)
