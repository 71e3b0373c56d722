"""Time `figures/make_all.py` from scratch, by family, and check that a redraw is bit-identical.

    python benchmarks/make_all_time.py                         # tree, toy, llm: one make_all each
    python benchmarks/make_all_time.py --families tree toy     # some families
    python benchmarks/make_all_time.py --together              # also one make_all of all of them
    python benchmarks/make_all_time.py --quick                 # the tiny configs (seconds)

For each family, in a fresh temporary results and output folder:

1. `make_all.py --fresh --only FAMILY` (the experiments and the drawing): wall time and the CPU
   time of the processes it ran (user + system, from ``getrusage(RUSAGE_CHILDREN)``);
2. `make_all.py --only FAMILY` again into a second output folder (cached data: the drawing only);
3. every PNG and PDF of the two output folders compared byte for byte (``identical``).

Prints one Markdown row per measurement (for benchmarks/BENCHMARKS.md) with the 1-minute load
average before and after, the machine (``lscpu`` model name, CPUs) and the make_all flags; with
``--json PATH`` also writes them as JSON. Timing depends on the load: say it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FAMILIES = ("tree", "toy", "llm")


def machine() -> str:
    """CPU model name and count."""
    name = platform.processor() or "unknown CPU"
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines():
            if line.startswith("Model name:"):
                name = line.split(":", 1)[1].strip()
    except OSError:
        pass
    return f"{name}, {os.cpu_count()} CPUs"


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def make_all(args: list[str]) -> dict[str, float]:
    """Run figures/make_all.py with ``args``; its wall and CPU seconds and the load around it."""
    load_before = os.getloadavg()[0]
    cpu0, start = children_cpu(), time.perf_counter()
    done = subprocess.run(
        [sys.executable, str(ROOT / "figures" / "make_all.py"), *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    wall, cpu = time.perf_counter() - start, children_cpu() - cpu0
    if done.returncode != 0:
        raise SystemExit(f"make_all.py {' '.join(args)} failed:\n{done.stderr[-3000:]}")
    n_files = sum(1 for line in done.stdout.splitlines() if line.startswith("/"))
    return {
        "wall_s": round(wall, 1),
        "cpu_s": round(cpu, 1),
        "files": n_files,
        "load_before": load_before,
        "load_after": os.getloadavg()[0],
    }


def figure_bytes(folder: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(folder)): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.suffix in (".png", ".pdf")
    }


def compare(a: Path, b: Path) -> dict[str, object]:
    """Whether the PNG and PDF files of two output folders are the same bytes."""
    first, second = figure_bytes(a), figure_bytes(b)
    differ = sorted(k for k in first.keys() | second.keys() if first.get(k) != second.get(k))
    return {"figures": len(first), "identical": not differ, "differ": differ[:10]}


def measure(families: list[str], flags: list[str], scratch: Path) -> dict[str, object]:
    """From scratch, then cached into a second output folder, then the byte comparison."""
    results, out, again = scratch / "results", scratch / "out", scratch / "out-again"
    common = ["--only", *families, "--results", str(results), *flags]
    row: dict[str, object] = {"families": " ".join(families), "flags": " ".join(flags)}
    row["scratch"] = make_all([*common, "--fresh", "--out", str(out)])
    row["cached"] = make_all([*common, "--out", str(again)])
    row["reproducible"] = compare(out, again)
    return row


def markdown(row: dict[str, object]) -> str:
    s, c, r = row["scratch"], row["cached"], row["reproducible"]
    return (
        f"| {row['families']} | {row['flags'] or '-'} | {s['wall_s']} s (CPU {s['cpu_s']} s, "
        f"load {s['load_before']:.1f}→{s['load_after']:.1f}) | {c['wall_s']} s (CPU "
        f"{c['cpu_s']} s) | {s['files']} | {r['figures']} figures "
        f"{'identical' if r['identical'] else 'DIFFER: ' + ', '.join(r['differ'])} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--families", nargs="+", choices=FAMILIES, default=list(FAMILIES))
    parser.add_argument("--together", action="store_true", help="also all families in one call")
    parser.add_argument("--quick", action="store_true", help="the tiny configs")
    parser.add_argument("--jobs", type=int, default=None, help="make_all --jobs [its default]")
    parser.add_argument("--json", default=None, help="also write the rows as JSON here")
    parser.add_argument(
        "--keep", default=None, metavar="DIR", help="keep each measurement's folders under DIR"
    )
    args = parser.parse_args()
    flags = (["--quick"] if args.quick else []) + ([f"--jobs={args.jobs}"] if args.jobs else [])
    groups = [[f] for f in args.families] + ([list(args.families)] if args.together else [])
    print(f"machine: {machine()}; python {platform.python_version()}")
    print("| families | flags | from scratch (wall; CPU of all processes; 1-min load) "
          "| cached (drawing only) | files | redraw vs first draw |")  # fmt: skip
    print("|---|---|---|---|---|---|")
    rows = []
    for families in groups:
        if args.keep:
            scratch = Path(args.keep) / "-".join(families)
            scratch.mkdir(parents=True, exist_ok=False)
            row = measure(families, flags, scratch)
        else:
            with tempfile.TemporaryDirectory(prefix="make_all_time-") as tmp:
                row = measure(families, flags, Path(tmp))
        rows.append(row)
        print(markdown(row), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": machine(), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
