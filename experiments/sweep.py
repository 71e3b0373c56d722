"""Sweeps: a grid of Tree-MDP runs (objectives × β × lr × seeds × tree sizes × datasets) as
batched tensor programs, resumable, written as one tidy table.

    python experiments/sweep.py --objectives dpo ipo slic --betas 0.01 0.03 0.1 0.3 0.5 \\
        --seeds 0-19 --depth 3
    python experiments/sweep.py --grid grid.toml --steps 500    # flags override the file
    python experiments/sweep.py ... --backend ray [--address HEAD:6379]   # chunks as Ray tasks
    python experiments/sweep.py ... --device cuda [--precision float32]  # on a GPU

Runs that share a tree shape and a dataset kind (branching, depth, pairs, pair source) train
together, in chunks of at most --chunk-runs runs (by default as many as --memory-mb allows).
Each finished chunk is written atomically to parts/; a rerun of the same command skips the
finished chunks, so an interrupted sweep (Ctrl-C, a kill) loses at most the chunk in flight.
The parts are merged in a fixed order into metrics.csv, identical to an uninterrupted sweep's
(and to a serial one's when the chunks ran on Ray workers: docs/scale.md).

Writes results/sweep/sweep-<hash>/{config.json, parts/, metrics.csv}; see docs/sweeps.md.
"""

from __future__ import annotations

import argparse
import functools
import io
import itertools
import json
import math
import re
import sys
import time
import tomllib
import typing
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from tqdm.auto import tqdm

from treemdp import objectives
from treemdp.devices import PRECISIONS, default_dtype, resolve_device
from treemdp.metrics import METRICS
from treemdp.optim import OPTIMIZERS
from treemdp.problem import PAIR_SOURCES, ProblemSpec, build_problem
from treemdp.runs import (
    run_folder,
    save_diverged,
    verify_file,
    write_checked,
    write_config,
)
from treemdp.runs.backends import BACKEND_FLAGS, Backend, check_backend, map_cells
from treemdp.runs.cli import (
    DIVERGED_EXIT,
    RunDivergedError,
    arg,
    build_parser,
    config_flags,
    flag_values,
    nested,
    os_error_line,
    parse_seeds,
    with_flags,
)
from treemdp.runs.experiment import cached_run
from treemdp.train import RunSpec, TrainingDivergedError, train
from treemdp.tree import DEFAULT_MAX_BYTES, Tree, complete_tree, tree_bytes


@dataclass(frozen=True)
class Config:
    # grid axes (every combination is one run)
    objectives: tuple[str, ...] = arg(
        ("dpo", "ipo", "slic"), "objectives", choices=objectives.names()
    )
    betas: tuple[float, ...] = arg((0.01, 0.03, 0.1, 0.3, 0.5), "β values", exclusive_minimum=0)
    lrs: tuple[float, ...] = arg((0.01,), "learning rates", exclusive_minimum=0)
    seeds: tuple[str, ...] = arg(("0-9",), "seeds: integers or inclusive ranges such as 0-19")
    branching: tuple[int, ...] = arg((3,), "actions per state b (tree sizes)", minimum=2)
    depth: tuple[int, ...] = arg((3,), "tree depths D (b^D responses)", minimum=1)
    pairs: tuple[int, ...] = arg((1,), "preference pairs per run (datasets)", minimum=1)
    pair_source: tuple[str, ...] = arg(
        ("random",), "how pairs are drawn", choices=tuple(PAIR_SOURCES)
    )
    # fixed for the whole grid (the pairs and their source are the axes above)
    problem: ProblemSpec = nested(
        ProblemSpec(sft_steps=300), flags=("policy", "features", "reference", "sft_steps", "sft_lr")
    )
    steps: int = arg(2000, "training steps", minimum=0)
    optimizer: str = arg("adam", "optimiser", choices=OPTIMIZERS)
    log_every: int = arg(10, "log exact metrics every this many steps", minimum=1)
    # how it runs (chunking is part of the run folder's identity; the rest is not)
    chunk_runs: int = arg(0, "most runs per batch; 0 = as many as --memory-mb allows", minimum=0)
    memory_mb: int = arg(2048, "memory budget of one batch, in MiB (estimate)", minimum=1)
    # where and how (precision is part of the identity, float64 left out of the hash; the
    # device and the backend are not: the same tables whatever runs them)
    device: str = arg("cpu", "where the runs train: cpu, cuda, cuda:N or auto (cuda if present)")
    precision: str = arg(
        "float64", "float64, or float32 (checked against float64 on a sample)", choices=PRECISIONS
    )
    run: Backend = nested(Backend(), flags=BACKEND_FLAGS)  # chunks as Ray tasks: docs/scale.md
    out: str = arg("results/sweep", "root folder for sweep folders")
    force: bool = arg(False, "recompute everything even if finished parts exist")
    progress: bool = arg(True, "show a progress bar over the grid")


