"""The paper's claims, checked in one command: a verdict table from computed statistics.

Runs (or reuses) the experiments the claims are decided on, evaluates every claim of
Rafailov et al. (2024) that the toy and the LLM family can decide, and prints (toy and LLM side
by side) and writes one row per claim and source and one per setting:

    python experiments/claims.py --out results/claims   # ~10 min of CPU from scratch (2 cores)
    python experiments/claims.py --search                       # + the condition search (slow)
    python experiments/claims.py --docs docs/claims.md          # + regenerate the docs page
    python experiments/claims.py --llm-runs DIR...              # + more LLM run folders (a GPU run)

Experiments (finished run folders are reused, such as experiments/paper_runs.py's):
experiments/toy_scaling.py with DPO, IPO, SLiC and R-DPO (α = 0.3) at its defaults and
experiments/ood_mass.py at β ∈ {0.01, 0.1, 0.5} with the log-linear and the tabular policy, both
at ``--seeds`` seeds (default 20; subprocesses); the LLM family: experiments/llm_overopt.py on the
tree language at ``--llm-sizes`` (default tiny) for ``--llm-seeds`` seeds (default 16; in
``--jobs`` processes). LLM runs are pooled as seeds only when their configurations differ in the
seed alone (``treemdp.runs.identity``). Statistics, intervals, power and nulls:
``treemdp.claims`` (``evidence``; see docs/claims.md).

Writes DIR/<run>/{config.json, claims.csv, run.json} (+ search.csv with --search), where
claims.csv has columns claim, statistic, value, ci_low, ci_high, setting, verdict (reproduced,
refuted, depends or no data), rule, n_seeds, mde, seeds_needed, kind (summary or setting),
depends_on, the setting's factors (source, variant, policy, objective, size, ...) and, for 3a,
the per-run flag's rate beside its shuffled-checkpoint null (flag_rate, null_rate, null_low,
null_high, null_p).
"""

from __future__ import annotations

import functools
import json
import os
import resource
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import paper_runs  # a sibling script (its folder is on sys.path): the paper's runs, declared once
from tqdm.auto import tqdm

from figures import checkpoints
from treemdp.claims import catalog, report
from treemdp.runs import (
    config_matches,
    find_runs,
    read_table,
    run_folder,
    run_lock,
    write_config,
    write_table,
)
from treemdp.runs.backends import BACKEND_FLAGS, Backend, map_cells
from treemdp.runs.cli import arg, flags_for, nested, run
from treemdp.runs.eval_table import EVAL_TABLE

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Config:
    out: str = arg("results/claims", "root folder for the claims run folder")
    results: str = arg("results", "results root the experiments' run folders live in (reused)")
    seeds: int = arg(
        20, "seeds of each toy experiment (toy_scaling, ood_mass; --quick: their tiny sets)",
        minimum=2,
    )  # fmt: skip
    llm_seeds: int = arg(
        16, "seeds of the LLM family (llm_overopt on the tree language); 0: no LLM family",
        minimum=0,
    )  # fmt: skip
    llm_sizes: tuple[str, ...] = arg(("tiny",), "GPT-NeoX shapes of the LLM family (CPU sizes)")
    llm_runs: tuple[str, ...] = arg((), "more LLM evaluation run folders (a GPU run's too)")
    jobs: int = arg(2, "processes training LLM seeds at once (1: in this process)", minimum=1)
    n_resamples: int = arg(200, "bootstrap resamples over seeds (exact when fewer)", minimum=0)
    search: bool = arg(False, "also search the conditions of claims 3b, 4, 5b, 8a (slow)")
    docs: str = arg("", "also write this Markdown page (docs/claims.md) and its data next to it")
    quick: bool = arg(False, "tiny experiment configs (a test run; not the paper's numbers)")
    progress: bool = arg(True, "show progress bars")
    run: Backend = nested(Backend(), flags=BACKEND_FLAGS)  # --search's toy runs as Ray tasks


OOD_POLICIES = ("loglinear", "tabular")
"""The figures' ood_mass.py run (``paper_runs.OOD_MASS``) is decided on for both policies."""

