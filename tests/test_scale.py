"""Ray fan-out (treemdp.runs.backends): the same tables as the serial backend, a worker killed
mid-cell, two drivers on one results folder, and the engine never importing Ray.

One local Ray cluster (2 CPUs, no dashboard) serves the whole module: starting one costs about
10-15 s on the 2 shared cores, so every Ray test lives here and shares it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from tests.scripts import ROOT, load_script
from treemdp.runs import MANIFEST, RunFolderBusyError, run_lock
from treemdp.runs.backends import Backend, check_backend, map_cells, run_seeds
from treemdp.runs.cli import arg, with_flags

ray = pytest.importorskip("ray")  # the `scale` extra; scripts/setup.sh installs it
sweep = load_script("experiments/sweep.py")

# Ray's token authentication would make the drivers started below look for the token file; a
# cluster that listens on loopback for one test session needs none
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

GRID = with_flags(
    sweep.Config(),
    dict(
        objectives=("dpo", "ipo"),
        betas=(0.1, 0.5),
        seeds=("0-2",),
        branching=(2,),
        depth=(2,),
        steps=30,
        log_every=10,
        sft_steps=10,
        chunk_runs=3,  # 4 cells
        progress=False,
    ),
)
RAY = Backend("ray")


@pytest.fixture(scope="session")
def cluster():
    """One local Ray for the session; its address for drivers started as processes."""
    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


@pytest.fixture(scope="module")
def serial(tmp_path_factory):
    """The grid's folder written by the serial backend (the reference of every Ray test)."""
    return sweep.main(replace(GRID, out=str(tmp_path_factory.mktemp("serial"))))


def _table(folder: Path) -> bytes:
    return (folder / "metrics.csv").read_bytes()


def _parts(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((folder / "parts").glob("*.pkl"))}


