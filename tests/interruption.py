"""Kill-and-restart harness: every long-running command, SIGKILLed at random points, must end with
the outputs of an uninterrupted run, and no file may ever be half-written.

The commands are a table (``COMMANDS``): adding one is adding an entry. For each command:

1. run it uninterrupted into ``work/out`` and move that to ``work/reference`` (both runs write to
   the same path, so paths written into the outputs agree);
2. start it again into ``work/out``, SIGKILL its whole process group after a seeded random delay
   in (5 %, 95 %) of the reference's wall time, check every file there (see ``check_files``),
   and repeat ``kills`` times, each start resuming from what the previous one left;
3. run it to completion once more; then no temporary or lock file may remain, every file must
   parse, and every output must equal the reference's (bytes, or parsed values for the files
   that hold wall-clock times or render dates: ``Command.loose``).

``python -m tests.interruption --kills 10`` runs the harness outside pytest and prints the counts
that docs/reliability.md reports. The number of kill points per command in the test suite is
``TREEMDP_KILL_POINTS`` if set, else 3 (10 under ``HYPOTHESIS_PROFILE=thorough``).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from treemdp.runs import LOCK_NAME, is_temporary, verify_file

ROOT = Path(__file__).resolve().parents[1]
TIMING_COLUMNS = ("tokens_per_s", "pairs_per_s")


def suite_kill_points(command: Command) -> int:
    """Kill points of ``command`` in the test suite: ``kill_points_per_command()``, capped by
    ``Command.suite_kills`` unless $TREEMDP_KILL_POINTS or the thorough profile asks for more."""
    n = kill_points_per_command()
    overridden = os.environ.get("TREEMDP_KILL_POINTS") or (
        os.environ.get("HYPOTHESIS_PROFILE") == "thorough"
    )
    return n if overridden or not command.suite_kills else min(n, command.suite_kills)


def kill_points_per_command() -> int:
    """Kill points per command: $TREEMDP_KILL_POINTS, else 10 (thorough profile) or 3."""
    if os.environ.get("TREEMDP_KILL_POINTS"):
        return int(os.environ["TREEMDP_KILL_POINTS"])
    return 10 if os.environ.get("HYPOTHESIS_PROFILE") == "thorough" else 3


@dataclass(frozen=True)
class Command:
    """One long-running command of the harness.

    Attributes:
        name: short id (test ids, reports).
        script: path of the script, relative to the repository root.
        args: its flags; ``{out}`` stands for the output folder.
        loose: glob patterns of files compared by content rather than bytes: images (PDF
            dates, renderer details) are only checked to be complete, ``log.csv`` of llm runs
            is compared without its wall-clock columns.
        setup: (script, args) commands run to completion into the output folder before the
            reference run: what it reads, e.g. the trained run that llm_eval evaluates. Never
            killed; the interrupted runs start from a copy of what it wrote (same path, same
            bytes).
        suite_kills: kill points in the default test suite when fewer than
            ``kill_points_per_command()`` (0: that number); $TREEMDP_KILL_POINTS and the
            thorough profile override it.
    """

    name: str
    script: str
    args: tuple[str, ...]
    loose: tuple[str, ...] = field(default=("*.png", "*.pdf"))
    setup: tuple[tuple[str, tuple[str, ...]], ...] = ()
    suite_kills: int = 0

    def argv(self, out: Path) -> list[str]:
        return [sys.executable, str(ROOT / self.script), *(a.format(out=out) for a in self.args)]


COMMANDS: dict[str, Command] = {
    c.name: c
    for c in [
        Command(
            "ood_mass",
            "experiments/ood_mass.py",
            (
                *("--steps", "300", "--seed", "0", "1", "2", "--sft-steps", "20"),
                *("--log-every", "5", "--beta", "0.1", "0.5", "--out", "{out}"),
            ),
        ),
        Command(
            "sweep",
            "experiments/sweep.py",
            (
                *("--objectives", "dpo", "ipo", "--betas", "0.1", "0.5", "--seeds", "0-2"),
                *("--branching", "2", "--depth", "3", "--steps", "200", "--log-every", "20"),
                *("--sft-steps", "10", "--chunk-runs", "2", "--no-progress", "--out", "{out}"),
            ),
        ),
        Command(
            "llm_train",
            "experiments/llm_train.py",
            (
                *("--model", "tiny", "--source", "tree", "--tree-pairs", "0>1,5>7,3>20,11>2"),
                *("--batch-size", "2", "--micro-batch-size", "1", "--lr", "1e-3"),
                *("--warmup-steps", "0", "--epochs", "4", "--reference-dtype", "fp32"),
                *("--checkpoint-every", "2", "--no-progress", "--resume"),
                *("--out", "{out}", "--run-name", "run"),
            ),
            loose=("log.csv",),
        ),
        Command(
            "make_all",
            "figures/make_all.py",
            ("--only", "tree", "--quick", "--results", "{out}/results", "--out", "{out}/figures"),
        ),
        Command(
            "llm_eval",
            "experiments/llm_eval.py",
            (
                *("--run", "{out}/run", "--samples", "64", "--batch-size", "16"),
                *("--device", "cpu", "--no-progress"),
            ),
            loose=("log.csv",),
            setup=(
                (
                    "experiments/llm_train.py",
                    (
                        *("--model", "tiny", "--source", "tree", "--tree-pairs", "0>1,5>7"),
                        *("--batch-size", "2", "--micro-batch-size", "2", "--lr", "1e-2"),
                        *("--warmup-steps", "0", "--epochs", "6", "--reference-dtype", "fp32"),
                        *("--checkpoint-every", "4", "--no-progress"),
                        *("--out", "{out}", "--run-name", "run"),
                    ),
                ),
            ),
        ),
        Command(
            "toy_scaling",
            "experiments/toy_scaling.py",
            ("--quick", "--objectives", "dpo", "ipo", "--n-resamples", "10", "--out", "{out}"),
            suite_kills=1,
        ),
        Command(
            "llm_confirm",
            "experiments/llm_confirm.py",
            (
                *("--toy-steps", "30", "--toy-sft-steps", "30", "--sft-samples", "32"),
                *("--sft-epochs", "1", "--steps", "4", "--checkpoints", "2"),
                *("--objectives", "dpo", "--eval-samples", "16", "--device", "cpu"),
                *("--no-progress", "--out", "{out}"),
            ),
            loose=("*.png", "*.pdf", "log.csv"),
            suite_kills=2,
        ),
        Command(
            "llm_overopt",
            "experiments/llm_overopt.py",
            (
                *("--objectives", "dpo", "rdpo", "--betas", "0.1", "--pairs", "16", "--batch"),
                *("4", "--checkpoints", "2", "--eval-samples", "8", "--eval-pairs", "8"),
                *("--sft-samples", "32", "--sft-epochs", "1", "--toy-sft-steps", "20"),
                *("--sizes", "tiny", "--branching", "3", "--max-length", "3"),
                *("--no-keep-weights", "--device", "cpu", "--no-progress", "--out", "{out}"),
            ),
            loose=("log.csv",),
            suite_kills=1,
        ),
    ]
}


# ------------------------------------------------------------------------------ file checks


def _check_png(data: bytes) -> None:
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and data.endswith(b"IEND\xaeB`\x82")


def _check_pdf(data: bytes) -> None:
    assert data.startswith(b"%PDF") and b"%%EOF" in data[-64:]


def _check_csv(path: Path, data: bytes) -> None:
    if path.name == "log.csv":  # llm training log: every row complete and numeric
        rows = list(csv.reader(data.decode().splitlines()))
        assert rows and all(len(r) == len(rows[0]) for r in rows), path
        for r in rows[1:]:
            [float(x) for x in r]
        return
    pd.read_csv(path)


def _check_file(path: Path) -> None:
    data = path.read_bytes()
    suffix = path.suffix
    if suffix in (".csv", ".pkl", ".json") and path.name != "manifest.json":
        data = verify_file(path, data)  # against the folder's manifest, when it lists the file
    if suffix == ".csv":
        _check_csv(path, data)
    elif suffix == ".json":
        json.loads(data)
    elif suffix == ".pkl":
        pd.read_pickle(path)
    elif suffix == ".png":
        _check_png(data)
    elif suffix == ".pdf":
        _check_pdf(data)
    elif suffix == ".txt":
        data.decode()
    elif suffix == ".safetensors":
        from safetensors.torch import load_file

        load_file(str(path))
    elif suffix == ".pt":
        import torch

        torch.load(path, weights_only=False)


def check_files(root: Path) -> tuple[int, list[Path]]:
    """Parse every file under ``root`` except temporaries and lock files (asserting on a
    half-written one); checkpoint folders are checked against their checksums too.

    Returns:
        The number of files checked and the temporaries/lock files found.
    """
    from llm.checkpoint import CHECKSUMS, verify_checkpoint

    leftovers, n = [], 0
    for path in sorted(root.rglob("*")):
        if is_temporary(path.name) or path.name == LOCK_NAME:
            leftovers.append(path)
            continue
        if any(is_temporary(p.name) for p in path.relative_to(root).parents):
            continue  # inside a temporary folder (a checkpoint being written)
        if path.is_dir():
            if (path / CHECKSUMS).is_file():
                verify_checkpoint(path)
            continue
        try:
            _check_file(path)
        except Exception as e:
            raise AssertionError(f"{path} is half-written or corrupt: {e!r}") from e
        n += 1
    return n, leftovers


def _files(root: Path) -> dict[str, Path]:
    return {str(p.relative_to(root)): p for p in sorted(root.rglob("*")) if p.is_file()}


def _log_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return [{k: v for k, v in r.items() if k not in TIMING_COLUMNS} for r in csv.DictReader(f)]


def compare_outputs(command: Command, reference: Path, out: Path) -> int:
    """Assert that ``out`` holds the same files as ``reference``, equal as ``Command.loose``
    says. Returns the number of files compared."""
    ref, got = _files(reference), _files(out)
    assert sorted(ref) == sorted(got), (sorted(set(ref) ^ set(got)), command.name)
    for name, path in ref.items():
        other = got[name]
        if not any(path.match(pattern) for pattern in command.loose):
            assert path.read_bytes() == other.read_bytes(), f"{name} differs ({command.name})"
        elif path.name == "log.csv":
            assert _log_rows(path) == _log_rows(other), f"{name} differs ({command.name})"
        else:
            _check_file(other)
    return len(ref)


# ------------------------------------------------------------------------------ the harness


@dataclass
class Report:
    """What one command's harness run did."""

    command: str
    kills: int = 0  # kill points tried
    landed: int = 0  # kills that hit a running process (the rest found it already finished)
    files_checked: int = 0  # file parses after kills (every file, after every kill)
    outputs_compared: int = 0
    reference_seconds: float = 0.0


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT))
    return env


