"""Interruption: SIGKILL at random points then restart gives the uninterrupted outputs, no file is
ever half-written, and a second process on a busy run folder refuses with one clear line."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.interruption import COMMANDS, ROOT, check_files, run_harness, suite_kill_points
from tests.scripts import load_script, run_script
from treemdp.runs import LOCK_NAME, RunFolderBusyError, run_lock, write_table
from treemdp.runs.cli import parse_config

HOLDER = textwrap.dedent(
    """
    import contextlib, sys
    from treemdp.runs import run_lock
    with contextlib.ExitStack() as stack:
        for folder in sys.argv[1:]:
            stack.enter_context(run_lock(folder))
        print("held", flush=True)
        sys.stdin.read()  # held until killed, or until the test process ends (EOF): no timeout
    """
)


class Holder:
    """A separate process holding the locks of ``folders`` until it is SIGKILLed."""

    def __init__(self, *folders: Path) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", HOLDER, *map(str, folders)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        assert self.proc.stdout.readline().strip() == "held"

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()
        self.proc.stdin.close()
        self.proc.stdout.close()


@pytest.mark.slow
@pytest.mark.parametrize("name", list(COMMANDS))
def test_sigkill_at_random_points_then_restart_loses_nothing(name, tmp_path):
    kills = suite_kill_points(COMMANDS[name])
    report = run_harness(COMMANDS[name], tmp_path, kills=kills)
    assert report.kills == kills
    assert report.outputs_compared > 0


def test_the_lock_refuses_a_second_process_and_dies_with_its_holder(tmp_path):
    folder = tmp_path / "run"
    holder = Holder(folder)
    busy = rf"{folder} is in use by another process \(pid {holder.proc.pid}\)"
    with pytest.raises(RunFolderBusyError, match=busy), run_lock(folder):
        pass
    (folder / ".metrics.csv.abc123.tmp").write_text("half a ta")  # a killed writer's temporary
    holder.kill()  # SIGKILL: no cleanup ran, yet the kernel released the lock
    assert (folder / LOCK_NAME).exists()
    with run_lock(folder):
        assert not (folder / ".metrics.csv.abc123.tmp").exists()  # removed on taking the lock
        with run_lock(folder):  # re-entrant in one process
            write_table(folder / "t.csv", __import__("pandas").DataFrame({"a": [1]}))
    assert not (folder / LOCK_NAME).exists()
    assert check_files(folder) == (2, [])  # t.csv and manifest.json, nothing left over


def _configs(tmp_path: Path) -> dict[str, tuple[object, object, Path]]:
    """(module, config, folder) of every experiment that writes a run folder."""
    out = str(tmp_path)
    om = load_script("experiments/ood_mass.py")
    sw = load_script("experiments/sweep.py")
    ts = load_script("experiments/toy_scaling.py")
    tc = load_script("experiments/theory_check.py")
    lt = load_script("experiments/llm_train.py")
    lc = load_script("experiments/llm_confirm.py")
    le = load_script("experiments/llm_eval.py")
    (tmp_path / "evaluated").mkdir()
    (tmp_path / "evaluated" / "config.json").write_text("{}")
    configs = {
        "ood_mass": (om, om.Config(out=out)),
        "sweep": (sw, sw.Config(out=out)),
        "toy_scaling": (ts, ts.Config(out=out, quick=True)),
        "theory_check": (tc, tc.Config(out=out)),
        "llm_train": (lt, parse_config(lt.Config, ["--out", out, "--no-progress"])),
        "llm_confirm": (lc, lc.Config(out=out)),
        "llm_eval": (le, le.Config(run=str(tmp_path / "evaluated"))),
    }
    folders = {
        "ood_mass": om.output_folder(configs["ood_mass"][1]),
        "sweep": sw.output_folder(configs["sweep"][1]),
        "toy_scaling": ts.output_folder(configs["toy_scaling"][1]),
        "theory_check": tc.output_folder(configs["theory_check"][1]),
        "llm_train": lt.run_dir(configs["llm_train"][1]),
        "llm_confirm": lc.output_folder(configs["llm_confirm"][1]),
        "llm_eval": tmp_path / "evaluated",
    }
    return {k: (m, c, folders[k]) for k, (m, c) in configs.items()}


def test_every_experiment_refuses_a_busy_run_folder_before_computing(tmp_path):
    experiments = _configs(tmp_path)
    figures = tmp_path / "figures"
    holder = Holder(*(folder for *_, folder in experiments.values()), figures)
    try:
        for name, (module, config, folder) in experiments.items():
            with pytest.raises(RunFolderBusyError, match="in use by another process"):
                module.main(config)
            written = {p.name for p in folder.iterdir()} - {LOCK_NAME}
            assert written <= ({"config.json"} if name == "llm_eval" else set()), name
        done = run_script("figures/make_all.py", "--only", "llm", "--out", str(figures))
        assert done.returncode == 2  # as every CLI (treemdp.runs.cli.one_line_errors)
        assert done.stderr.strip().splitlines() == [
            f"make_all.py: error: {figures} is in use by another process (pid "
            f"{holder.proc.pid}); wait for it to finish (or stop it), then run the command again"
        ]
    finally:
        holder.kill()


def test_a_busy_run_folder_is_one_line_and_exit_2_on_the_command_line(tmp_path):
    args = ["--steps", "5", "--seed", "0", "--sft-steps", "0", "--out", str(tmp_path)]
    om = load_script("experiments/ood_mass.py")
    folder = om.output_folder(parse_config(om.Config, args))
    holder = Holder(folder)
    try:
        done = subprocess.run(
            [sys.executable, str(ROOT / "experiments/ood_mass.py"), *args],
            capture_output=True,
            text=True,
            cwd=ROOT,
        )
    finally:
        holder.kill()
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ood_mass.py: error: "), done.stderr
    assert f"{folder} is in use by another process (pid {holder.proc.pid})" in lines[0]


WRITER = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from treemdp.runs import atomic_write_text
    for name in ("a-1", "b-1", "a-2", "b-2", "b-3"):
        atomic_write_text(Path(sys.argv[1]) / f"{name}.txt", name)
    """
)


def test_the_kill_hook_kills_right_after_the_nth_matching_write(tmp_path, monkeypatch):
    from treemdp.runs.killpoint import KILL_ENV, kill_point

    env = {**os.environ, "PYTHONPATH": str(ROOT), KILL_ENV: "*/b-*.txt:2"}
    done = subprocess.run([sys.executable, "-c", WRITER, str(tmp_path)], env=env)
    assert done.returncode == -signal.SIGKILL
    # killed after the second b- file, whole on disk; nothing after it; no temporary left
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "a-1.txt",
        "a-2.txt",
        "b-1.txt",
        "b-2.txt",
    ]
    assert (tmp_path / "b-2.txt").read_text() == "b-2"
    for bad in ("*.txt", "*.txt:0", "*.txt:x", ":3"):
        monkeypatch.setenv(KILL_ENV, bad)
        with pytest.raises(ValueError, match=KILL_ENV):
            kill_point(tmp_path / "x.txt")