NOT_IN_HASH = ("out", "force", "progress", "device", *BACKEND_FLAGS)
GRID_AXES = ("branching", "depth", "pairs", "pair_source", "objectives", "betas", "lrs", "seeds")
COLUMNS = (
    "run",
    "objective",
    "beta",
    "lr",
    "seed",
    "branching",
    "depth",
    "pairs",
    "pair_source",
    "step",
    *METRICS,
)
SUMMARY = ["p_chosen", "mass_ood", "max_ood", "kl_reverse", "win_rate"]


# ------------------------------------------------------------------ grid values and checks


def compress_seeds(seeds: Sequence[int]) -> tuple[str, ...]:
    """The canonical spec of a seed list: consecutive ascending runs as ``a-b``, order kept."""
    out: list[str] = []
    start = prev = seeds[0]
    for s in [*seeds[1:], None]:
        if s is not None and s == prev + 1:
            prev = s
            continue
        out.append(str(start) if start == prev else f"{start}-{prev}")
        if s is not None:
            start = prev = s
    return tuple(out)


def check_config(config: Config) -> Config:
    """Check every field (types, choices, ranges, non-empty axes, distinct values) and return the
    canonical config (seed ranges compressed), the one that names the run folder.

    Raises ValueError naming the field and the allowed values; nothing has run yet.
    """
    settings = flag_values(config)
    for flag in config_flags(Config):
        name, kind = flag.name, flag.kind
        value = settings[name]
        multi = typing.get_origin(kind) is tuple
        elem = typing.get_args(kind)[0] if multi else kind
        values = value if multi else (value,)
        if multi and not isinstance(value, tuple):
            raise ValueError(f"{name} must be a list of values; got {value!r}")
        if multi and len(values) == 0:
            raise ValueError(f"{name} must hold at least one value; got an empty list")
        for v in values:
            ok = (
                (elem is float and isinstance(v, int | float) and not isinstance(v, bool))
                or (elem is int and isinstance(v, int) and not isinstance(v, bool))
                or (elem is bool and isinstance(v, bool))
                or (elem is str and isinstance(v, str | int) and not isinstance(v, bool))
            )
            if not ok:
                raise ValueError(f"{name} must hold {elem.__name__} values; got {v!r}")
            if elem is float and not math.isfinite(v):
                raise ValueError(f"{name} must be a finite number; got {v!r}")
            meta = flag.meta
            if meta.get("choices") is not None and v not in meta["choices"]:
                allowed = ", ".join(map(str, meta["choices"]))
                raise ValueError(f"{name} must be one of {allowed}; got {v!r}")
            if meta.get("min") is not None and not v >= meta["min"]:
                raise ValueError(f"{name} must be >= {meta['min']}; got {v!r}")
            if meta.get("xmin") is not None and not v > meta["xmin"]:
                raise ValueError(f"{name} must be > {meta['xmin']}; got {v!r}")
        if multi and name != "seeds" and len(set(values)) != len(values):
            raise ValueError(f"{name} must hold distinct values; got {list(values)}")
    seeds = parse_seeds(config.seeds)
    for b, d in itertools.product(config.branching, config.depth):
        n_nodes = (b ** (d + 1) - 1) // (b - 1)
        if tree_bytes(n_nodes, b) > DEFAULT_MAX_BYTES:
            raise ValueError(
                f"branching={b}, depth={d} gives {n_nodes:,} nodes, over the tree memory budget; "
                "use smaller --branching/--depth"
            )
    floats = {k: tuple(float(v) for v in getattr(config, k)) for k in ("betas", "lrs")}
    return replace(config, seeds=compress_seeds(seeds), **floats)


