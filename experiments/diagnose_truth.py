"""Which diagnostics track the truth? diagnose.py's signals, computed exactly on tree-language LLM
runs, against the exact OOD mass and the exact gold win rate, over seeds.

    python experiments/llm_overopt.py --objectives dpo ipo --betas 0.03 0.3 --seed S --out R/sS
    python experiments/diagnose_truth.py --runs R/s0 R/s1 ... --out results/diagnose_truth

For every run folder of llm_overopt (kept weights) and each of its checkpoints, the signals of
``treemdp.diagnostics.exact_signals`` are computed from the exact log-probability of every leaf
(no sampling): the mean chosen and rejected log-prob changes on the training pairs, the
chosen-falls and both-fall shares, the objective's implicit margin and accuracy, KL(π‖π_ref),
the expected ``ood_proxy`` (the policy's mass on responses whose reference log-prob is below
the chosen responses' 5% quantile) and ``ood_proxy_per_token``, and the argmax mass; and CHES
on the reference (llm/diagnose.py, from hidden states) against each pair's displacement. The
truth is the run's eval.csv: ``exact_mass_ood`` and the change of ``exact_win_rate`` since
step 0.

Writes ``signals.csv`` (one row per run and checkpoint), the tables of
``treemdp.claims.early_warning.analyse``: ``tracking.csv`` (Spearman with each truth, pooled and
within runs, with intervals over seeds), ``warning.csv`` and ``stopping.csv`` (each signal, its
rise above its running minimum, simulated judges and the objective-and-β baseline as detectors
of the exact win-rate peak and as stopping rules: thresholds chosen on half the seeds, scored on
the other half), ``selection.csv`` (which checkpoint to keep); and ``ches.csv`` (per run:
Spearman of CHES with the pairs' displacement at the last checkpoint).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from tqdm import tqdm

from llm.checkpoint import checkpoint_step, complete_checkpoints
from llm.diagnose import ches_scores
from llm.eval_run import load_reference
from llm.evaluate import TreeTask
from llm.model import load_model, progress_bars_off
from llm.sampling import tree_logprobs
from llm.tree_language import TreeLanguage
from treemdp.claims import early_warning
from treemdp.claims.evidence import mean_ci
from treemdp.claims.statistics import spearman
from treemdp.data import Pairs
from treemdp.diagnostics import SIGNAL_ORIENTATION, exact_signals
from treemdp.objectives import Margins
from treemdp.runs import read_config, read_table, write_table
from treemdp.runs.cli import arg, run
from treemdp.train import RunSpec, implicit_margin

TRUTHS = ("exact_mass_ood", "win_rate_change")
SETTING = ("objective", "beta")


@dataclass(frozen=True)
class Config:
    """Diagnostics against the exact truth on tree-language runs."""

    runs: tuple[str, ...] = arg((), "llm_overopt output folders (one per seed; weights kept)")
    margin: float = arg(
        0.02, "a run degrades when its end win rate is this far below the peak", minimum=0
    )
    n_resamples: int = arg(1000, "bootstrap resamples", minimum=1)
    out: str = arg("results/diagnose_truth", "output folder")
    progress: bool = arg(True, "show a progress bar")


def _signals(tt: TreeTask, spec: RunSpec, logp: torch.Tensor, ref: torch.Tensor) -> dict:
    """``exact_signals`` of one checkpoint (one run: R = 1)."""
    pairs = Pairs(tt.chosen[None], tt.rejected[None])
    lengths = tt.tree.response_length.double()
    c, r = pairs.chosen, pairs.rejected
    m = Margins(logp[None, c[0]], logp[None, r[0]], ref[None, c[0]], ref[None, r[0]])
    margin = implicit_margin([spec], m, lengths[c], lengths[r])
    out = exact_signals(tt.tree, logp[None], ref[None], pairs, margin)
    return {name: float(v[0]) for name, v in out.items()}


def run_signals(run_dir: Path) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Every checkpoint's exact signals beside its truth, and the run's CHES correlations."""
    config = read_config(run_dir)
    tt = TreeTask.read(run_dir)
    if tt is None:
        raise ValueError(f"{run_dir} has no tree_problem.json: not a tree-language run")
    language = TreeLanguage(tt.tree)
    tok = language.tokenizer()
    reference = load_reference(config, vocab_size=len(tok), dtype=torch.float32)
    with torch.no_grad():
        ref = tree_logprobs(reference, tt.tree).double()
    examples, _ = language.examples(tt.chosen, tt.rejected)
    ches, ches_n = ches_scores(reference, examples, pad_id=tok.pad_token_id)
    truth = read_table(run_dir / "eval.csv").set_index("checkpoint")
    w0 = float(truth.loc[0, "exact_win_rate"])
    obj = {"objective": config["objective"], "beta": float(config["beta"])}
    hyper = tuple(sorted((config.get("hyper") or {}).items()))
    spec = RunSpec(obj["objective"], obj["beta"], 1.0, hyper)
    rows = []
    last_dc = None
    for folder in [None, *complete_checkpoints(run_dir)]:
        step = 0 if folder is None else checkpoint_step(folder)
        if folder is None:
            logp = ref
        else:
            with torch.no_grad():
                logp = tree_logprobs(load_model(folder), tt.tree).double()
        row = {"step": step, **_signals(tt, spec, logp, ref)}
        row["exact_mass_ood"] = float(truth.loc[step, "exact_mass_ood"])
        row["exact_win_rate"] = float(truth.loc[step, "exact_win_rate"])
        row["win_rate_change"] = row["exact_win_rate"] - w0
        row["fraction_of_epoch"] = float(truth.loc[step, "fraction_of_epoch"])
        rows.append(row)
        last_dc = logp[tt.chosen] - ref[tt.chosen]
    frame = pd.DataFrame(rows).assign(seed=int(config["seed"]), run=run_dir.name, **obj)
    ches_row = {
        "seed": int(config["seed"]), "run": run_dir.name, **obj,
        "ches_rank_corr": spearman(ches.numpy(), (-last_dc).numpy()),
        "ches_normalised_rank_corr": spearman(ches_n.numpy(), (-last_dc).numpy()),
    }  # fmt: skip
    return frame, ches_row


