"""Diagnose any DPO-family run: likelihood displacement, KL with intervals, an OOD warning.

    python experiments/diagnose.py --checkpoints out/checkpoint-500 out/checkpoint-1000 \\
        --reference EleutherAI/pythia-1b --data pairs.jsonl --out diag

``--checkpoints`` takes model folders as any trainer writes them (TRL's ``checkpoint-N``,
``save_pretrained`` folders, llm_train's ``step-NNNNNNN``) or folders holding them (a Trainer's
``output_dir``, an llm_train run); ``--reference`` a folder, a hub name (the local cache when
offline) or an llm_train run folder; ``--data`` a JSONL file or a ``datasets`` folder in TRL's
preference format (prompt / chosen / rejected; the conversational form too).

Writes into ``--out``: ``diagnose.csv`` (one row per checkpoint), ``pairs.csv`` (one row per
checkpoint and pair, with CHES on the reference), ``diagnose.png`` (one page) and
``verdict.txt``. The signals are defined in llm/diagnose.py; which of them track the true
over-optimization (measured exactly on the tree language) is in docs/diagnose.md.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from tqdm import tqdm

from llm.data import TruncationConfig, read_jsonl, tokenize_rows
from llm.diagnose import (
    ches_scores,
    kl_estimates,
    ood_threshold,
    pair_logps,
    spearman,
    teacher_forced,
)
from llm.evaluate import mean_se, sequence_logps
from llm.hf_folders import (
    check_same_tokenizer,
    load_any_model,
    model_folders,
    read_preference_rows,
    to_text_rows,
    tokenizer_for,
)
from llm.judges import ApiJudge, Comparison, Judge, RewardModelJudge
from llm.model import load_model, parse_dtype, progress_bars_off
from llm.sampling import generate
from treemdp import objectives
from treemdp.runs import write_table
from treemdp.runs.cli import SEED_MAX, arg, check_device, run
from treemdp.threads import threads_for

SHOWN = [
    "checkpoint", "step", "chosen_logp_change", "rejected_logp_change", "both_fall_share",
    "margin", "accuracy", "kl_k1", "kl_k1_se", "kl_k3", "ood_proxy", "win_rate",
]  # fmt: skip


@dataclass(frozen=True)
class Config:
    """Diagnosis of DPO-family checkpoints against their reference."""

    checkpoints: tuple[str, ...] = arg((), "model folders, or folders of checkpoint-N / step-N")
    reference: str = arg("", "reference model: a folder, a hub name, or an llm_train run folder")
    data: str = arg("", "preference pairs: JSONL or a datasets folder (prompt/chosen/rejected)")
    split: str = arg("", "split of a datasets folder with several (empty: test, or the only one)")
    prompts: str = arg("", "JSONL of prompts (a 'prompt' field) to sample; empty: the data's")
    pairs: int = arg(256, "pairs used (the first ones)", minimum=1)
    samples: int = arg(64, "prompts sampled: one policy and one reference sample each", minimum=0)
    max_new_tokens: int = arg(64, "sample length limit", minimum=1)
    temperature: float = arg(1.0, "sampling temperature", exclusive_minimum=0)
    objective: str = arg(
        "dpo",
        "objective whose implicit reward gives margin and accuracy",
        choices=tuple(objectives.names()),
    )
    beta: float = arg(0.1, "its β", exclusive_minimum=0)
    judge: str = arg(
        "none", "win-rate judge against reference samples", choices=("none", "reward-model", "api")
    )
    reward_model: str = arg("", "reward model folder or name for --judge reward-model")
    api_base_url: str = arg("", "OpenAI-compatible base URL; empty: $OPENAI_BASE_URL")
    api_key: str = arg("", "API key; empty: $OPENAI_API_KEY (never written anywhere)")
    api_model: str = arg("gpt-4-turbo-2024-04-09", "judge model name")
    max_length: int = arg(512, "prompt + response tokens kept", minimum=2)
    max_prompt_length: int = arg(256, "prompt tokens kept when a pair is too long", minimum=1)
    batch_size: int = arg(32, "sequences per forward", minimum=1)
    jobs: int = arg(
        2,
        "CPU threads, one intra-op thread each, running the reference's and each checkpoint's "
        "two halves (teacher-forced, sampled) at once (the numbers do not depend on it)",
        minimum=1,
    )
    seed: int = arg(0, "sampling seed", minimum=0, maximum=SEED_MAX)
    out: str = arg("results/diagnose", "output folder")
    device: str = arg("auto", "cpu, cuda, or auto")
    dtype: str = arg("fp32", "model dtype", choices=("fp32", "bf16", "fp16"))
    progress: bool = arg(True, "show a progress bar")


@dataclass
class Inputs:
    """Everything loaded once: reference, tokenizer, pairs, prompts and reference samples."""

    reference: Any
    tokenizer: Any
    examples: list
    ref_logps: Any
    ches: torch.Tensor
    ches_normalised: torch.Tensor
    thresholds: tuple[float, float]
    prompts: list[tuple[int, ...]]
    ref_samples: list[tuple[int, ...]]
    ood_reference: float  # the share of the reference's own samples below the OOD threshold


def _seed(*parts: Any) -> int:
    return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:7], "little")


def _check(cfg: Config) -> None:
    for flag, value in (
        ("--checkpoints", cfg.checkpoints),
        ("--reference", cfg.reference),
        ("--data", cfg.data),
    ):
        if not value:
            raise ValueError(f"{flag} is required (see --help)")
    if cfg.max_prompt_length >= cfg.max_length:
        raise ValueError("--max-prompt-length must be below --max-length")
    if cfg.judge == "reward-model" and not cfg.reward_model:
        raise ValueError("--judge reward-model needs --reward-model (folder or name)")
    if cfg.judge != "none" and cfg.samples == 0:
        raise ValueError(f"--judge {cfg.judge} needs --samples >= 1")
    if cfg.device != "auto":
        check_device(cfg.device)


def _load_inputs(
    cfg: Config, folders: list, device: str, dtype: torch.dtype, pool: ThreadPoolExecutor
) -> Inputs:
    """The tokenizer, pairs, prompts and reference: its pair log-probs and CHES, and its own
    samples with their log-probs, the two halves on ``pool`` at once."""
    tok = tokenizer_for(cfg.reference)
    for f in folders:
        other = tokenizer_for(f.path)
        check_same_tokenizer(tok, other, what=str(f.path))
        tok = tok or other
    if tok is None:
        raise ValueError("neither --reference nor the checkpoints carry a tokenizer")
    rows = to_text_rows(read_preference_rows(cfg.data, split=cfg.split), tok)
    trunc = TruncationConfig(cfg.max_length, cfg.max_prompt_length)
    examples, _ = tokenize_rows(rows[: cfg.pairs], tok, trunc)  # a bad row: one line
    reference = load_any_model(cfg.reference, vocab_size=len(tok), dtype=dtype, flag="--reference")
    reference = reference.to(device).eval()
    if reference.get_input_embeddings().weight.shape[0] < len(tok):
        raise ValueError(f"--reference has fewer token embeddings than its tokenizer ({len(tok)})")
    if cfg.prompts:
        texts = [r.get("prompt") for _, r in read_jsonl(cfg.prompts) if isinstance(r, dict)]
        if not texts or not all(isinstance(t, str) and t for t in texts):
            raise ValueError(f"--prompts {cfg.prompts}: every row needs a non-empty 'prompt'")
        prompts = [tuple(tok(t, add_special_tokens=False)["input_ids"]) for t in texts]
    else:
        prompts = list(dict.fromkeys(e.prompt for e in examples))
    prompts = prompts[: cfg.samples]
    kw = {"pad_id": tok.pad_token_id, "batch_size": cfg.batch_size}

    def teacher_forced() -> tuple:
        ref_logps = pair_logps(reference, examples, **kw)
        return ref_logps, *ches_scores(reference, examples, **kw)

    def sampled() -> tuple:  # the same for every checkpoint: computed once
        ref_samples = _sample(reference, prompts, tok, cfg)
        return ref_samples, sequence_logps(reference, prompts, ref_samples, **kw)

    forced, own = pool.submit(teacher_forced), pool.submit(sampled)
    (ref_logps, c, cn), (ref_samples, ref_lp) = forced.result(), own.result()
    whole = ood_threshold(ref_logps.chosen, ref_logps.len_chosen, per_token=False)
    ood_reference = float((ref_lp < whole).double().mean()) if prompts else math.nan
    return Inputs(
        reference,
        tok,
        examples,
        ref_logps,
        c,
        cn,
        (whole, ood_threshold(ref_logps.chosen, ref_logps.len_chosen, per_token=True)),
        prompts,
        ref_samples,
        ood_reference,
    )


def _sample(model: Any, prompts: list, tok: Any, cfg: Config) -> list[tuple[int, ...]]:
    """One sample per prompt. Policy and reference draw with one seed, so a checkpoint equal to
    its reference draws the very same samples (zero KL, equal OOD share, win rate ½)."""
    if not prompts:
        return []
    device = next(model.parameters()).device
    gen = torch.Generator(device=device).manual_seed(_seed(cfg.seed))
    return generate(
        model,
        prompts,
        max_new_tokens=cfg.max_new_tokens,
        eos_id=tok.eos_token_id,
        pad_id=tok.pad_token_id,
        generator=gen,
        temperature=cfg.temperature,
        batch_size=cfg.batch_size,
    ).responses


def _judge(cfg: Config, device: str, out: Path) -> Judge | None:
    if cfg.judge == "reward-model":
        return RewardModelJudge(cfg.reward_model, device=device, batch_size=cfg.batch_size)
    if cfg.judge == "api":
        base = cfg.api_base_url or os.environ.get("OPENAI_BASE_URL", "")
        if not base:
            raise ValueError("--judge api needs --api-base-url or $OPENAI_BASE_URL")
        return ApiJudge(
            base_url=base,
            api_key=cfg.api_key or os.environ.get("OPENAI_API_KEY", ""),
            model=cfg.api_model,
            seed=cfg.seed,
            cache=out / "judge_cache.jsonl",
        )
    return None


def _text(tok: Any, prompt: tuple[int, ...], response: tuple[int, ...]) -> tuple[str, str]:
    p = tok.decode(list(prompt))
    full = tok.decode([*prompt, *response])
    return p, full[len(p) :] if full.startswith(p) else tok.decode(list(response))


def diagnose_model(
    policy: Any, inputs: Inputs, cfg: Config, judge: Judge | None
) -> tuple[dict[str, Any], pd.DataFrame]:
    """One checkpoint's row of diagnose.csv and its rows of pairs.csv."""
    row, pairs = _teacher_forced(policy, inputs, cfg)
    row.update(_sampled(policy, inputs, cfg, judge))
    return row, pairs