def load_grid(path: str | Path) -> dict[str, Any]:
    """Read a grid file (``.json`` or ``.toml``): keys are Config fields (``-`` or ``_``), values
    scalars or lists. Returns field → value (lists as tuples), checked like the command line.

    Raises ValueError naming the file and the unknown key or invalid value.
    """
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise ValueError(f"grid file {path} cannot be read ({e.strerror})") from None
    try:
        raw = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as e:
        raise ValueError(
            f"grid file {path} is not valid {path.suffix[1:] or 'JSON'}: {e}"
        ) from None
    if not isinstance(raw, dict):
        raise ValueError(f"grid file {path} must hold a table of key = value")
    kinds = {flag.name: flag.kind for flag in config_flags(Config)}
    values: dict[str, Any] = {}
    for key, value in raw.items():
        name = key.replace("-", "_")
        if name not in kinds or name in ("force", "progress"):  # how to run, not what
            known = ", ".join(n for n in kinds if n not in ("force", "progress"))
            raise ValueError(f"grid file {path}: unknown key {key!r}; known keys: {known}")
        if typing.get_origin(kinds[name]) is tuple:
            value = tuple(value) if isinstance(value, list) else (value,)
        values[name] = value
    try:
        check_config(with_flags(Config(), values))
    except ValueError as e:
        raise ValueError(f"grid file {path}: {e}") from None
    return values


def parse_args(argv: Sequence[str] | None = None) -> Config:
    """Config from the command line: defaults, then ``--grid FILE``, then explicit flags."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--grid")
    known, _ = pre.parse_known_args(argv)
    parser = build_parser(Config, __doc__ or "")
    parser.add_argument(
        "--grid", metavar="FILE", help="JSON or TOML grid file; flags given here override it"
    )
    if known.grid:
        try:
            parser.set_defaults(**load_grid(known.grid))
        except ValueError as e:
            parser.error(str(e))
    ns = vars(parser.parse_args(argv))
    ns.pop("grid")
    config = with_flags(
        Config(), {k: tuple(v) if isinstance(v, list) else v for k, v in ns.items()}
    )
    try:
        return check_config(config)
    except ValueError as e:
        parser.error(str(e))


# ------------------------------------------------------------------------------ the plan


@dataclass(frozen=True)
class Chunk:
    """One batch of runs sharing a tree and a dataset kind.

    Attributes:
        index: position in the plan (parts are merged in this order).
        branching, depth, pairs, pair_source: the shared tree and dataset kind.
        runs: (global run id, objective, β, lr, seed) of each run in the batch.
    """

    index: int
    branching: int
    depth: int
    pairs: int
    pair_source: str
    runs: tuple[tuple[int, str, float, float, int], ...]


def run_bytes(config: Config, branching: int, depth: int) -> int:
    """Rough peak bytes one run adds to a batch: per-run features, the metric context and the
    full-distribution temporaries of a logged step (a few float64 arrays per node and leaf)."""
    n_leaves = branching**depth
    n_internal = (n_leaves - 1) // (branching - 1)
    n_nodes = n_internal + n_leaves
    k = config.problem.features if config.problem.policy == "loglinear" else 1
    return 8 * (n_internal * branching * (k + 4) + 4 * n_nodes + 24 * n_leaves)


def chunk_size(config: Config, branching: int, depth: int) -> int:
    """Runs per batch: --chunk-runs, or as many as fit in --memory-mb (at least one)."""
    if config.chunk_runs > 0:
        return config.chunk_runs
    return max(1, config.memory_mb * 2**20 // run_bytes(config, branching, depth))


GRID_AXES = ("branching", "depth", "pairs", "pair_source", "objectives", "betas", "lrs")
"""The grid's axes besides the seeds (their product times the seeds is the number of runs)."""


def plan(config: Config) -> list[Chunk]:
    """Every run of the grid with its global id, split into chunks; a pure function of config.

    Run ids enumerate (branching, depth, pairs, pair_source, objective, β, lr, seed) in the
    order given, last axis fastest.
    """
    seeds = parse_seeds(config.seeds)
    chunks: list[Chunk] = []
    run_id = 0
    for b, d, p, src in itertools.product(
        config.branching, config.depth, config.pairs, config.pair_source
    ):
        axes = itertools.product(config.objectives, config.betas, config.lrs, seeds)
        runs = [(run_id + i, *run) for i, run in enumerate(axes)]
        run_id += len(runs)
        size = chunk_size(config, b, d)
        for i in range(0, len(runs), size):
            chunks.append(Chunk(len(chunks), b, d, p, src, tuple(runs[i : i + size])))
    return chunks