def test_importing_the_engine_does_not_import_ray():
    code = (
        "import sys, treemdp, treemdp.train, treemdp.runs, treemdp.runs.backends, "
        "treemdp.runs.experiment; assert 'ray' not in sys.modules, 'ray was imported'"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_bad_backend_flags_are_one_line_errors(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="--address needs --backend ray"):
        sweep.main(replace(GRID, out=str(tmp_path), run=Backend(address="auto")))
    assert not any(tmp_path.iterdir())  # refused before anything was written
    monkeypatch.setitem(sys.modules, "ray", None)  # as where the `scale` extra is missing
    with pytest.raises(ValueError, match=r"--backend ray needs Ray: pip install"):
        list(map_cells(abs, [1], RAY))
    monkeypatch.undo()
    with pytest.raises(ValueError, match="--backend must be one of serial, ray"):
        check_backend(Backend("dask"))
    with pytest.raises(ValueError, match="--address needs --backend ray"):
        check_backend(Backend("serial", address="auto"))
    with pytest.raises(ValueError, match="--cell-gpus above 1 must be a whole number"):
        check_backend(Backend("ray", cell_gpus=1.5))


def test_a_ray_sweep_writes_the_serial_sweeps_bytes_and_a_rerun_reuses_it(
    tmp_path, cluster, serial
):
    fanned = sweep.main(replace(GRID, out=str(tmp_path / "ray"), run=RAY))
    assert fanned.name == serial.name  # the backend is not part of the run folder's identity
    assert _table(fanned) == _table(serial)
    assert _parts(fanned) == _parts(serial)
    before = {p: p.stat().st_mtime_ns for p in fanned.rglob("*") if p.is_file()}
    sweep.main(replace(GRID, out=str(tmp_path / "ray"), run=RAY))  # idempotent: nothing rewritten
    assert {p: p.stat().st_mtime_ns for p in fanned.rglob("*") if p.is_file()} == before


def _dies_once(run_chunk, marker: Path):
    """``run_chunk``, except that the first attempt at chunk 1 SIGKILLs its own worker."""

    def run(config, chunk, tree, **kwargs):
        if chunk.index == 1 and not marker.exists():
            marker.write_text(str(os.getpid()))
            os.kill(os.getpid(), signal.SIGKILL)
        return run_chunk(config, chunk, tree, **kwargs)

    return run


def test_a_worker_killed_mid_cell_is_retried_and_nothing_is_lost_or_written_twice(
    tmp_path, cluster, monkeypatch, serial
):
    reference = serial
    marker = tmp_path / "killed-once"
    writes: list[str] = []
    write_checked = sweep.write_checked

    def counted(path, data):
        writes.append(Path(path).name)
        return write_checked(path, data)

    monkeypatch.setattr(sweep, "run_chunk", _dies_once(sweep.run_chunk, marker))
    monkeypatch.setattr(sweep, "write_checked", counted)
    folder = sweep.main(replace(GRID, out=str(tmp_path / "ray"), run=RAY))
    assert marker.exists() and int(marker.read_text()) != os.getpid()  # a worker died
    parts = [w for w in writes if w.endswith(".pkl")]
    assert sorted(parts) == sorted(set(parts)) and len(parts) == 4  # each part written once
    assert _table(folder) == _table(reference)
    assert _parts(folder) == _parts(reference)
    assert (folder / "parts" / MANIFEST).is_file()


def test_two_drivers_on_one_results_folder_end_with_one_table(tmp_path, cluster, serial):
    """A driver started as a process and one in this process, on the same sweep at once: each
    computes it, reuses it or refuses in one line; one table, no leftovers."""
    out = tmp_path / "shared"
    flags = ["--objectives", "dpo", "ipo", "--betas", "0.1", "0.5", "--seeds", "0-2"]
    flags += ["--branching", "2", "--depth", "2", "--steps", "30", "--log-every", "10"]
    flags += ["--sft-steps", "10", "--chunk-runs", "3", "--no-progress", "--out", str(out)]
    flags += ["--backend", "ray", "--address", cluster]
    command = [sys.executable, str(ROOT / "experiments/sweep.py"), *flags]
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    other = subprocess.Popen(command, cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True)
    try:
        here = sweep.main(replace(GRID, out=str(out), run=RAY))
    except RunFolderBusyError:
        here = None
    _, stderr = other.communicate(timeout=300)
    assert other.returncode == 0 or (
        other.returncode == 2 and "is in use by another process" in stderr
    ), (other.returncode, stderr)
    assert here is not None or other.returncode == 0
    (folder,) = out.glob("sweep-*")
    assert _table(folder) == _table(serial)
    assert not list(folder.rglob(".*.tmp")) and not (folder / ".lock").exists()


def test_map_cells_gives_every_result_once_and_raises_a_cells_own_error(cluster):
    got = dict(map_cells(abs, [-3, 1, -2], RAY))
    assert got == {0: 3, 1: 1, 2: 2}
    with pytest.raises(ValueError, match="math domain error"):
        dict(map_cells(_sqrt, [-1.0], RAY))


def _sqrt(x: float) -> float:
    import math

    return math.sqrt(x)


# ------------------------------------------ the hooks of claims --search and the confirm grid


def _fake_toy_run(script, settings, results):
    """claims.find_or_run in a worker: marks the variant's run with the worker's pid."""
    (Path(results) / f"pairs-{settings['pairs']}.pid").write_text(str(os.getpid()))
    return Path(results)


def test_claims_search_runs_every_variants_toy_run_as_a_ray_task(tmp_path, cluster, monkeypatch):
    claims = load_script("experiments/claims.py")
    monkeypatch.setattr(claims, "find_or_run", _fake_toy_run)
    config = replace(claims.Config(), run=RAY)
    settings = [claims.search_settings(config, change) for _, change in claims.SEARCH.values()]
    claims.fan_out(config, tmp_path, settings)
    pids = {p.name: int(p.read_text()) for p in tmp_path.glob("*.pid")}
    assert set(pids) == {f"pairs-{s['pairs']}.pid" for s in settings}
    assert os.getpid() not in pids.values()  # each ran in a worker


def _fake_sft(problem, folder, **kwargs):
    return Path(folder)


def _fake_run_llm(cfg, problem, r, item, sft, folder, device, kl):
    import pandas as pd

    return pd.DataFrame({"name": [item.name], "sft": [sft.name], "pid": [os.getpid()], "kl": [kl]})


def test_the_confirm_grid_runs_each_sft_group_as_a_ray_task_and_writes_each_part_once(
    tmp_path, cluster, monkeypatch
):
    grid = load_script("experiments/confirm_grid.py")
    monkeypatch.setattr(grid, "sft_llm", _fake_sft)
    monkeypatch.setattr(grid, "_sft_report", lambda *a: 0.5)
    monkeypatch.setattr(grid, "run_llm", _fake_run_llm)
    cfg = grid.resolve(replace(grid.Config(), quick=True, run=RAY, out=str(tmp_path)))
    items = grid.plan(cfg)
    timings: list[dict] = []
    grid.fan_out_llm(cfg, tmp_path, {"1pref": None}, items, timings)
    parts = sorted((tmp_path / "parts").glob("llm-*.pkl"))
    assert [p.name for p in parts] == sorted(f"llm-{i.name}.pkl" for i in items)
    frames = [grid._read_part(p) for p in parts]  # checked against parts/manifest.json
    by_name = {i.name: i for i in items}
    for f in frames:  # each run trained on its own group's SFT
        key = by_name[f["name"].iloc[0]].sft_key
        assert f["sft"].iloc[0] == grid._sft_dir(tmp_path, key).name
    assert os.getpid() not in {int(f["pid"].iloc[0]) for f in frames}
    groups = {i.sft_key for i in items}
    assert len(timings) == len(items) + len(groups)  # one SFT per group, one row per run


@dataclass(frozen=True)
class SeedConfig:
    seed: int = arg(0, "seed")
    out: str = arg("", "folder")


def _one_seed(config: SeedConfig) -> str:
    """A stand-in for llm_overopt's main: one run folder per seed, under its lock."""
    folder = Path(config.out) / f"seed-{config.seed}"
    with run_lock(folder):
        (folder / "pid").write_text(str(os.getpid()))
    return folder.name


def test_a_seed_sweep_runs_each_seed_once_in_seed_order_on_either_backend(tmp_path, cluster):
    here = ["--out", str(tmp_path / "serial"), "--seeds", "3", "0-1"]
    assert run_seeds(SeedConfig, _one_seed, here) == ["seed-3", "seed-0", "seed-1"]
    on_ray = ["--out", str(tmp_path / "ray"), "--seeds", "0-2", "--backend", "ray"]
    assert run_seeds(SeedConfig, _one_seed, on_ray) == ["seed-0", "seed-1", "seed-2"]
    pids = {int(p.read_text()) for p in (tmp_path / "ray").glob("seed-*/pid")}
    assert len(list((tmp_path / "ray").iterdir())) == 3 and os.getpid() not in pids
    assert run_seeds(SeedConfig, _one_seed, ["--out", str(tmp_path), "--seed", "7"]) == "seed-7"
