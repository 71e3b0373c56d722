"""The remaining bad inputs of issue 18 on the toy side and in the shared run-folder code:
memory checked before allocating (--memory-mb), a linear seed check, --out that cannot be
written, a finished run reused only when every file checks against its manifest, and messages
that advise only what is possible."""

from __future__ import annotations

import dataclasses
import errno
import os
import shutil
from pathlib import Path

import pandas as pd
import pytest

from tests.scripts import load_script
from treemdp.runs import save_diverged, write_table
from treemdp.runs.cli import RunDivergedError, parse_config, run

SCRIPTS = {
    "ood_mass": "experiments/ood_mass.py",
    "sweep": "experiments/sweep.py",
    "toy_scaling": "experiments/toy_scaling.py",
    "theory_check": "experiments/theory_check.py",
    "llm_train": "experiments/llm_train.py",
}
MODULES = {name: load_script(path) for name, path in SCRIPTS.items()}
OOD = ["--steps", "4", "--seed", "0", "--sft-steps", "0", "--log-every", "2"]


def one_line(name: str, argv: list[str], capsys, code: int = 2) -> str:
    """Run a writer's command line in-process; assert exit ``code`` and one line on stderr."""
    module = MODULES[name]
    with pytest.raises(SystemExit) as exc:
        if name == "sweep":  # its own entry point: parse_args + main + the same error handling
            _sweep_cli(argv)
        else:
            run(module.Config, module.main, argv)
    err = capsys.readouterr().err.strip()
    assert exc.value.code == code and "Traceback" not in err, err
    lines = [x for x in err.splitlines() if not x.startswith("data: ")]
    assert len(lines) == 1, err
    return lines[0]


def _sweep_cli(argv: list[str]) -> None:
    import runpy
    import sys

    old = sys.argv
    sys.argv = [SCRIPTS["sweep"], *argv]
    try:
        runpy.run_path(str(Path(__file__).parents[1] / SCRIPTS["sweep"]), run_name="__main__")
    finally:
        sys.argv = old


# ------------------------------------------------------------------------------ memory (18.7)


@pytest.mark.parametrize(
    ("name", "argv", "what"),
    [
        ("ood_mass", ["--depth", "14", "--no-responses"], "--depth 14 with 30 runs needs about"),
        ("theory_check", ["--depth", "13"], "--depth 13 with 30 runs needs about"),
        ("toy_scaling", ["--max-length", "40"], "--max-length 40 (2,199,023,255,551 responses)"),
        ("toy_scaling", ["--capacities", "mlp100000000"], "--capacities mlp100000000 with"),
    ],
)
def test_an_experiment_too_big_for_memory_is_refused_before_allocating(
    name, argv, what, tmp_path, capsys
):
    line = one_line(name, [*argv, "--out", str(tmp_path)], capsys)
    assert what in line and "MiB (estimate), over --memory-mb 4096" in line, line
    assert "pass --memory-mb" in line
    assert not any(tmp_path.iterdir())  # nothing written, not even an empty run folder


def test_memory_mb_raises_the_budget_and_does_not_rename_the_run_folder(tmp_path):
    om = MODULES["ood_mass"]
    small = parse_config(om.Config, [*OOD, "--memory-mb", "1", "--depth", "9", "--no-responses"])
    with pytest.raises(ValueError, match="over --memory-mb 1;"):
        om.run_experiment(small)
    big = parse_config(om.Config, [*OOD, "--memory-mb", "64", "--depth", "9", "--no-responses"])
    assert om.output_folder(small) == om.output_folder(big)  # not part of the results


def test_a_huge_tree_message_names_no_impossible_flag():
    from treemdp.tree import Tree

    with pytest.raises(ValueError, match="use a smaller tree") as err:
        Tree.with_stop(3, 40)  # used to build 2^40 Python tuples before any check
    assert "pass a larger max_bytes" not in str(err.value)


# ------------------------------------------------------------------------------ seeds (18.8)


def test_a_million_seeds_are_checked_in_linear_time():
    # seeds.count(s) for every s was quadratic: 10^12 comparisons here (hours), now one pass.
    sweep = MODULES["sweep"]
    assert len(sweep.parse_seeds(["0-1000000"])) == 1_000_001
    with pytest.raises(ValueError, match=r"repeated: \[5, 999999\]"):
        sweep.parse_seeds(["0-1000000", "5", "999999"])
    with pytest.raises(ValueError, match="seeds must be <= 4294967295"):
        sweep.parse_seeds([f"0-{2**63}"])