def _teacher_forced(
    policy: Any, inputs: Inputs, cfg: Config
) -> tuple[dict[str, Any], pd.DataFrame]:
    """The teacher-forced half of ``diagnose_model``: the pairs' signals and pairs.csv's rows."""
    pad = inputs.tokenizer.pad_token_id
    pol = pair_logps(policy, inputs.examples, pad_id=pad, batch_size=cfg.batch_size)
    row: dict[str, Any] = teacher_forced(
        pol, inputs.ref_logps, objective=cfg.objective, beta=cfg.beta
    )
    dc = pol.chosen - inputs.ref_logps.chosen
    dr = pol.rejected - inputs.ref_logps.rejected
    row["ches_rank_corr"] = spearman(inputs.ches, -dc)
    row["ches_normalised_rank_corr"] = spearman(inputs.ches_normalised, -dc)
    row["n_pairs"] = len(inputs.examples)
    pairs = pd.DataFrame(
        {
            "row": [e.row for e in inputs.examples],
            "chosen_logp_change": dc.numpy(),
            "rejected_logp_change": dr.numpy(),
            "both_fall": ((dc < 0) & (dr < 0)).numpy(),
            "ches": inputs.ches.numpy(),
            "ches_normalised": inputs.ches_normalised.numpy(),
        }
    )
    return row, pairs