def main(cfg: Config) -> Path:
    """Compute the tables; return the output folder."""
    if not cfg.runs:
        raise ValueError("--runs must name llm_overopt output folders")
    folders = []
    for r in cfg.runs:
        root = Path(r)
        if not root.is_dir():
            raise ValueError(f"--runs {root} is not a folder")
        found = sorted(
            p.parent for p in root.glob("**/llm/*/eval.csv") if "sft" not in p.parent.name
        )
        if not found:
            raise ValueError(f"--runs {root} holds no llm_overopt run (llm/*/eval.csv)")
        folders.extend(found)
    frames, ches_rows = [], []
    out = Path(cfg.out)
    cache = out / "runs"  # one run's rows, kept: adding seeds recomputes only the new runs
    cache.mkdir(parents=True, exist_ok=True)
    with progress_bars_off():
        for f in tqdm(folders, desc="runs", disable=not cfg.progress):
            # the signal set is in the key: a cache written before a signal was added is redone
            key = hashlib.sha256(f"{f.resolve()}|{','.join(SIGNAL_ORIENTATION)}".encode())
            key = key.hexdigest()[:16]
            if (cache / f"{key}.csv").is_file() and (cache / f"{key}.json").is_file():
                frame = read_table(cache / f"{key}.csv")
                ches_row = json.loads((cache / f"{key}.json").read_text())
            else:
                frame, ches_row = run_signals(f)
                write_table(cache / f"{key}.csv", frame)
                (cache / f"{key}.json").write_text(json.dumps(ches_row))
            frames.append(frame)
            ches_rows.append(ches_row)
    signals = pd.concat(frames, ignore_index=True)
    write_table(out / "signals.csv", signals)
    tables = early_warning.analyse(
        signals, SIGNAL_ORIENTATION, TRUTHS, time="fraction_of_epoch", setting=SETTING,
        margin=cfg.margin, n_resamples=cfg.n_resamples,
    )  # fmt: skip
    for name, table in tables.items():
        write_table(out / f"{name}.csv", table)
    ches = pd.DataFrame(ches_rows)
    write_table(out / "ches.csv", ches)
    print(early_warning.report(tables))
    for col in ("ches_rank_corr", "ches_normalised_rank_corr"):
        per_seed = ches.groupby("seed")[col].mean()
        e = mean_ci(per_seed.to_numpy())
        print(f"{col}: {e.value:.3f} [{e.low:.3f}, {e.high:.3f}] over {e.n} seeds")
    n_runs = len(folders)
    print(f"done: {n_runs} runs, {signals['seed'].nunique()} seeds; tables in {out}")
    return out


if __name__ == "__main__":
    run(Config, main, description=__doc__)
