"""Evaluate every checkpoint of an llm_train run: KL, lengths, held-out accuracy/loss, win rate.

    python experiments/llm_eval.py --run results/llm/dpo-beta0.1-tiny-tree-seed0

writes ``<run>/eval.csv`` (one row per checkpoint, step 0 = the reference; columns in
docs/llm.md), ``eval.json`` (the settings) and ``eval_reference.pt`` (the reference's samples),
and prints the table. Rerunning resumes: checkpoints already in ``eval.csv`` are skipped.

Judges: ``gold`` (tree language: the exact gold reward; rewards from the run's
``tree_problem.json``, else N(0, 1) drawn with ``--tree-reward-seed``), ``reward-model``
(``--reward-model`` name or folder), ``api`` (an OpenAI-compatible endpoint: ``--api-base-url``
or $OPENAI_BASE_URL, key ``--api-key`` or $OPENAI_API_KEY; answers cached in
``<run>/judge_cache.jsonl``), ``none``; ``auto`` picks gold for tree runs, reward-model when
``--reward-model`` is given, else none.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from llm.checkpoint import checkpoint_step
from llm.data import TruncationConfig, load_tokenizer, read_jsonl, read_tldr, tokenize_rows
from llm.eval_run import evaluate_run
from llm.evaluate import EvalSettings, EvalTask, TreeTask
from llm.judges import TLDR_TEMPLATE, ApiJudge, GoldJudge, Judge, RewardModelJudge
from llm.model import PYTHIA_SHAPES, parse_dtype
from llm.tree_language import TreeLanguage
from treemdp import objectives
from treemdp.data import normal_rewards
from treemdp.runs import read_config, run_lock
from treemdp.runs.cli import SEED_MAX, arg, check_device, run
from treemdp.runs.eval_table import EVAL_TABLE
from treemdp.tree import Tree

SHOWN = [
    "checkpoint", "fraction_of_epoch", "kl_reverse", "kl_reverse_se", "kl_forward",
    "length_mean", "reward_accuracy", "loss", "win_rate", "win_rate_se",
]  # fmt: skip


@dataclass(frozen=True)
class Config:
    """Evaluation of one training run."""

    run: str = arg("", "the run folder written by experiments/llm_train.py (required)")
    samples: int = arg(256, "held-out prompts: one policy and one reference sample each", minimum=1)
    max_new_tokens: int = arg(64, "sample length limit (tree runs stop at a leaf)", minimum=1)
    temperature: float = arg(1.0, "sampling temperature", exclusive_minimum=0)
    batch_size: int = arg(64, "sequences per forward (generation and scoring)", minimum=1)
    seed: int = arg(0, "sampling seed (and the API judge's A/B order)", minimum=0, maximum=SEED_MAX)
    baseline: str = arg(
        "reference",
        "win-rate opponent: a reference sample, or the held-out pair's chosen response",
        choices=("reference", "chosen"),
    )
    judge: str = arg(
        "auto",
        "gold, reward-model, api, none; auto: gold (tree), reward-model (if given), else none",
        choices=("auto", "gold", "reward-model", "api", "none"),
    )
    reward_model: str = arg("", "reward model (hub name or folder) for --judge reward-model")
    api_base_url: str = arg("", "OpenAI-compatible base URL; empty: $OPENAI_BASE_URL")
    api_key: str = arg("", "API key; empty: $OPENAI_API_KEY (never written anywhere)")
    api_model: str = arg("gpt-4-turbo-2024-04-09", "judge model name")
    api_template: str = arg(
        "", "file with the judge prompt ({post}, {summary_a}, {summary_b}); empty: TL;DR prompt"
    )
    api_concurrency: int = arg(8, "API requests in flight at most", minimum=1)
    api_retries: int = arg(5, "retries of a failed request (exponential backoff)", minimum=0)
    api_backoff: float = arg(1.0, "first retry delay in seconds", minimum=0)
    api_timeout: float = arg(60.0, "seconds per request", exclusive_minimum=0)
    api_cache: str = arg("", "answer cache (JSONL); empty: <run>/judge_cache.jsonl")
    eval_data: str = arg("", "held-out pairs as JSONL (prompt/chosen/rejected) for text runs")
    tldr_split: str = arg("validation", "held-out split for --source tldr runs")
    tree_reward_seed: int = arg(
        0,
        "gold rewards N(0,1) for tree runs without tree_problem.json",
        minimum=0,
        maximum=SEED_MAX,
    )
    device: str = arg("auto", "cpu, cuda, or auto")
    dtype: str = arg("fp32", "model dtype: fp32, bf16 or fp16", choices=("fp32", "bf16", "fp16"))
    force: bool = arg(False, "start over even if eval.csv has other settings")
    progress: bool = arg(True, "show a progress bar")


def tree_task(run_config: dict[str, Any], run_dir: Path, reward_seed: int) -> TreeTask:
    """The run's tree problem: ``tree_problem.json``, else the CLI's tree, pairs and N(0, 1)
    gold rewards drawn with ``reward_seed``."""
    saved = TreeTask.read(run_dir)
    if saved is not None:
        return saved
    tree = Tree.complete(run_config["tree_branching"], run_config["tree_depth"])
    pairs = [p.split(">") for p in run_config["tree_pairs"].split(",") if p.strip()]
    rewards = normal_rewards(tree, torch.Generator().manual_seed(reward_seed))
    return TreeTask(
        tree,
        rewards,
        torch.tensor([int(c) for c, _ in pairs]),
        torch.tensor([int(r) for _, r in pairs]),
    )


def build_task(cfg: Config, run_config: dict[str, Any], run_dir: Path) -> EvalTask:
    """Prompts, held-out pairs and objective of the evaluation."""
    name = run_config.get("objective", "dpo")
    entry = objectives.get(name)
    hyper = {"alpha": run_config.get("alpha", 0.01)} if "alpha" in entry.hyper else {}
    common = {"objective": name, "beta": float(run_config.get("beta", 0.1)), "hyper": hyper}
    if run_config.get("source") == "tree":
        tt = tree_task(run_config, run_dir, cfg.tree_reward_seed)
        language = TreeLanguage(tt.tree)
        examples, _ = language.examples(tt.chosen, tt.rejected, on_bad_row="skip")
        tok = language.tokenizer()
        return EvalTask(
            language.prompts(cfg.samples), examples, tok, None, tok.pad_token_id, tree=tt, **common
        )
    model = run_config.get("model", "")
    tok = load_tokenizer(
        run_config.get("tokenizer") or ("byte" if model in PYTHIA_SHAPES else model)
    )
    if cfg.eval_data:
        rows = read_jsonl(cfg.eval_data)
    elif run_config.get("source") == "tldr":
        rows = read_tldr(
            run_config["tldr_dataset"],
            run_config.get("tldr_config") or None,
            cfg.tldr_split,
            limit=cfg.samples,
        )
    else:
        raise ValueError("--eval-data must name a JSONL file of held-out pairs for a text run")
    trunc = TruncationConfig(
        run_config.get("max_length", 512),
        run_config.get("max_prompt_length", 256),
        run_config.get("truncation_mode", "keep_start"),
    )
    examples, skipped = tokenize_rows(rows, tok, trunc, on_bad_row="skip")
    if skipped:
        print(f"held-out data: skipped {len(skipped)} bad rows", file=sys.stderr)
    examples = examples[: cfg.samples]
    if not examples:
        raise ValueError("no usable held-out rows")
    prompts = [e.prompt for e in examples]
    return EvalTask(prompts, examples, tok, tok.eos_token_id, tok.pad_token_id, **common)


def build_judge(cfg: Config, task: EvalTask, run_dir: Path, device: str) -> Judge | None:
    """The judge named by ``--judge``."""
    kind = cfg.judge
    if kind == "auto":
        kind = "gold" if task.tree else ("reward-model" if cfg.reward_model else "none")
    if kind == "none":
        return None
    if kind == "gold":
        if task.tree is None:
            raise ValueError("--judge gold needs a tree-language run (the gold reward is exact)")
        return GoldJudge(task.tree.tree, task.tree.rewards)
    if kind == "reward-model":
        if not cfg.reward_model:
            raise ValueError("--judge reward-model needs --reward-model (hub name or folder)")
        return RewardModelJudge(cfg.reward_model, device=device, batch_size=cfg.batch_size)
    base = cfg.api_base_url or os.environ.get("OPENAI_BASE_URL", "")
    if not base:
        raise ValueError("--judge api needs --api-base-url or $OPENAI_BASE_URL")
    template = TLDR_TEMPLATE
    if cfg.api_template:
        path = Path(cfg.api_template)
        if not path.is_file():
            raise ValueError(f"--api-template {path} does not exist")
        template = path.read_text(encoding="utf-8")
    return ApiJudge(
        base_url=base,
        api_key=cfg.api_key or os.environ.get("OPENAI_API_KEY", ""),
        model=cfg.api_model,
        template=template,
        seed=cfg.seed,
        concurrency=cfg.api_concurrency,
        retries=cfg.api_retries,
        backoff=cfg.api_backoff,
        timeout=cfg.api_timeout,
        cache=Path(cfg.api_cache) if cfg.api_cache else run_dir / "judge_cache.jsonl",
    )


def check_run_folder(run_dir: Path) -> None:
    """ValueError (one line, before anything is written) when ``run_dir`` is a model folder
    rather than a run folder of llm_train: a checkpoint ``step-N`` of a run (evaluate the run),
    or a plain Hugging Face folder (``save_pretrained``, a trainer's ``checkpoint-N``), whose
    ``config.json`` is the model's and names no reference: experiments/diagnose.py takes those."""
    try:
        config = json.loads((run_dir / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return  # missing or corrupt: read_config says so in its own words
    if not isinstance(config, dict) or not ({"model_type", "architectures"} & config.keys()):
        return
    if (run_dir.parent / "config.json").is_file() and _is_checkpoint_name(run_dir.name):
        raise ValueError(
            f"--run {run_dir} is checkpoint {run_dir.name} of a run: pass --run {run_dir.parent} "
            "(every checkpoint of the run is evaluated)"
        )
    raise ValueError(
        f"--run {run_dir} is a model folder (save_pretrained / a trainer checkpoint), not a run "
        "folder of llm_train: evaluate it with experiments/diagnose.py --checkpoints "
        f"{run_dir} --reference <reference model folder or name> --data <pairs.jsonl>"
    )


def _is_checkpoint_name(name: str) -> bool:
    try:
        checkpoint_step(name)
    except ValueError:
        return False
    return True


def main(cfg: Config) -> Path:
    """Evaluate the run; return the path of its ``eval.csv``."""
    if not cfg.run:
        raise ValueError("--run must name a run folder of experiments/llm_train.py")
    run_dir = Path(cfg.run)
    if not run_dir.is_dir():
        raise ValueError(f"--run {run_dir} is not a folder")
    check_run_folder(run_dir)
    if cfg.device != "auto":
        check_device(cfg.device)  # before the lock: a typo writes nothing
    with run_lock(run_dir):  # refuses while llm_train or another evaluation writes this run
        return _evaluate(cfg, run_dir)


def _evaluate(cfg: Config, run_dir: Path) -> Path:
    run_config = read_config(run_dir)
    device = cfg.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    else:
        device = str(check_device(device))
    settings = EvalSettings(
        samples=cfg.samples,
        max_new_tokens=cfg.max_new_tokens,
        temperature=cfg.temperature,
        batch_size=cfg.batch_size,
        seed=cfg.seed,
        baseline=cfg.baseline,
    )
    try:
        task = build_task(cfg, run_config, run_dir)
        judge = build_judge(cfg, task, run_dir, device)
    except (ModuleNotFoundError, OSError) as err:
        raise ValueError(str(err).splitlines()[0]) from None
    frame = evaluate_run(
        run_dir,
        task,
        settings,
        judge,
        device=device,
        dtype=parse_dtype(cfg.dtype),
        force=cfg.force,
        progress=cfg.progress,
    )
    print(frame[[c for c in SHOWN if c in frame]].to_string(index=False, float_format="%.4g"))
    if "judge" in frame and len(frame):
        last = frame.iloc[-1]
        print(
            f"judge {last['judge']}: {int(last['judged'])} judged, ties {last.get('ties', 0)}, "
            f"unparsable {last.get('unparsable', 0)}, errors {last.get('judge_errors', 0)} "
            "(last checkpoint)"
        )
    print(f"done: {len(frame)} checkpoints in {run_dir / EVAL_TABLE}")
    return run_dir / EVAL_TABLE


if __name__ == "__main__":
    run(Config, main, description=__doc__)