def _sampled(policy: Any, inputs: Inputs, cfg: Config, judge: Judge | None) -> dict[str, Any]:
    nan = math.nan
    out: dict[str, Any] = dict.fromkeys(
        [
            "kl_k1",
            "kl_k1_se",
            "kl_k3",
            "kl_k3_se",
            "length",
            "entropy",
            "ood_proxy",
            "ood_proxy_se",
            "ood_proxy_reference",
            "win_rate",
            "win_rate_se",
        ],
        nan,
    )
    out["n_samples"] = len(inputs.prompts)
    if not inputs.prompts:
        return out
    tok, bs = inputs.tokenizer, cfg.batch_size
    responses = _sample(policy, inputs.prompts, tok, cfg)
    kw = {"pad_id": tok.pad_token_id, "batch_size": bs}
    lp = sequence_logps(policy, inputs.prompts, responses, **kw)
    lr = sequence_logps(inputs.reference, inputs.prompts, responses, **kw)
    lengths = torch.tensor([len(r) for r in responses], dtype=torch.float64)
    out.update(kl_estimates(lp, lr))
    out["length"] = float(lengths.mean())
    out["entropy"] = float((-lp / lengths).mean())
    whole, per_token = inputs.thresholds
    out["ood_proxy"], out["ood_proxy_se"] = mean_se((lr < whole).double())
    out["ood_proxy_per_token"] = float((lr / lengths < per_token).double().mean())
    out["ood_proxy_reference"] = inputs.ood_reference
    if judge is not None:
        comparisons = [
            Comparison(*_text(tok, p, y), _text(tok, p, y0)[1], p, y, y0)
            for p, y, y0 in zip(inputs.prompts, responses, inputs.ref_samples, strict=True)
        ]
        with _JUDGE_LOCK:  # one judge, its cache and its model, for every --jobs thread
            out["win_rate"], out["win_rate_se"], _ = judge.judge(comparisons).win_rate()
    return out