def test_a_long_sweep_set_up_says_what_it_is_doing(tmp_path, capsys, monkeypatch):
    sweep = MODULES["sweep"]
    config = sweep.check_config(sweep.parse_args(["--seeds", "0-99999", "--out", str(tmp_path)]))
    monkeypatch.setattr(sweep, "plan", lambda c: [])  # only the set-up message is under test
    with pytest.raises(ValueError, match="No objects to concatenate"):  # no chunks planned
        sweep.run_sweep(config, tmp_path / "f")
    n = 100_000 * len(config.objectives) * len(config.betas)
    assert f"sweep: planning {n:,} runs" in capsys.readouterr().err


# ------------------------------------------------------------------------------ --out (18.9)


@pytest.mark.parametrize("name", list(SCRIPTS))
def test_out_that_is_a_file_is_one_line(name, tmp_path, capsys):
    out = tmp_path / "results"
    out.write_text("not a folder")
    argv = ["--out", str(out)]
    if name == "llm_train":
        argv += ["--reference-dtype", "fp32", "--no-progress"]
    line = one_line(name, argv, capsys)
    assert f"cannot write {out}" in line and "a file is in the way" in line and "--out" in line


def _deny_writes_under(monkeypatch, folder: Path) -> None:
    """Make ``folder`` read-only for this process, also as root (which ignores chmod)."""
    if os.geteuid() != 0:
        folder.chmod(0o555)
        return
    real_open, real_mkdir = os.open, os.mkdir

    def deny(path, *args, **kwargs):
        if str(path).startswith(str(folder)):
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return None

    def guarded_open(path, flags, *args, **kwargs):
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            deny(path)
        return real_open(path, flags, *args, **kwargs)

    def guarded_mkdir(path, *args, **kwargs):
        deny(path)
        return real_mkdir(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", guarded_open)
    monkeypatch.setattr(os, "mkdir", guarded_mkdir)


def test_a_read_only_out_and_a_finished_run_in_it_are_one_line(tmp_path, capsys, monkeypatch):
    om = MODULES["ood_mass"]
    done = tmp_path / "done"
    run(om.Config, om.main, [*OOD, "--no-responses", "--out", str(done)])
    capsys.readouterr()
    empty = tmp_path / "empty"
    empty.mkdir()
    _deny_writes_under(monkeypatch, tmp_path)
    for out in (empty, done):  # a new run, and reusing a finished one (its lock is a write)
        line = one_line("ood_mass", [*OOD, "--no-responses", "--out", str(out)], capsys)
        assert f"cannot write {out}" in line and "permission denied" in line, line


def test_an_unexpected_os_error_keeps_its_traceback(tmp_path, monkeypatch):
    om = MODULES["ood_mass"]

    def full(*_args, **_kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(om, "cached_run", full)
    with pytest.raises(OSError, match="No space left"):
        run(om.Config, om.main, [*OOD, "--out", str(tmp_path)])


def test_a_seed_too_large_for_torch_names_the_flag(capsys):
    line = one_line("ood_mass", ["--seed", str(2**63)], capsys)
    assert "--seed must be <= 4294967295" in line


# ------------------------------------------------------------------------------ reuse (18.11)


@pytest.fixture(scope="module")
def finished_once(tmp_path_factory):
    """A finished ood_mass run (metrics.csv, responses.csv, config.json, manifest.json)."""
    om = MODULES["ood_mass"]
    out = tmp_path_factory.mktemp("finished")
    return om.main(parse_config(om.Config, [*OOD, "--out", str(out)]))


@pytest.fixture()
def finished(finished_once, tmp_path):
    """A fresh copy of the finished run: (its command line, its folder)."""
    folder = tmp_path / finished_once.name
    shutil.copytree(finished_once, folder)
    return [*OOD, "--out", str(tmp_path)], folder


@pytest.mark.parametrize(
    ("name", "damage", "expected"),
    [
        ("responses.csv", lambda p: p.write_bytes(b""), "responses.csv is corrupt"),
        ("config.json", lambda p: p.write_bytes(p.read_bytes()[:20]), "config.json is corrupt"),
        ("manifest.json", lambda p: p.unlink(), "manifest.json is missing"),
    ],
)
def test_reuse_checks_every_file_of_the_finished_run(finished, capsys, name, damage, expected):
    args, folder = finished
    damage(folder / name)
    line = one_line("ood_mass", args, capsys)
    assert expected in line and "--force" in line, line
    if name == "manifest.json":  # what the message says to do works
        run(MODULES["ood_mass"].Config, MODULES["ood_mass"].main, [*args, "--force"])
        assert (folder / "manifest.json").is_file()


def test_a_deleted_file_of_a_finished_run_is_recomputed(finished, capsys):
    args, folder = finished
    good = (folder / "responses.csv").read_bytes()
    (folder / "responses.csv").unlink()  # what the corrupt-file message says to do
    MODULES["ood_mass"].main(parse_config(MODULES["ood_mass"].Config, args))
    assert "reusing" not in capsys.readouterr().out
    assert (folder / "responses.csv").read_bytes() == good


def test_a_corrupt_file_message_names_the_file_not_its_folder(tmp_path):
    from treemdp.runs import read_table

    path = write_table(tmp_path / "parts" / "chunk-00000-of-00002.pkl", pd.DataFrame({"a": [1]}))
    path.write_bytes(path.read_bytes()[:-3])
    with pytest.raises(ValueError) as err:
        read_table(path)
    assert f"delete {path} and rerun" in str(err.value)
    assert "delete the run folder" not in str(err.value)  # the whole parts/ folder: too much


# ------------------------------------------------------------------------------ advice (18.12)


def test_divergence_advice_never_says_raise_beta(tmp_path):
    from treemdp.train import History, TrainingDivergedError

    error = TrainingDivergedError(
        "loss of run 0 (dpo, β=1e+308, lr=0.01) is not finite at step 1",
        History(pd.DataFrame({"step": [0]})),
    )
    from dataclasses import dataclass

    @dataclass(frozen=True)
    class Cfg:
        beta: float = 1e308

    line = save_diverged(tmp_path, Cfg(), error)
    assert "raise the smallest β" not in line and "lower the learning rate" in line
    assert isinstance(RunDivergedError(line), RuntimeError)


def test_llm_confirm_unknown_model_is_one_line(tmp_path, capsys):
    # Issue 18.9: 61 lines of traceback, after the toy had trained.
    lc = load_script("experiments/llm_confirm.py")
    with pytest.raises(SystemExit) as exc:
        run(lc.Config, lc.main, ["--model", "nosuch", "--out", str(tmp_path)])
    err = capsys.readouterr().err.strip()
    assert exc.value.code == 2 and len(err.splitlines()) == 1, err
    assert "--model 'nosuch' is not a Pythia shape" in err
    assert not any(tmp_path.iterdir())


# ------------------------------------------------------------------- the run helper (issue 17)


@dataclasses.dataclass(frozen=True)
class _Cfg:
    beta: float = 0.1


def test_cached_run_computes_once_then_reuses_under_the_lock(tmp_path, capsys):
    from treemdp.runs.experiment import cached_run

    calls = []

    def compute():
        calls.append(1)
        return {"metrics": pd.DataFrame({"step": [0, 1]}), "extra": None}

    folder = tmp_path / "run"
    for _ in range(2):
        with cached_run(folder, _Cfg(), ["metrics"], compute) as tables:
            assert (folder / ".lock").exists()  # the block runs under the folder's lock
            assert list(tables["metrics"]["step"]) == [0, 1]
    assert len(calls) == 1 and not (folder / "extra.csv").exists()
    assert f"reusing finished results in {folder} (--force recomputes)" in capsys.readouterr().out
    with cached_run(folder, _Cfg(), ["metrics"], compute, force=True):
        pass
    assert len(calls) == 2


def test_cached_run_saves_a_diverged_training_and_says_so_in_one_line(tmp_path):
    from treemdp.runs.experiment import cached_run
    from treemdp.train import History, TrainingDivergedError

    logged = pd.DataFrame({"run": [0, 0], "step": [0, 10], "loss": [0.7, float("nan")]})

    def compute():
        raise TrainingDivergedError("loss is NaN at step 10 in run 0", History(logged))

    folder = tmp_path / "run"
    diverging = cached_run(folder, _Cfg(), ["metrics"], compute, diverged="trajectory")
    saved = "the 2 logged steps before it are saved in"
    with pytest.raises(RunDivergedError, match=saved), diverging:
        pass
    assert (folder / "trajectory.diverged.csv").exists() and (folder / "config.json").exists()
    assert not (folder / "metrics.csv").exists()  # never marked complete: a rerun starts afresh