SEARCH_DEFAULTS = {
    "objectives": ("dpo", "ipo", "slic"),
    "capacities": ("mlp4", "mlp16", "mlp64"),
    "n_resamples": 0,
    "quick": False,
    "reward": "concave",
    "peak": 1.0,
    "explained": 1.0,
    "pairs": 512,
    "beta": (0.01, 0.03, 0.1, 0.3, 1.0),
    "sft_steps": 100,
    "optimizer": "adam",
    "lr": 0.03,
    "epochs": 1.0,
}
"""The condition search's base: toy_scaling's defaults without tabular and R-DPO (every key a
variant changes is listed, so a cached run is only reused for exactly its settings)."""
SEARCH = {
    "base": ("base", {}),
    "reward normal": ("gold reward shape", {"reward": "normal"}),
    "reward linear": ("gold reward shape", {"reward": "linear"}),
    "reward length": ("gold reward shape", {"reward": "length", "peak": 3.0, "explained": 0.5}),
    "concave κ=0.5": ("gold reward shape", {"peak": 0.5}),
    "noise ρ=0.5": ("preference noise", {"explained": 0.5}),
    "noise ρ=0.25": ("preference noise", {"explained": 0.25}),
    "P=128": ("data size", {"pairs": 128}),
    "reference uniform (0 SFT steps)": ("reference quality", {"sft_steps": 0}),
    "reference 20 SFT steps": ("reference quality", {"sft_steps": 20}),
    "reference 400 SFT steps": ("reference quality", {"sft_steps": 400}),
    "β up to 10": ("β", {"beta": (0.1, 0.3, 1.0, 3.0, 10.0)}),
    "β down to 0.001": ("β", {"beta": (0.001, 0.003, 0.01, 0.03, 0.1)}),
    "RMSProp lr 0.01": ("optimizer", {"optimizer": "rmsprop", "lr": 0.01}),
    "SGD lr 0.01": ("optimizer", {"optimizer": "sgd", "lr": 0.01}),
    "Adam lr 0.1": ("optimizer", {"lr": 0.1}),
    "P=2048": ("data size", {"pairs": 2048}),
    "capacity +mlp256": ("capacity", {"capacities": ("mlp4", "mlp16", "mlp64", "mlp256")}),
    "3 epochs": ("training length", {"epochs": 3.0}),
}
"""Variant → (factor, toy_scaling settings changed from ``SEARCH_DEFAULTS``)."""
SEARCH_QUICK = ("base", "P=128")
SEARCH_CLAIMS = ("3b", "4", "5b", "8a")


def run_script(script: str, settings: dict, results: Path, *, quiet: bool = True) -> None:
    """Run an experiment script with ``settings`` into ``results/<name>`` (it reuses a finished
    run folder itself); ValueError with its stderr if it fails."""
    name = Path(script).stem
    command = [sys.executable, str(ROOT / script), *flags_for(settings), "--out",
               str(results / name)]  # fmt: skip
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        raise ValueError(f"{script} failed:\n{done.stderr.strip()}")


def find_or_run(script: str, settings: dict, results: Path, table: str = "metrics.csv") -> Path:
    """The newest run folder of ``script`` under ``results`` with ``settings`` (run when absent)."""
    root = results / Path(script).stem
    for _ in range(2):
        for folder, config in find_runs(root, table):
            if config_matches(config, settings):
                return folder
        run_script(script, settings, results)
    raise ValueError(f"{script} ran but left no run folder with {settings} under {root}")


def seed_list(config: Config) -> dict:
    """The toy experiments' seeds: ``--seeds`` of them (none with --quick: the quick sets)."""
    return {} if config.quick else {"seed": tuple(range(config.seeds))}


def toy_table(config: Config, results: Path, settings: dict | None = None) -> pd.DataFrame:
    """The checkpoint table of the toy_scaling run with ``settings`` (default: the figures', at
    ``--seeds`` seeds)."""
    if settings is None:
        settings = paper_runs.TOY_QUICK if config.quick else paper_runs.TOY
        settings = {**settings, **seed_list(config)}
    return checkpoints.from_toy(find_or_run("experiments/toy_scaling.py", settings, results))