def verdict(table: pd.DataFrame) -> str:
    """A short text verdict on the last checkpoint (by step) of ``diagnose.csv``."""
    last = table.sort_values("step", na_position="first").iloc[-1]
    head = f"checkpoint {last['checkpoint']} (step {last['step']}), {int(last['n_pairs'])} pairs:"
    lines = [head]
    dc, dr = last["chosen_logp_change"], last["rejected_logp_change"]
    if dc < 0:
        lines.append(
            f"- likelihood displacement: the chosen log-prob fell by {-dc:.3g} nats on average "
            f"({last['chosen_falls_share']:.0%} of pairs), and both fell in "
            f"{last['both_fall_share']:.0%}. Common under DPO (Razin et al. 2025) and not by "
            "itself a failure; the signals below say whether the policy left the data."
        )
    else:
        lines.append(f"- no displacement on average: chosen {dc:+.3g}, rejected {dr:+.3g} nats.")
    lines.append(f"- implicit reward margin {last['margin']:.3g}, accuracy {last['accuracy']:.0%}.")
    if not math.isnan(last["ches_rank_corr"]):
        lines.append(
            f"- CHES (on the reference) ranks the pairs' displacement with Spearman "
            f"{last['ches_rank_corr']:.2f} (normalised: {last['ches_normalised_rank_corr']:.2f})."
        )
    if not math.isnan(last["kl_k1"]):
        lo, hi = last["kl_k1"] - 1.96 * last["kl_k1_se"], last["kl_k1"] + 1.96 * last["kl_k1_se"]
        lines.append(
            f"- KL(π‖π_ref) ≈ {last['kl_k1']:.3g} nats (k1, 95% interval [{lo:.3g}, {hi:.3g}]; "
            f"k3 {last['kl_k3']:.3g} ± {1.96 * last['kl_k3_se']:.3g}) on {int(last['n_samples'])} "
            "samples."
        )
        gap = last["ood_proxy"] - last["ood_proxy_reference"]
        se = max(last["ood_proxy_se"], 1.0 / max(int(last["n_samples"]), 1))
        lines.append(
            f"- ood_proxy {last['ood_proxy']:.0%} of samples vs {last['ood_proxy_reference']:.0%} "
            "for the reference's: "
            + (
                "the policy's samples leave the data's support. (Within a run this share tracks "
                "the exact OOD mass; as a warning of the win-rate peak it did no better than "
                "knowing the configuration: judge the win rate.)"
                if gap > 2 * se
                else "no sign that the samples leave the data's support."
            )
        )
    lines.extend(_checkpoint_advice(table))
    lines.append("Which signals track the truth (exact, on the toy and the tree language): "
                 "docs/diagnose.md.")  # fmt: skip
    return "\n".join(lines) + "\n"