def _start(command: Command, out: Path) -> subprocess.Popen:
    return subprocess.Popen(
        command.argv(out),
        cwd=ROOT,
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,  # its own process group: a kill takes the children too
    )


def _prepare(command: Command, out: Path) -> None:
    """Run the command's setup steps to completion into ``out``."""
    for script, args in command.setup:
        argv = [sys.executable, str(ROOT / script), *(a.format(out=out) for a in args)]
        done = subprocess.run(argv, cwd=ROOT, env=_env(), capture_output=True, text=True)
        assert done.returncode == 0, f"{command.name} setup {script} failed:\n{done.stderr}"


def _finish(proc: subprocess.Popen, command: Command) -> None:
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, f"{command.name} failed ({proc.returncode}):\n{err.decode()}"


def run_harness(
    command: Command,
    work: Path,
    *,
    kills: int,
    seed: int = 0,
    on_kill: Callable[[Path], None] | None = None,
) -> Report:
    """Reference run, ``kills`` SIGKILLs at random points with a restart after each, a final
    run; assert everything the module docstring promises. Returns the counts."""
    report = Report(command.name)
    out, reference, prepared = work / "out", work / "reference", work / "prepared"
    _prepare(command, out)
    if command.setup:  # the interrupted runs start from a copy: the setup runs once
        shutil.copytree(out, prepared, symlinks=True)
    start = time.perf_counter()
    _finish(_start(command, out), command)
    report.reference_seconds = time.perf_counter() - start
    out.rename(reference)
    if command.setup:
        shutil.copytree(prepared, out, symlinks=True)
    rng = random.Random(f"{command.name}-{seed}")
    for _ in range(kills):
        proc = _start(command, out)
        delay = rng.uniform(0.05, 0.95) * report.reference_seconds
        try:
            proc.wait(timeout=delay)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            report.landed += 1
        else:
            assert proc.returncode == 0, f"{command.name}: {proc.stderr.read().decode()}"
        proc.stderr.close()
        report.kills += 1
        if out.exists():
            n, _ = check_files(out)  # temporaries may remain until the next start
            report.files_checked += n
        if on_kill is not None:
            on_kill(out)
    _finish(_start(command, out), command)
    n, leftovers = check_files(out)
    report.files_checked += n
    assert not leftovers, f"{command.name} left temporaries or locks: {leftovers}"
    report.outputs_compared = compare_outputs(command, reference, out)
    return report


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--kills", type=int, default=10, help="kill points per command")
    parser.add_argument("--only", nargs="+", choices=list(COMMANDS), default=list(COMMANDS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", default="", help="scratch folder (default: a temporary one)")
    args = parser.parse_args(argv)
    import tempfile

    root = Path(args.work or tempfile.mkdtemp(prefix="interruption-"))
    total = Report("total")
    for name in args.only:
        work = root / name
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        r = run_harness(COMMANDS[name], work, kills=args.kills, seed=args.seed)
        print(
            f"{name}: {r.kills} kill points ({r.landed} landed mid-run), "
            f"{r.files_checked} file checks, {r.outputs_compared} outputs equal to the "
            f"uninterrupted run (reference {r.reference_seconds:.1f} s)",
            flush=True,
        )
        for k in ("kills", "landed", "files_checked", "outputs_compared"):
            setattr(total, k, getattr(total, k) + getattr(r, k))
    print(
        f"total: {total.kills} kill points, {total.landed} landed, {total.files_checked} file "
        f"checks, {total.outputs_compared} outputs compared; nothing lost"
    )


if __name__ == "__main__":
    main()