def ood_tables(config: Config, results: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """ood_mass metrics and responses of both policies, with a ``policy`` column."""
    metrics, responses = [], []
    for policy in OOD_POLICIES:
        quick = paper_runs.OOD_MASS_QUICK if config.quick else {}
        settings = {**paper_runs.OOD_MASS, "policy": policy, **quick, **seed_list(config)}
        folder = find_or_run("experiments/ood_mass.py", settings, results, "responses.csv")
        m = read_table(folder / "metrics.csv")
        r = read_table(
            folder / "responses.csv", columns=("run", "step", "response", "logp", "role")
        )
        tag = policy + "/"
        metrics.append(m.assign(policy=policy, run=tag + m["run"].astype(str)))
        responses.append(r.assign(run=tag + r["run"].astype(str)))
    return pd.concat(metrics, ignore_index=True), pd.concat(responses, ignore_index=True)


LLM_FAMILY = {**paper_runs.LLM, "betas": (0.1, 0.3)}
"""llm_overopt.py settings of the LLM family the claims are decided on (per seed, at
``--llm-sizes``): the figures' llm family (``paper_runs.LLM``: one epoch of 30 steps of 4 pairs,
10 checkpoints evaluated exactly in memory, DPO, IPO, SLiC and R-DPO at β 0.1 and 0.3)."""
LLM_FAMILY_QUICK = {
    **paper_runs.LLM_QUICK, "objectives": ("dpo", "ipo", "rdpo"), "pairs": 16, "checkpoints": 4,
    "eval_samples": 2, "eval_pairs": 4, "sft_samples": 32, "toy_sft_steps": 10,
}  # fmt: skip
"""The test-sized LLM family of --quick (2 seeds at most)."""
LLM_QUICK_SEEDS = 2


def llm_settings(config: Config) -> list[dict]:
    """The llm_overopt settings of each LLM seed (``--llm-seeds`` of them; 2 with --quick)."""
    base = LLM_FAMILY_QUICK if config.quick else LLM_FAMILY
    n = min(config.llm_seeds, LLM_QUICK_SEEDS) if config.quick else config.llm_seeds
    return [{**base, "sizes": tuple(config.llm_sizes), "seed": s} for s in range(n)]


def _one_llm_seed(settings: dict, out: str) -> list[str]:
    """Run (or reuse) one seed of the LLM family; its evaluation run folders (a process pool's
    task: quiet, one thread)."""
    import contextlib
    import io

    import llm_overopt
    import torch

    from treemdp.runs.cli import with_flags

    if torch.get_num_threads() > 1 and os.environ.get("CLAIMS_WORKER"):
        torch.set_num_threads(1)
    cfg = with_flags(llm_overopt.Config(), {**settings, "out": out, "progress": False})
    with contextlib.redirect_stdout(io.StringIO()):
        llm_overopt.main(cfg)
    return [str(p) for p in llm_overopt.run_folders(cfg)]


def _worker_init() -> None:
    os.environ["CLAIMS_WORKER"] = "1"


def llm_family(config: Config, results: Path, bar=None) -> list[Path]:
    """The LLM family's evaluation run folders: every seed run (in ``--jobs`` processes) or
    reused from ``results/llm_overopt``."""
    settings = llm_settings(config)
    out = str(results / "llm_overopt")
    folders: list[Path] = []
    if config.jobs <= 1 or len(settings) <= 1:
        for s in settings:
            folders += map(Path, _one_llm_seed(s, out))
            if bar is not None:
                bar.set_postfix_str(f"LLM seed {s['seed']}")
        return folders
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    context = multiprocessing.get_context("spawn")  # torch and fork do not mix
    with ProcessPoolExecutor(config.jobs, mp_context=context, initializer=_worker_init) as pool:
        for done in pool.map(_one_llm_seed, settings, [out] * len(settings)):
            folders += map(Path, done)
    return folders


def llm_folders(config: Config, results: Path) -> list[Path]:
    """The extra LLM evaluation run folders of --llm-runs (checked: a missing one is an error)."""
    missing = [p for p in config.llm_runs if not Path(p).is_dir()]
    if missing:
        raise ValueError(
            f"--llm-runs {missing[0]} is not a folder"
            + (f" (nor {', '.join(missing[1:])})" if len(missing) > 1 else "")
            + ": give LLM run folders (with eval.csv) or folders above them"
        )
    return [Path(p) for p in config.llm_runs]


LLM_MASS = ("examples_seen", "exact_mass_ood", "exact_mass_in_dist")
"""What claims 1 and 1b read from a tree-language run's eval.csv (exact masses)."""


def llm_masses(folders: list[Path], table: pd.DataFrame) -> pd.DataFrame:
    """An ood_mass-like metrics table of the LLM runs that have exact masses (run, policy =
    ``llm-<size>`` plus the variant, objective, β, seed, step, mass_ood, mass_in_dist)."""
    runs = checkpoints._llm_folders(folders)
    names = [p.name for p in runs]
    keys = names if len(set(names)) == len(names) else [str(p) for p in runs]
    info = table.drop_duplicates("run").set_index("run")
    frames = []
    for key, folder in zip(keys, runs, strict=True):
        raw = read_table(folder / EVAL_TABLE)
        if key not in info.index or not all(c in raw for c in LLM_MASS):
            continue
        if raw[list(LLM_MASS)].isna().any().any():
            continue
        r = info.loc[key]
        policy = f"llm-{r['size']}" + (f" ({r['variant']})" if r["variant"] else "")
        frames.append(
            pd.DataFrame({"run": key, "policy": policy, "objective": r["objective"],
                          "beta": float(r["beta"]), "seed": r["seed"],
                          "step": raw["examples_seen"], "mass_ood": raw["exact_mass_ood"],
                          "mass_in_dist": raw["exact_mass_in_dist"]})
        )  # fmt: skip
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def evaluate(config: Config, results: Path, bar) -> tuple[pd.DataFrame, list[str]]:
    """Every claim's setting rows and summary rows; notes on what was skipped and why."""
    notes: list[str] = []
    bar.set_description("toy_scaling")
    toy = toy_table(config, results)
    bar.update()
    bar.set_description("ood_mass")
    metrics, responses = ood_tables(config, results)
    bar.update()
    bar.set_description("statistics")
    parts = [
        catalog.evaluate_ood(metrics, responses),
        catalog.evaluate_checkpoints(toy, source="toy", n_resamples=config.n_resamples),
        catalog.evaluate_theory(),
    ]
    bar.set_description("LLM family")
    folders = llm_family(config, results, bar) + llm_folders(config, results)
    bar.update()
    bar.set_description("statistics")
    if folders:
        llm = checkpoints.from_llm(folders)
        parts.append(
            catalog.evaluate_checkpoints(
                llm, source="llm", n_resamples=config.n_resamples, nulls=True
            )
        )
        masses = llm_masses(folders, llm)
        if len(masses):
            parts.append(catalog.evaluate_ood(masses, None, source="llm"))
        notes.append(report.llm_note(llm, len(folders)))
        if config.llm_seeds:
            flags = " ".join(flags_for({k: v for k, v in llm_settings(config)[0].items()
                                        if k != "seed"}))  # fmt: skip
            notes.append(
                f"LLM family: python experiments/llm_overopt.py {flags} --seed S for S < "
                f"{len(llm_settings(config))}"
            )
    else:
        notes.append("LLM side skipped: --llm-seeds 0 and no --llm-runs")
    bar.update()
    settings = catalog.order(pd.concat(parts, ignore_index=True).assign(kind="setting"))
    summary = catalog.order(catalog.summarise(settings).assign(kind="summary"))
    head = [*catalog.COLUMNS, "kind", "depends_on"]
    claims = pd.concat([summary, settings], ignore_index=True)
    claims["depends_on"] = claims["depends_on"].fillna("")
    rest = [c for c in claims.columns if c not in head]
    return claims[head + rest], notes


def search(config: Config, results: Path) -> pd.DataFrame:
    """Claims 3b, 4, 5b and 8a under each variant of ``SEARCH``: one summary row per (claim,
    variant) (the claim's verdict over that variant's settings)."""
    variants = {k: SEARCH[k] for k in SEARCH_QUICK} if config.quick else SEARCH
    fan_out(config, results, [search_settings(config, change) for _, change in variants.values()])
    rows = []
    bar = tqdm(variants.items(), desc="search", disable=not config.progress)
    for name, (factor, change) in bar:
        bar.set_postfix_str(name)
        settings = search_settings(config, change)
        try:
            table = toy_table(config, results, settings)
        except ValueError as e:  # e.g. a diverged optimiser: a result of the search, say so
            reason = str(e).strip().splitlines()[-1].split("; the ")[0]
            failed = {"variant": name, "factor": factor, "verdict": "depends"}
            failed["depends_on"] = f"(no data: {reason})"
            rows.append(
                pd.DataFrame(
                    [
                        {"claim": c, "statistic": catalog.STATISTIC[c], "rule": catalog.RULE[c]}
                        | failed
                        for c in SEARCH_CLAIMS
                    ]
                )
            )
            continue
        found = catalog.evaluate_checkpoints(
            table, source="toy", n_resamples=config.n_resamples, only=SEARCH_CLAIMS
        )
        summary = catalog.summarise(found).assign(variant=name, factor=factor)
        rows.append(summary)
    out = catalog.order(pd.concat(rows, ignore_index=True))
    return out[["claim", "variant", "factor", "statistic", "value", "ci_low", "ci_high",
                "verdict", "depends_on", "rule", "n_settings", "n_reproduced", "n_refuted",
                "n_depends"]]  # fmt: skip


def search_settings(config: Config, change: dict) -> dict:
    """toy_scaling's settings of a search variant (``SEARCH_DEFAULTS`` changed by ``change``)."""
    settings = {**SEARCH_DEFAULTS, **change}
    if config.quick:
        settings = {**settings, "quick": True, "capacities": ("mlp4", "mlp16", "mlp64")}
    return settings


def _toy_run(results: str, settings: dict) -> str:
    """A cell of ``fan_out``: the toy_scaling run with ``settings`` (found or run); a failure is
    left for the serial pass to report."""
    try:
        return str(find_or_run("experiments/toy_scaling.py", settings, Path(results)))
    except ValueError as e:
        return f"failed: {str(e).strip().splitlines()[-1]}"


def fan_out(config: Config, results: Path, settings: list[dict]) -> None:
    """With ``--backend ray``, run every search variant's toy run at once as Ray tasks (each
    its own locked, content-addressed folder); the search then finds them all finished."""
    if config.run.backend == "serial":
        return
    cell = functools.partial(_toy_run, str(results))
    for _ in map_cells(cell, settings, config.run):
        pass


def cpu_seconds() -> float:
    """User + system CPU time of this process and its finished children (the experiments' and
    the LLM seeds' processes) so far."""
    own, kids = (
        resource.getrusage(resource.RUSAGE_SELF),
        resource.getrusage(resource.RUSAGE_CHILDREN),
    )
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def load_average() -> str:
    """The 1-minute load average over the CPU count (the machine is shared)."""
    try:
        return f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs"
    except OSError:
        return f"{os.cpu_count()} CPUs"


def main(config: Config) -> Path:
    """Evaluate every claim (reusing finished experiment runs); return the claims run folder."""
    start = time.perf_counter()
    results = Path(config.results)
    llm_folders(config, results)  # a mistyped --llm-runs folder stops here, before any work
    folder = run_folder(
        config.out,
        config,
        prefix="claims",
        ignore=("out", "docs", "progress", "results", *BACKEND_FLAGS),
    )
    load_start = load_average()
    with run_lock(folder):
        bar = tqdm(total=4, desc="claims", disable=not config.progress)
        claims, notes = evaluate(config, results, bar)
        bar.close()
        found = search(config, results) if config.search else None
        elapsed = time.perf_counter() - start
        meta = {
            "seconds": round(elapsed, 1),
            "cpu_seconds": round(cpu_seconds(), 1),
            "load_start": load_start,
            "load_end": load_average(),
            "notes": notes,
            "command": "python experiments/claims.py"
            + (" --search" if config.search else "")
            + (" --quick" if config.quick else "")
            + (f" --seeds {config.seeds}" if config.seeds != Config.seeds else "")
            + (f" --llm-seeds {config.llm_seeds}" if config.llm_seeds != Config.llm_seeds else ""),
        }
        write_config(folder, config)
        if found is not None:
            write_table(folder / "search.csv", found)
        (folder / "run.json").write_text(json.dumps(meta, indent=1) + "\n")
        write_table(folder / "claims.csv", claims)
    if config.docs:
        write_docs(Path(config.docs), claims, found, meta)
    print("\n".join(report.summary_lines(claims)))
    for note in notes:
        print(note)
    n_set = int((claims["kind"] == "setting").sum())
    counts = claims.loc[claims["kind"] == "summary", "verdict"].value_counts().to_dict()
    print(
        f"{int((claims['kind'] == 'summary').sum())} claims over {n_set} settings "
        f"({', '.join(f'{v} {k}' for k, v in counts.items())}) in {elapsed:.0f} s "
        f"({meta['cpu_seconds']:.0f} s CPU) "
        f"({meta['load_start']} at the start, {meta['load_end']} at the end); "
        f"results in {folder}/ (claims.csv{', search.csv' if found is not None else ''}, run.json)"
    )
    return folder


def write_docs(path: Path, claims: pd.DataFrame, found: pd.DataFrame | None, meta: dict) -> None:
    """docs/claims.md and its data (``<stem>_data/claims.csv, search.csv, run.json``)."""
    data = path.parent / f"{path.stem}_data"
    data.mkdir(parents=True, exist_ok=True)
    claims.to_csv(data / "claims.csv", index=False)
    if found is not None:
        found.to_csv(data / "search.csv", index=False)
    (data / "run.json").write_text(json.dumps(meta, indent=1) + "\n")
    kept = ""
    if path.exists() and report.GENERATED_END in path.read_text():
        kept = path.read_text().split(report.GENERATED_END, 1)[1]
    path.write_text(report.page(data) + kept.lstrip("\n"))


if __name__ == "__main__":
    run(Config, main, description=__doc__)