def _checkpoint_advice(table: pd.DataFrame) -> list[str]:
    """Which checkpoint to keep: the one with the best judged win rate (what worked on the exact
    truth, docs/diagnose.md), and whether the last one is significantly below it; without a
    judge, the advice to get one."""
    if "win_rate" not in table or table["win_rate"].isna().all():
        return [
            "- no judge: no teacher-forced signal here warns of the win-rate peak better than "
            "knowing the configuration (docs/diagnose.md). To choose the checkpoint, judge each "
            "one (--judge; about 1,024 --samples each found the best one in the exact checks, 64 "
            "did worse than keeping the last) and keep the best."
        ]
    judged = table.dropna(subset=["win_rate"]).sort_values("step", na_position="first")
    best, last = judged.loc[judged["win_rate"].idxmax()], judged.iloc[-1]
    lines = [
        f"- win rate against reference samples {last['win_rate']:.0%} "
        f"± {1.96 * last['win_rate_se']:.2g} (last checkpoint)."
    ]
    if best["checkpoint"] == last["checkpoint"]:
        lines.append("- the last checkpoint has the best judged win rate: keep it.")
        return lines
    gap = best["win_rate"] - last["win_rate"]
    se = math.hypot(best["win_rate_se"], last["win_rate_se"])
    lines.append(
        f"- keep {best['checkpoint']} (step {best['step']}): the best judged win rate, "
        f"{best['win_rate']:.0%}; the last is {gap:.2g} below it "
        + (
            f"(more than 2 standard errors, {2 * se:.2g}: OVER-OPTIMIZATION, the win rate fell)."
            if gap > 2 * se
            else f"(within 2 standard errors, {2 * se:.2g}: judge more samples to tell)."
        )
    )
    return lines


def _hidden_size(folder: Path) -> int:
    """A model folder's hidden size from its config.json (large when unknown: all threads)."""
    try:
        return int(json.loads((folder / "config.json").read_text(encoding="utf-8"))["hidden_size"])
    except (OSError, ValueError, KeyError, TypeError):
        return 1 << 15


_JUDGE_LOCK = threading.Lock()


@contextmanager
def _pool(jobs: int) -> Iterator[ThreadPoolExecutor]:
    """``jobs`` threads that start with this thread's intra-op thread count. On an error or
    Ctrl-C the tasks not started are dropped (the running ones still finish: a thread cannot be
    stopped)."""
    pool = ThreadPoolExecutor(
        jobs, initializer=torch.set_num_threads, initargs=(torch.get_num_threads(),)
    )
    try:
        yield pool
    except BaseException:
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown()


class _Policies:
    """Each checkpoint's model, loaded by the first of its two tasks (teacher-forced, sampled)
    and dropped after the second, so that at most a few are in memory at once."""

    def __init__(self, inputs: Inputs, device: str, dtype: Any) -> None:
        self.vocab = inputs.reference.get_input_embeddings().weight.shape[0]
        self.device, self.dtype = device, dtype
        self.lock = threading.Lock()
        self.slots: dict[Path, list] = {}  # path -> [lock, model or None, tasks done]

    def get(self, folder: Any) -> Any:
        with self.lock:
            slot = self.slots.setdefault(folder.path, [threading.Lock(), None, 0])
        with slot[0]:
            if slot[1] is None:
                slot[1] = self._load(folder)
            return slot[1]

    def release(self, folder: Any) -> None:
        with self.lock:
            slot = self.slots[folder.path]
            slot[2] += 1
            if slot[2] == 2:
                del self.slots[folder.path]

    def _load(self, folder: Any) -> Any:
        policy = load_model(folder.path, dtype=self.dtype).to(self.device).eval()
        if policy.get_input_embeddings().weight.shape[0] != self.vocab:
            raise ValueError(
                f"--checkpoints {folder.path} has {policy.get_input_embeddings().weight.shape[0]} "
                f"token embeddings, the reference {self.vocab}: not a fine-tune of it"
            )
        return policy


