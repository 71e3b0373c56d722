"""scripts/gpu_toy.sh's dry run: the toy-on-a-device benchmark's code path on the CPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from tests.scripts import ROOT


def test_smoke_gpu_toy_cpu_dry_run_writes_the_timings(tmp_path):
    env = dict(os.environ, OUT=str(tmp_path / "out"), PYTHON=sys.executable, OMP_NUM_THREADS="1")
    done = subprocess.run(
        ["bash", str(ROOT / "scripts/gpu_toy.sh"), "--cpu-dry-run"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    table = json.loads((tmp_path / "out" / "toy_device.json").read_text())
    got = {(r["device"], r["tree"], r["runs"]) for r in table["rows"]}
    assert got == {("cpu", t, n) for t in ("b3-d3", "deep-b2-d8") for n in (10, 100)}
    assert all(r["run_steps_per_s"] > 0 for r in table["rows"])
    assert "bench:" in (tmp_path / "out" / "timings.txt").read_text()
