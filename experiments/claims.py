"""The paper's claims, checked in one command: a verdict table from computed statistics.

Runs (or reuses) the experiments the claims are decided on, evaluates every claim of
Rafailov et al. (2024) that the toy can decide (and the LLM side where LLM evaluation runs exist
under --results), and prints and writes one row per claim and one per setting:

    python experiments/claims.py --out results/claims   # ~90 s of CPU from scratch, ~20 s cached
    python experiments/claims.py --search                       # + the condition search (slow)
    python experiments/claims.py --docs docs/claims.md          # + regenerate the docs page

Experiments (subprocesses; finished run folders are reused, such as experiments/paper_runs.py's):
experiments/toy_scaling.py with DPO, IPO, SLiC and R-DPO (α = 0.3) at its defaults, and
experiments/ood_mass.py at β ∈ {0.01, 0.1, 0.5} with the log-linear and the tabular policy.
Statistics, intervals and decision rules: ``treemdp.claims`` (see docs/claims.md).

Writes DIR/<run>/{config.json, claims.csv, run.json} (+ search.csv with --search), where
claims.csv has columns claim, statistic, value, ci_low, ci_high, setting, verdict (reproduced,
refuted or depends), rule, kind (summary or setting), depends_on and the setting's factors.
"""

from __future__ import annotations

import json
import os
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
from treemdp.runs.cli import arg, flags_for, run
from treemdp.runs.eval_table import EVAL_TABLE

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Config:
    out: str = arg("results/claims", "root folder for the claims run folder")
    results: str = arg("results", "results root the experiments' run folders live in (reused)")
    llm_runs: tuple[str, ...] = arg((), "LLM evaluation run folders (none: those under --results)")
    n_resamples: int = arg(200, "bootstrap resamples over seeds (exact when fewer)", minimum=0)
    search: bool = arg(False, "also search the conditions of claims 3b, 4, 5b, 8a (slow)")
    docs: str = arg("", "also write this Markdown page (docs/claims.md) and its data next to it")
    quick: bool = arg(False, "tiny experiment configs (a test run; not the paper's numbers)")
    progress: bool = arg(True, "show progress bars")


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


def toy_table(config: Config, results: Path, settings: dict | None = None) -> pd.DataFrame:
    """The checkpoint table of the toy_scaling run with ``settings`` (default: the figures')."""
    if settings is None:
        settings = paper_runs.TOY_QUICK if config.quick else paper_runs.TOY
    return checkpoints.from_toy(find_or_run("experiments/toy_scaling.py", settings, results))


def ood_tables(config: Config, results: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """ood_mass metrics and responses of both policies, with a ``policy`` column."""
    metrics, responses = [], []
    for policy in OOD_POLICIES:
        quick = paper_runs.OOD_MASS_QUICK if config.quick else {}
        settings = {**paper_runs.OOD_MASS, "policy": policy, **quick}
        folder = find_or_run("experiments/ood_mass.py", settings, results, "responses.csv")
        m = read_table(folder / "metrics.csv")
        r = read_table(
            folder / "responses.csv", columns=("run", "step", "response", "logp", "role")
        )
        tag = policy + "/"
        metrics.append(m.assign(policy=policy, run=tag + m["run"].astype(str)))
        responses.append(r.assign(run=tag + r["run"].astype(str)))
    return pd.concat(metrics, ignore_index=True), pd.concat(responses, ignore_index=True)


def llm_folders(config: Config, results: Path) -> list[Path]:
    """LLM evaluation run folders: --llm-runs, else every folder with eval.csv under
    results/llm_confirm/*/llm/ and results/llm_eval/ (SFT runs left out)."""
    if config.llm_runs:
        missing = [p for p in config.llm_runs if not Path(p).is_dir()]
        if missing:
            raise ValueError(
                f"--llm-runs {missing[0]} is not a folder"
                + (f" (nor {', '.join(missing[1:])})" if len(missing) > 1 else "")
                + ": give LLM run folders (with eval.csv) or folders above them"
            )
        return [Path(p) for p in config.llm_runs]
    found = [
        *results.glob(f"llm_confirm/*/llm/*/{EVAL_TABLE}"),
        *results.glob(f"llm_eval/**/{EVAL_TABLE}"),
    ]
    return sorted({p.parent for p in found if p.parent.name != "sft"})


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
    folders = llm_folders(config, results)
    if folders:
        try:
            llm = checkpoints.from_llm(folders)
        except ValueError as e:
            if config.llm_runs:  # folders the user named: an error, not a silent skip
                raise
            notes.append(f"LLM side skipped: {e}")
        else:
            parts.append(
                catalog.evaluate_checkpoints(llm, source="llm", n_resamples=config.n_resamples)
            )
            notes.append(report.llm_note(llm, len(folders)))
    else:
        notes.append(
            f"LLM side skipped: no LLM evaluation runs (eval.csv) under {results}/llm_confirm or "
            f"{results}/llm_eval and no --llm-runs"
        )
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
    rows = []
    bar = tqdm(variants.items(), desc="search", disable=not config.progress)
    for name, (factor, change) in bar:
        bar.set_postfix_str(name)
        settings = {**SEARCH_DEFAULTS, **change}
        if config.quick:
            settings = {**settings, "quick": True, "capacities": ("mlp4", "mlp16", "mlp64")}
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
        config.out, config, prefix="claims", ignore=("out", "docs", "progress", "results")
    )
    load_start = load_average()
    with run_lock(folder):
        bar = tqdm(total=3, desc="claims", disable=not config.progress)
        claims, notes = evaluate(config, results, bar)
        bar.close()
        found = search(config, results) if config.search else None
        elapsed = time.perf_counter() - start
        meta = {
            "seconds": round(elapsed, 1),
            "load_start": load_start,
            "load_end": load_average(),
            "notes": notes,
            "command": "python experiments/claims.py"
            + (" --search" if config.search else "")
            + (" --quick" if config.quick else ""),
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
