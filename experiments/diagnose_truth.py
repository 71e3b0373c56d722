"""Which diagnostics track the truth? diagnose.py's signals, computed exactly on tree-language LLM
runs, against the exact OOD mass and the exact gold win rate, over seeds.

    python experiments/llm_overopt.py --objectives dpo ipo --betas 0.03 0.3 --seed S --out R/sS
    python experiments/diagnose_truth.py --runs R/s0 R/s1 ... --out results/diagnose_truth

For every run folder of llm_overopt (kept weights) and each of its checkpoints, the signals of
llm/diagnose.py are computed from the exact log-probability of every leaf (no sampling): the mean
chosen and rejected log-prob changes on the training pairs, the both-fall share, the objective's
implicit margin and accuracy, KL(π‖π_ref), the expected ``ood_proxy`` (the policy's mass on
responses whose reference log-prob is below the chosen responses' 5% quantile) and
``ood_proxy_per_token`` (the same per token), and
CHES on the reference against each pair's displacement. The truth is the run's eval.csv:
``exact_mass_ood`` and the change of ``exact_win_rate`` since step 0.

Writes ``signals.csv`` (one row per run and checkpoint), ``tracking.csv`` (per signal and truth:
Spearman over all checkpoints after step 0, with a 95% bootstrap interval over seeds),
``warning.csv`` (per signal, as a detector of the exact win-rate peak: threshold chosen on one
half of the seeds, true- and false-positive rates and lead time on the other half) and
``ches.csv`` (per run: Spearman of CHES with the pairs' displacement at the last checkpoint).
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from llm.checkpoint import checkpoint_step, complete_checkpoints
from llm.diagnose import OOD_QUANTILE, PairLogps64, ches_scores, spearman, teacher_forced
from llm.eval_run import load_reference
from llm.evaluate import TreeTask
from llm.model import load_model, progress_bars_off
from llm.sampling import tree_logprobs
from llm.tree_language import TreeLanguage
from treemdp.agreement import wilson
from treemdp.claims.evidence import Estimate, bootstrap_ci, mean_ci, split_seeds
from treemdp.runs import read_config, read_table, write_table
from treemdp.runs.cli import arg, run

SIGNALS = {
    # name: orientation (+1: larger means more over-optimized)
    "chosen_logp_change": -1,
    "rejected_logp_change": -1,
    "both_fall_share": +1,
    "margin": +1,
    "accuracy": +1,
    "kl": +1,
    "ood_proxy": +1,
    "ood_proxy_per_token": +1,
}
TRUTHS = ("exact_mass_ood", "win_rate_change")


@dataclass(frozen=True)
class Config:
    """Diagnostics against the exact truth on tree-language runs."""

    runs: tuple[str, ...] = arg((), "llm_overopt output folders (one per seed; weights kept)")
    margin: float = arg(0.02, "a run degrades when its end win rate is this far below the peak")
    n_resamples: int = arg(1000, "bootstrap resamples", minimum=1)
    out: str = arg("results/diagnose_truth", "output folder")
    progress: bool = arg(True, "show a progress bar")


def _pairs(logp: torch.Tensor, tt: TreeTask) -> PairLogps64:
    lengths = tt.tree.response_length
    return PairLogps64(logp[tt.chosen], logp[tt.rejected], lengths[tt.chosen], lengths[tt.rejected])


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
    ref_pairs = _pairs(ref, tt)
    lengths = tt.tree.response_length.double()
    low = ref < torch.quantile(ref[tt.chosen], OOD_QUANTILE)
    per_token = ref / lengths
    low_per_token = per_token < torch.quantile(per_token[tt.chosen], OOD_QUANTILE)
    examples, _ = language.examples(tt.chosen, tt.rejected)
    ches, ches_n = ches_scores(reference, examples, pad_id=tok.pad_token_id)
    truth = read_table(run_dir / "eval.csv").set_index("checkpoint")
    w0 = float(truth.loc[0, "exact_win_rate"])
    rows = []
    obj = {"objective": config["objective"], "beta": float(config["beta"])}
    hyper = config.get("hyper") or {}
    last_dc = None
    for folder in [None, *complete_checkpoints(run_dir)]:
        step = 0 if folder is None else checkpoint_step(folder)
        if folder is None:
            logp = ref
        else:
            with torch.no_grad():
                logp = tree_logprobs(load_model(folder), tt.tree).double()
        pol = _pairs(logp, tt)
        row = {"step": step, **teacher_forced(pol, ref_pairs, **obj, hyper=hyper)}
        p = torch.exp(logp) / tt.tree.n_prompts
        row["kl"] = float((p * (logp - ref)).sum())
        row["ood_proxy"] = float(p[low].sum())
        row["ood_proxy_per_token"] = float(p[low_per_token].sum())
        row["exact_mass_ood"] = float(truth.loc[step, "exact_mass_ood"])
        row["exact_win_rate"] = float(truth.loc[step, "exact_win_rate"])
        row["win_rate_change"] = row["exact_win_rate"] - w0
        row["fraction_of_epoch"] = float(truth.loc[step, "fraction_of_epoch"])
        rows.append(row)
        last_dc = pol.chosen - ref_pairs.chosen
    frame = pd.DataFrame(rows).assign(seed=int(config["seed"]), run=run_dir.name, **obj)
    ches_row = {
        "seed": int(config["seed"]), "run": run_dir.name, **obj,
        "ches_rank_corr": spearman(ches, -last_dc),
        "ches_normalised_rank_corr": spearman(ches_n, -last_dc),
    }  # fmt: skip
    return frame, ches_row


def tracking(signals: pd.DataFrame, *, n_resamples: int = 1000) -> pd.DataFrame:
    """Per signal and truth: Spearman over every checkpoint after step 0 of every run, with a
    95% percentile interval from resampling seeds (``bootstrap_ci``)."""
    later = signals[signals["step"] > 0]
    rows = []
    for name, sign in SIGNALS.items():
        for truth in TRUTHS:

            def stat(frame: pd.DataFrame, name: str = name, truth: str = truth) -> float:
                return spearman(torch.tensor(frame[name].to_numpy()),
                                torch.tensor(frame[truth].to_numpy()))  # fmt: skip

            est = bootstrap_ci(later, stat, unit="seed", n_resamples=n_resamples)
            rows.append({"signal": name, "truth": truth, "orientation": sign, **_est(est)})
    return pd.DataFrame(rows)


def _est(e: Estimate) -> dict[str, float]:
    return {"spearman": e.value, "low": e.low, "high": e.high, "seeds": e.n}


def degradation(signals: pd.DataFrame, margin: float) -> pd.DataFrame:
    """Per run: the step of the exact win-rate peak and whether the run degrades (its last
    checkpoint at least ``margin`` below the peak)."""
    out = []
    for (seed, run_name), g in signals.groupby(["seed", "run"]):
        g = g.sort_values("step")
        peak = g.loc[g["exact_win_rate"].idxmax()]
        end = g.iloc[-1]["exact_win_rate"]
        out.append({"seed": seed, "run": run_name, "peak_fraction": peak["fraction_of_epoch"],
                    "degrades": bool(end <= peak["exact_win_rate"] - margin)})  # fmt: skip
    return pd.DataFrame(out)


def _fire(g: pd.DataFrame, name: str, sign: int, tau: float) -> float:
    """The fraction of the epoch at which the oriented signal first exceeds ``tau`` (NaN:
    never), checkpoints after step 0 only."""
    g = g[g["step"] > 0].sort_values("step")
    hit = g[sign * g[name] > tau]
    return float(hit["fraction_of_epoch"].iloc[0]) if len(hit) else math.nan


def detector_scores(
    signals: pd.DataFrame, runs: pd.DataFrame, name: str, sign: int, tau: float
) -> dict[str, float]:
    """True-positive rate (degrading runs where it fires), false-positive rate (runs that do
    not degrade where it fires) and median lead time (peak − firing, in epochs; > 0 warns
    before the peak) of "the oriented signal exceeds ``tau``"."""
    fired = {}
    for (seed, run_name), g in signals.groupby(["seed", "run"]):
        fired[(seed, run_name)] = _fire(g, name, sign, tau)
    t = runs.assign(fire=[fired[(s, r)] for s, r in zip(runs["seed"], runs["run"], strict=True)])
    bad, good = t[t["degrades"]], t[~t["degrades"]]
    lead = (bad["peak_fraction"] - bad["fire"]).dropna()
    tp, fp = int(bad["fire"].notna().sum()), int(good["fire"].notna().sum())
    # Wilson intervals; runs count as independent here: the four runs of one seed share its
    # problem, so the intervals are, if anything, too narrow
    tpr_low, tpr_high = wilson(tp, len(bad))
    fpr_low, fpr_high = wilson(fp, len(good))
    return {
        "tpr": tp / len(bad) if len(bad) else math.nan,
        "tpr_low": tpr_low,
        "tpr_high": tpr_high,
        "fpr": fp / len(good) if len(good) else math.nan,
        "fpr_low": fpr_low,
        "fpr_high": fpr_high,
        "lead_median": float(lead.median()) if len(lead) else math.nan,
        "degrading_runs": len(bad),
        "other_runs": len(good),
    }


def warning(signals: pd.DataFrame, margin: float, *, seed: int = 0) -> pd.DataFrame:
    """Each signal as an early-warning detector: the threshold that maximises TPR − FPR on one
    half of the seeds (``split_seeds``), scored on the other half."""
    runs = degradation(signals, margin)
    select, score = split_seeds(sorted(signals["seed"].unique()), seed=seed)
    rows = []
    for name, sign in SIGNALS.items():
        sel = signals[signals["seed"].isin(select)]
        sel_runs = runs[runs["seed"].isin(select)]
        # A run fires at some checkpoint iff its largest oriented value exceeds tau, so every
        # candidate threshold is scored at once from the runs' maxima.
        peak = (sign * sel.loc[sel["step"] > 0, name]).groupby([sel["seed"], sel["run"]]).max()
        bad = sel_runs.set_index(["seed", "run"])["degrades"].reindex(peak.index).to_numpy()
        taus = np.unique(peak.to_numpy()) - 1e-12
        fires = peak.to_numpy()[None, :] > taus[:, None]
        tpr = fires[:, bad].mean(1) if bad.any() else np.zeros(len(taus))
        fpr = fires[:, ~bad].mean(1) if (~bad).any() else np.zeros(len(taus))
        k = int(np.argmax(tpr - fpr))
        best, best_tau = float(tpr[k] - fpr[k]), float(taus[k])
        held = detector_scores(signals[signals["seed"].isin(score)],
                               runs[runs["seed"].isin(score)], name, sign, best_tau)  # fmt: skip
        rows.append({"signal": name, "threshold": sign * best_tau, "selection_j": best,
                     "selection_seeds": len(select), "scored_seeds": len(score),
                     **held})  # fmt: skip
    return pd.DataFrame(rows)


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
            key = hashlib.sha256(str(f.resolve()).encode()).hexdigest()[:16]
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
    track = tracking(signals, n_resamples=cfg.n_resamples)
    write_table(out / "tracking.csv", track)
    warn = warning(signals, cfg.margin)
    write_table(out / "warning.csv", warn)
    ches = pd.DataFrame(ches_rows)
    write_table(out / "ches.csv", ches)
    pd.set_option("display.width", 160)
    print(track.to_string(index=False, float_format="%.3g"))
    print(warn.to_string(index=False, float_format="%.3g"))
    for col in ("ches_rank_corr", "ches_normalised_rank_corr"):
        per_seed = ches.groupby("seed")[col].mean()
        e = mean_ci(per_seed.to_numpy())
        print(f"{col}: {e.value:.3f} [{e.low:.3f}, {e.high:.3f}] over {e.n} seeds")
    n_runs = len(folders)
    print(f"done: {n_runs} runs, {signals['seed'].nunique()} seeds; tables in {out}")
    return out


if __name__ == "__main__":
    run(Config, main, description=__doc__)
