"""Time `experiments/diagnose.py` on 5 checkpoints of a 14m-shape GPT-NeoX and 256 pairs.

    python benchmarks/diagnose_time.py                 # 5 checkpoints, 256 pairs, 64 samples
    python benchmarks/diagnose_time.py --checkpoints 2 --pairs 32 --samples 8   # seconds
    python benchmarks/diagnose_time.py --jobs 1        # one checkpoint at a time

Builds, in a temporary folder, a random Pythia-14m-shaped reference (its 50,304-token vocabulary;
the byte tokenizer) and ``--checkpoints`` perturbed copies as TRL ``checkpoint-N`` folders, and
``--pairs`` text pairs (prompts of 48-96 bytes, responses of 8-48), then runs diagnose.py's
``main`` with its defaults (64 samples of at most 64 new tokens, ``--jobs 2``). Prints the wall
time and this process's CPU time (user + system, all its threads) of the diagnosis alone
(building the folders is not timed), the machine, and the 1-minute load average before and
after: timings depend on the load.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.make_all_time import machine  # noqa: E402


def cpu() -> float:
    u = resource.getrusage(resource.RUSAGE_SELF)
    return u.ru_utime + u.ru_stime


def build(root: Path, n_checkpoints: int, n_pairs: int) -> None:
    from llm.data import byte_tokenizer
    from llm.model import build_model, progress_bars_off
    from tests.llm.helpers_llm import perturbed

    tok = byte_tokenizer()
    ref = build_model("14m", seed=0)
    with progress_bars_off():
        ref.save_pretrained(root / "ref")
        tok.save_pretrained(root / "ref")
        for k in range(1, n_checkpoints + 1):
            folder = root / "run" / f"checkpoint-{100 * k}"
            perturbed(ref, seed=k, scale=0.002 * k).save_pretrained(folder)
            tok.save_pretrained(folder)
    rng = random.Random(0)
    words = ["the", "a", "cat", "dog", "ran", "sat", "on", "mat", "fast", "slow", "red", "blue"]

    def text(lo: int, hi: int) -> str:
        out = ""
        while len(out) < rng.randint(lo, hi):
            out += " " + rng.choice(words)
        return out

    rows = [{"prompt": "POST:" + text(48, 96) + "\nTL;DR:", "chosen": text(8, 48),
             "rejected": text(8, 48)} for _ in range(n_pairs)]  # fmt: skip
    (root / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoints", type=int, default=5)
    parser.add_argument("--pairs", type=int, default=256)
    parser.add_argument("--samples", type=int, default=64)
    parser.add_argument("--jobs", type=int, default=0, help="diagnose.py --jobs (0: its default)")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from tests.scripts import load_script
    from treemdp.runs.cli import parse_config

    cli = load_script("experiments/diagnose.py")
    jobs = args.jobs or cli.Config().jobs
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        build(root, args.checkpoints, args.pairs)
        argv = ["--checkpoints", str(root / "run"), "--reference", str(root / "ref"),
                "--data", str(root / "pairs.jsonl"), "--pairs", str(args.pairs),
                "--samples", str(args.samples), "--out", str(root / "diag"),
                "--no-progress", *(["--jobs", str(args.jobs)] if args.jobs else [])]  # fmt: skip
        load0, t0, c0 = os.getloadavg()[0], time.perf_counter(), cpu()
        cli.main(parse_config(cli.Config, argv))
        wall, used = time.perf_counter() - t0, cpu() - c0
    print(
        f"| {args.checkpoints} checkpoints of 14m, {args.pairs} pairs, {args.samples} samples, "
        f"--jobs {jobs} "
        f"| {wall:.1f} s wall | {used:.1f} s CPU | load {load0:.1f} → {os.getloadavg()[0]:.1f} "
        f"| {machine()}, torch threads {__import__('torch').get_num_threads()} |"
    )


if __name__ == "__main__":
    main()