# ------------------------------------------------------------------------------- running


def run_chunk(config: Config, chunk: Chunk, tree: Tree, *, progress: bool = False) -> pd.DataFrame:
    """Train one chunk's runs as one batch; its tidy frame with global run ids, sorted."""
    seeds = list(dict.fromkeys(seed for *_, seed in chunk.runs))
    spec = replace(config.problem, pairs=chunk.pairs, pair_source=chunk.pair_source)
    problems = build_problem(tree, seeds, spec)
    where = {s: i for i, s in enumerate(seeds)}
    problem = problems.select([where[seed] for *_, seed in chunk.runs])
    specs = [RunSpec(o, beta, lr) for _, o, beta, lr, _ in chunk.runs]
    try:
        history = train(
            problem,
            specs,
            steps=config.steps,
            optimizer=config.optimizer,
            log_every=config.log_every,
            progress=progress,
            device=config.device,
            precision=config.precision,
        )
    except TrainingDivergedError as e:  # run ids in the message and the partial table: global
        where = f"chunk {chunk.index} (b={chunk.branching}, D={chunk.depth}, global run ids)"
        e.args = (f"{where}: {_global_run_ids(str(e), chunk)}",)
        e.chunk_index = chunk.index  # which part it was (a Ray worker's error crosses a pickle)
        if not e.history.frame.empty:
            e.history.frame = _label(e.history.frame, chunk)
        raise
    return _label(history.frame, chunk)


def _global_run_ids(message: str, chunk: Chunk) -> str:
    """A training message's ``run r`` with the chunk-local r replaced by the global run id."""
    return re.sub(r"\brun (\d+)\b", lambda m: f"run {chunk.runs[int(m[1])][0]}", message)


def _label(frame: pd.DataFrame, chunk: Chunk) -> pd.DataFrame:
    """A chunk's training frame with global run ids and the grid columns, sorted."""
    ids = torch.tensor([r[0] for r in chunk.runs]).numpy()
    frame["run"] = ids[frame["run"].to_numpy()]
    frame["branching"] = chunk.branching
    frame["depth"] = chunk.depth
    frame["pairs"] = chunk.pairs
    frame["pair_source"] = chunk.pair_source
    frame = frame[list(COLUMNS)].sort_values(["run", "step"], kind="stable")
    return frame.reset_index(drop=True)


def part_path(folder: Path, chunk: Chunk, n_chunks: int) -> Path:
    """Where chunk ``chunk``'s finished frame lives."""
    return folder / "parts" / f"chunk-{chunk.index:05d}-of-{n_chunks:05d}.pkl"


def read_part(path: Path) -> pd.DataFrame:
    """A finished chunk's frame; ValueError naming the file if it cannot be read."""
    data = verify_file(path)  # checked against parts/manifest.json
    try:
        return pd.read_pickle(io.BytesIO(data))
    except Exception as e:  # a part is written atomically, so this means outside tampering
        raise ValueError(
            f"{path} is unreadable ({e}); delete it and rerun to recompute it"
        ) from None


def chunk_part(config: Config, chunk: Chunk, *, progress: bool = False) -> bytes:
    """One cell of the sweep: train ``chunk`` and return its frame, pickled (the part's bytes).

    Runs wherever the backend puts it (this process, a Ray worker); the driver writes it."""
    with default_dtype(torch.float64):
        tree = complete_tree(chunk.branching, chunk.depth)
        frame = run_chunk(config, chunk, tree, progress=progress)
    buffer = io.BytesIO()
    frame.to_pickle(buffer)
    return buffer.getvalue()