def _diagnose(
    pool: ThreadPoolExecutor, folders: list, inputs: Inputs, cfg: Config, judge: Judge | None,
    device: str, dtype: Any,
) -> tuple[list[dict[str, Any]], list[pd.DataFrame]]:  # fmt: skip
    """Every checkpoint's row of diagnose.csv and rows of pairs.csv, as two tasks on ``pool``
    (teacher-forced, sampled) per checkpoint, in checkpoint order."""
    policies = _Policies(inputs, device, dtype)

    def task(folder: Any, half: Any) -> Any:
        try:
            return half(policies.get(folder))
        finally:
            policies.release(folder)

    forced = partial(_teacher_forced, inputs=inputs, cfg=cfg)
    sampled = partial(_sampled, inputs=inputs, cfg=cfg, judge=judge)
    futures = [(pool.submit(task, f, forced), pool.submit(task, f, sampled)) for f in folders]
    rows, pair_frames = [], []
    for f, (a, b) in tqdm(zip(folders, futures, strict=True), total=len(folders),
                          desc="diagnose", disable=not cfg.progress):  # fmt: skip
        row, pairs = a.result()
        rows.append({"checkpoint": f.label, "step": f.step, "path": str(f.path), **row,
                     **b.result()})  # fmt: skip
        pair_frames.append(pairs.assign(checkpoint=f.label, step=f.step))
    return rows, pair_frames


def main(cfg: Config) -> Path:
    """Diagnose every checkpoint; return the path of ``diagnose.csv``."""
    _check(cfg)
    folders = model_folders(cfg.checkpoints)
    device = cfg.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = parse_dtype(cfg.dtype)
    out = Path(cfg.out)
    # Small models run on one intra-op thread: on a shared CPU two threads waiting on each other
    # make a small model's every op many times slower (treemdp.threads). The second core does
    # whole tasks instead: --jobs threads, each on one intra-op thread, take the reference's
    # two halves, then each checkpoint's two (teacher-forced, sampled). Every number is
    # computed as in a serial run, so none depends on --jobs.
    hidden = _hidden_size(folders[0].path)
    jobs = cfg.jobs if device == "cpu" else 1
    intra = 4 * hidden * hidden if device == "cpu" else 2**62
    with progress_bars_off(), threads_for(intra), _pool(jobs) as pool:
        inputs = _load_inputs(cfg, folders, device, dtype, pool)
        judge = _judge(cfg, device, out)
        rows, pair_frames = _diagnose(pool, folders, inputs, cfg, judge, device, dtype)
    out.mkdir(parents=True, exist_ok=True)
    table = pd.DataFrame(rows)
    write_table(out / "diagnose.csv", table)
    pairs = pd.concat(pair_frames, ignore_index=True)
    write_table(out / "pairs.csv", pairs[["checkpoint", "step", *pairs.columns[:-2]]])
    text = verdict(table)
    (out / "verdict.txt").write_text(text, encoding="utf-8")
    from figures.diagnose import plot

    plot(table, pairs, out / "diagnose.png")
    print(table[[c for c in SHOWN if c in table]].to_string(index=False, float_format="%.4g"))
    print(text, end="")
    print(
        f"done: {len(table)} checkpoints diagnosed in {out} (diagnose.csv, pairs.csv, "
        "diagnose.png, verdict.txt)"
    )
    return out / "diagnose.csv"


if __name__ == "__main__":
    run(Config, main, description=__doc__)