def run_sweep(config: Config, folder: Path) -> pd.DataFrame:
    """Run every unfinished chunk of the plan (``--backend``: here, or as Ray tasks), writing
    each one's part as it finishes, then merge all parts in plan order."""
    n_runs = math.prod(len(getattr(config, a)) for a in GRID_AXES) * len(parse_seeds(config.seeds))
    if n_runs >= 100_000:  # planning and checking finished parts takes seconds: say so
        print(f"sweep: planning {n_runs:,} runs ...", file=sys.stderr, flush=True)
    chunks = plan(config)
    parts = [part_path(folder, c, len(chunks)) for c in chunks]
    for stale in (folder / "parts").glob(".*.tmp"):  # left by a killed write; never a part
        stale.unlink(missing_ok=True)
    done = sum(len(c.runs) for c, p in zip(chunks, parts, strict=True) if p.exists())
    total = sum(len(c.runs) for c in chunks)
    bar = tqdm(
        total=total,
        initial=done,
        desc="sweep",
        unit="run",
        disable=not config.progress,
        dynamic_ncols=True,
    )
    todo = [(c, p) for c, p in zip(chunks, parts, strict=True) if not p.exists()]
    serial = config.run.backend == "serial"
    inner = serial and config.progress and sys.stderr.isatty() and config.steps >= 200
    cell = functools.partial(chunk_part, config, progress=inner)
    try:
        for i, data in map_cells(cell, [c for c, _ in todo], config.run):
            chunk, path = todo[i]
            write_checked(path, data)  # the driver is the one writer of parts/
            bar.update(len(chunk.runs))
    except TrainingDivergedError as e:
        bar.close()
        path = parts[e.chunk_index]
        raise RunDivergedError(save_diverged(folder, config, e, name=path.stem)) from None
    except KeyboardInterrupt:
        bar.close()
        finished = sum(p.exists() for p in parts)
        print(
            f"interrupted: {finished} of {len(chunks)} chunks are saved in {folder}/parts; "
            "run the same command again to resume",
            file=sys.stderr,
        )
        raise
    bar.close()
    frame = pd.concat([read_part(p) for p in parts], ignore_index=True)
    return frame


def output_folder(config: Config) -> Path:
    """The sweep folder of ``config`` (named by a hash of its canonical form)."""
    config = check_config(config)
    return run_folder(config.out, config, prefix="sweep", ignore=NOT_IN_HASH)


def main(config: Config) -> Path:
    """Run (or resume, or reuse) the sweep of ``config``; return its folder."""
    config = check_config(config)
    resolve_device(config.device)  # a device this torch cannot use: one line, nothing written
    check_backend(config.run)
    folder = output_folder(config)
    start = time.perf_counter()

    def compute() -> dict[str, pd.DataFrame]:
        if config.force:
            for part in (folder / "parts").glob("*.pkl"):
                part.unlink()
        write_config(folder, config)  # an unfinished sweep's folder says what it is
        return {"metrics": run_sweep(config, folder)}

    # a second sweep of this config refuses; a killed one resumes from its finished parts
    with cached_run(
        folder, config, ["metrics"], compute, force=config.force, finished="the finished sweep"
    ) as tables:
        frame = tables["metrics"]
        missing = [c for c in COLUMNS if c not in frame.columns]
        if missing:
            raise ValueError(
                f"{folder / 'metrics.csv'} lacks columns {missing}; it was written by another "
                "version"
            )
    final = frame[frame["step"] == frame["step"].max()]
    keys = [a for a in ("branching", "depth", "pairs", "pair_source") if frame[a].nunique() > 1]
    summary = final.groupby([*keys, "objective", "beta"], sort=False)[SUMMARY].mean()
    n_runs, n_seeds = frame["run"].nunique(), frame["seed"].nunique()
    print(f"final step {int(final['step'].iloc[0])}, means over {n_seeds} seeds:")
    print(summary.to_string(float_format=lambda x: f"{x:.3f}"))
    print(
        f"{n_runs} runs, {len(frame):,} rows in {time.perf_counter() - start:.1f} s; "
        f"results in {folder}/ (config.json, metrics.csv)"
    )
    return folder


if __name__ == "__main__":
    cfg = parse_args()
    try:
        main(cfg)
    except ValueError as err:
        print(f"sweep.py: error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    except OSError as err:  # --out is a file, read-only, ...: one line; other OS errors: raised
        if (line := os_error_line(err)) is None:
            raise
        print(f"sweep.py: error: {line}", file=sys.stderr)
        raise SystemExit(2) from None
    except RunDivergedError as err:
        print(f"sweep.py: error: {err}", file=sys.stderr)
        raise SystemExit(DIVERGED_EXIT) from None
    except KeyboardInterrupt:
        raise SystemExit(130) from None
