"""Train a Pythia-shaped (GPT-NeoX) language model with SFT or any treemdp objective.

Examples (CPU, random tiny model, the toy's tree problem as a language)::

    python experiments/llm_train.py --stage daa --objective dpo --beta 0.1 --model tiny \\
        --source tree --tree-pairs 0>1,5>7 --batch-size 4 --micro-batch-size 2 --lr 1e-3 \\
        --warmup-steps 0 --epochs 8 --reference-dtype fp32

    torchrun --nproc-per-node 2 experiments/llm_train.py ...   # sharded (FSDP2; gloo on CPU)

On GPUs with real weights, the paper's run is ``--model <SFT folder> --source tldr`` with the
defaults (RMSProp, lr 5e-7, 150 warm-up steps, batch 128, clip 10, one epoch, fp16 reference).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from llm.checkpoint import LATEST, checkpoint_folders
from llm.data import (
    BadRowError,
    TruncationConfig,
    load_tokenizer,
    read_jsonl,
    read_tldr,
    tokenize_rows,
)
from llm.losses import DAALoss, SFTLoss, precompute_reference
from llm.model import PYTHIA_SHAPES, load_model, load_policy_and_reference, parse_dtype
from llm.packing import PACKINGS
from llm.sampling import sample_sft_examples
from llm.train import LOG, TrainConfig, train
from llm.tree_language import TreeLanguage
from treemdp import objectives
from treemdp.runs import atomic_write_text, number_name, run_lock
from treemdp.runs.cli import SEED_MAX, arg, check_device, run
from treemdp.runs.eval_table import EVAL_TABLE
from treemdp.tree import Tree


@dataclass(frozen=True)
class Config:
    """One llm training run (SFT or DAA)."""

    stage: str = arg(
        "daa",
        "sft (NLL of the chosen / sampled responses) or daa (a registry objective)",
        choices=("sft", "daa"),
    )
    objective: str = arg(
        "dpo",
        "registry objective for --stage daa (treemdp.objectives.names())",
        choices=tuple(objectives.names()),
    )
    beta: float = arg(0.1, "β of the objective", exclusive_minimum=0)
    alpha: float = arg(0.01, "length weight α, used only by objectives that take it (rdpo)")
    model: str = arg("tiny", "Pythia shape (random weights), hub name, or local folder")
    reference: str = arg(
        "", "reference model (hub name or folder); empty: a frozen copy of --model"
    )
    policy_dtype: str = arg(
        "fp32", "dtype of the trained policy: fp32, bf16 or fp16", choices=("fp32", "bf16", "fp16")
    )
    reference_dtype: str = arg(
        "fp16",
        "dtype of the frozen reference: fp16, bf16 or fp32",
        choices=("fp16", "bf16", "fp32"),
    )
    fsdp: str = arg(
        "auto",
        "shard policy and reference with FSDP2: auto (when torchrun starts several processes), "
        "on (also on one process), off (full replicas, gradients all-reduced)",
        choices=("auto", "on", "off"),
    )
    mixed_precision: bool = arg(
        False, "with FSDP: bf16 compute on fp32 master weights, fp32 gradient reductions"
    )
    device: str = arg(
        "auto", "cpu, cuda, or auto (cuda when available; cuda:LOCAL_RANK under torchrun)"
    )
    seed: int = arg(
        0,
        "model initialisation (named shapes), data order and sampling",
        minimum=0,
        maximum=SEED_MAX,
    )
    source: str = arg(
        "tree",
        "preference data: tree (treemdp problem), jsonl (local file), tldr (hub)",
        choices=("tree", "jsonl", "tldr"),
    )
    data: str = arg("", "JSONL file with prompt/chosen/rejected (for --source jsonl)")
    tldr_dataset: str = arg("openai/summarize_from_feedback", "hub dataset for --source tldr")
    tldr_config: str = arg("comparisons", "its config name ('' for none)")
    split: str = arg("train", "its split")
    limit: int = arg(0, "use only the first N rows (0: all)", minimum=0)
    tokenizer: str = arg(
        "", "hub name, folder or 'byte'; empty: the model's (byte for named shapes)"
    )
    tree_branching: int = arg(3, "actions per state of the tree language", minimum=2)
    tree_depth: int = arg(
        3, "depth of the complete tree (responses have this many tokens)", minimum=1
    )
    tree_pairs: str = arg(
        "0>1", "preference pairs as chosen>rejected response indices, comma-separated"
    )
    max_length: int = arg(512, "max prompt+response tokens (DPO code truncation)", minimum=1)
    max_prompt_length: int = arg(256, "prompt tokens kept when truncating", minimum=1)
    truncation_mode: str = arg(
        "keep_start",
        "keep_start or keep_end of a truncated prompt",
        choices=("keep_start", "keep_end"),
    )
    on_bad_row: str = arg(
        "error",
        "error (stop at the first bad row) or skip (drop and count)",
        choices=("error", "skip"),
    )
    sft_source: str = arg(
        "chosen",
        "SFT targets: chosen responses, or samples of --sample-model",
        choices=("chosen", "samples"),
    )
    sample_model: str = arg("", "policy whose samples are the SFT targets (--sft-source samples)")
    sample_max_new_tokens: int = arg(64, "sample length limit", minimum=1)
    precompute_reference: bool = arg(
        False, "compute reference log-probs once for the whole dataset"
    )
    packing: str = arg(
        "off",
        "padding-free forwards: off; rows (each row's real tokens end to end, varlen "
        "attention); pairs (also one prompt per pair, --stage daa only). Checked against the "
        "padded forward on the first micro-batch; refused if they differ",
        choices=PACKINGS,
    )
    lr: float = arg(5e-7, "RMSProp learning rate (paper preset)", exclusive_minimum=0)
    warmup_steps: int = arg(150, "linear warm-up steps", minimum=0)
    batch_size: int = arg(128, "pairs per optimizer step, over all processes", minimum=1)
    micro_batch_size: int = arg(
        8, "pairs per forward per process (gradient accumulation)", minimum=1
    )
    max_grad_norm: float = arg(10.0, "gradient-norm clip", exclusive_minimum=0)
    epochs: float = arg(1.0, "passes over the data", exclusive_minimum=0)
    checkpoint_every: int = arg(19_968, "examples between checkpoints (0: final only)", minimum=0)
    log_every: int = arg(1, "steps between log rows", minimum=1)
    out: str = arg("results/llm", "parent folder of the run folder")
    run_name: str = arg("", "run folder name; empty: derived from the config")
    resume: bool = arg(False, "continue from the run folder's latest checkpoint")
    progress: bool = arg(True, "show progress bars")


NOT_IN_IDENTITY = ("out", "run_name", "resume", "progress", "device", "log_every", "packing")
"""Fields that do not change what a run computes (device and packing change only float rounding):
the rest (and the data) must match to share a run folder."""


# ---------------------------------------------------------------------------------- setup
def run_dir(cfg: Config) -> Path:
    """The run folder: ``out/run_name``, or a name derived from the config. ValueError when
    ``run_name`` would leave ``out`` (``..``, an absolute path)."""
    if cfg.run_name:
        out = Path(cfg.out)
        folder = out / cfg.run_name
        inside = os.path.normpath(folder).startswith(os.path.normpath(out) + os.sep)
        if Path(cfg.run_name).is_absolute() or ".." in Path(cfg.run_name).parts or not inside:
            raise ValueError(
                f"--run-name {cfg.run_name!r} leaves --out {cfg.out}; give a folder name "
                "(no '..', not absolute)"
            )
        return folder
    model = Path(cfg.model).name if cfg.model not in PYTHIA_SHAPES else cfg.model
    daa = f"{cfg.objective}-beta{number_name(cfg.beta)}"
    what = f"sft-{cfg.sft_source}" if cfg.stage == "sft" else daa
    return Path(cfg.out) / f"{what}-{model}-{cfg.source}-seed{cfg.seed}"


def parse_pairs(text: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``"0>1,5>7"`` → chosen (0, 5), rejected (1, 7). Shapes (P,)."""
    try:
        pairs = [tuple(int(x) for x in p.split(">")) for p in text.split(",") if p.strip()]
        if not pairs or any(len(p) != 2 for p in pairs):
            raise ValueError
    except ValueError:
        raise ValueError(
            f"tree_pairs must look like '0>1,5>7' (chosen>rejected response indices); got {text!r}"
        ) from None
    return torch.tensor([p[0] for p in pairs]), torch.tensor([p[1] for p in pairs])


def _device(cfg: Config) -> torch.device:
    """The training device (``--device`` checked); CUDA without an index: ``with_local_rank``."""
    if cfg.device == "auto" and not torch.cuda.is_available():
        return torch.device("cpu")
    device = torch.device("cuda") if cfg.device == "auto" else check_device(cfg.device)
    return with_local_rank(device)


def with_local_rank(device: torch.device) -> torch.device:
    """A CUDA device without an index is this process's LOCAL_RANK GPU (NCCL and
    ``torch.cuda.set_device`` need the index)."""
    if device.type == "cuda" and device.index is None:
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return device


def data_fingerprint(examples: list) -> str:
    """sha256 of the tokenized examples (prompt, chosen, rejected token ids, in order): two runs
    on other data never share a run folder, even with the same flags and pair count."""
    digest = hashlib.sha256()
    for e in examples:
        digest.update(json.dumps([list(e.prompt), list(e.chosen), list(e.rejected)]).encode())
    return digest.hexdigest()


def run_identity(cfg: Config, examples: list) -> dict[str, Any]:
    """What a run folder belongs to: every config field that changes the results, and the data."""
    fields = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in NOT_IN_IDENTITY}
    return {**fields, "data_fingerprint": data_fingerprint(examples)}


def check_run_folder(out_dir: Path, identity: dict[str, Any]) -> None:
    """Refuse (ValueError, one line) a run folder written for another configuration or other
    data: a folder belongs to exactly one run, so its checkpoints, log and evaluation never mix."""
    path = out_dir / "config.json"
    trained = bool(checkpoint_folders(out_dir)) or any(
        (out_dir / name).exists() for name in (LATEST, LOG, EVAL_TABLE)
    )
    if not trained:  # nothing that could mix (e.g. a run killed before its first step)
        return
    if not path.is_file():
        raise ValueError(
            f"{out_dir} holds a run but no config.json, so it cannot be matched to this "
            "configuration; use another --run-name or --out (or delete the folder)"
        )
    try:
        old = json.loads(path.read_text(encoding="utf-8"))
        data = json.loads((out_dir / "data.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ValueError(
            f"{out_dir} is not a readable llm_train run folder ({e.__class__.__name__} reading "
            "config.json or data.json); use another --run-name or --out (or delete the folder)"
        ) from None
    old = {k: v for k, v in old.items() if k not in NOT_IN_IDENTITY}
    old["data_fingerprint"] = data.get("fingerprint")
    differ = [k for k in identity if old.get(k, identity[k]) != identity[k]]
    differ += [k for k in old if k not in identity]
    if old.get("data_fingerprint") is None:
        differ.append("data_fingerprint")  # written before fingerprints: cannot be matched
    if differ:
        data = (
            "data (another file, rows or tokenizer)"
            if old.get("data_fingerprint") is not None
            else "data (no fingerprint in its data.json: written by an older version)"
        )
        shown = ", ".join(
            data
            if k == "data_fingerprint"
            else f"--{k.replace('_', '-')} {old.get(k)!r} there, {identity.get(k)!r} now"
            for k in dict.fromkeys(differ)
        )
        raise ValueError(
            f"{out_dir} belongs to another run ({shown}); use another --run-name or --out, "
            f"the flags in {path}, or delete the folder to start it over"
        )


def load_data(cfg: Config) -> tuple[list, Any, list[str]]:
    """``(examples, tokenizer, skipped-row messages)`` for the configured source."""
    if cfg.source == "tree":
        language = TreeLanguage(Tree.complete(cfg.tree_branching, cfg.tree_depth))
        chosen, rejected = parse_pairs(cfg.tree_pairs)
        examples, skipped = language.examples(chosen, rejected, on_bad_row=cfg.on_bad_row)
        return examples, language.tokenizer(), skipped
    tok_name = cfg.tokenizer or ("byte" if cfg.model in PYTHIA_SHAPES else cfg.model)
    tokenizer = load_tokenizer(tok_name)
    if cfg.source == "jsonl":
        if not cfg.data:
            raise ValueError("--data must name a JSONL file for --source jsonl")
        rows = read_jsonl(cfg.data)
    else:
        rows = read_tldr(
            cfg.tldr_dataset, cfg.tldr_config or None, cfg.split, limit=cfg.limit or None
        )
    if cfg.limit:
        rows = rows[: cfg.limit]
    trunc = TruncationConfig(cfg.max_length, cfg.max_prompt_length, cfg.truncation_mode)
    try:
        examples, skipped = tokenize_rows(rows, tokenizer, trunc, on_bad_row=cfg.on_bad_row)
    except BadRowError as e:  # name the file the row is in
        where = cfg.data if cfg.source == "jsonl" else f"{cfg.tldr_dataset} ({cfg.split})"
        raise ValueError(f"{where}: {e} (--on-bad-row skip drops bad rows)") from None
    return examples, tokenizer, skipped


def check(cfg: Config) -> None:
    """ValueError naming the flag for flags that cannot go together; called before anything is
    written (the run folder, its lock, config.json and data.json)."""
    if cfg.stage == "sft" and cfg.packing == "pairs":
        raise ValueError(
            "--packing pairs shares one prompt between a pair's two responses, so it needs "
            "--stage daa; use --packing rows (or off) with --stage sft"
        )
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if cfg.batch_size % (cfg.micro_batch_size * world):
        processes = f" × {world} processes" if world > 1 else ""
        raise ValueError(
            f"--batch-size {cfg.batch_size} must be a multiple of --micro-batch-size "
            f"{cfg.micro_batch_size}{processes} (a step is whole micro-batches on every process)"
        )


def main(cfg: Config) -> Path:
    """Run one training stage; returns the final checkpoint folder.

    The run folder is locked while it is written (``treemdp.runs.run_lock``; under torchrun
    rank 0, the only writer, holds it): a second process on the same folder refuses.

    Raises ValueError (exit 2 with one line from the command line) for a user mistake: bad flags,
    bad rows, a missing model folder or an uninstalled optional package, a busy run folder.
    """
    check(cfg)
    if int(os.environ.get("RANK", "0")) != 0:
        return _main(cfg)
    with run_lock(run_dir(cfg)):
        return _main(cfg)


def _main(cfg: Config) -> Path:
    fsdp, device, rank = _start_processes(cfg)
    finished = False
    try:
        final, out_dir = _run_stage(cfg, fsdp, device, rank)
        finished = True
    finally:
        _end_processes(finished=finished)
    if rank == 0:
        print(f"done: final checkpoint {final}; log {out_dir / 'log.csv'}", flush=True)
    return final


def _end_processes(*, finished: bool) -> None:
    """Tear the process group down (if one runs): after a barrier when every rank finished, so
    no rank closes its connections while another still talks on them (a gloo rank once aborted
    after ``done:`` with "terminate called without an active exception"); at once after an
    error, which the other ranks may never reach a barrier after. The models, sharded on the
    group, are freed before (``_run_stage`` holds them)."""
    sys.stdout.flush()
    sys.stderr.flush()
    if not dist.is_initialized():
        return
    if finished:
        dist.barrier()
    dist.destroy_process_group()


def _run_stage(cfg: Config, fsdp: bool, device: torch.device, rank: int) -> tuple[Path, Path]:
    """Load the data and models, train; the final checkpoint and the run folder."""
    try:
        examples, tokenizer, skipped = load_data(cfg)
        if not examples:
            raise ValueError("no usable rows: every row was bad (see --on-bad-row)")
        policy, reference = _models(cfg, vocab_size=len(tokenizer))
    except (ModuleNotFoundError, OSError) as err:
        raise ValueError(str(err).splitlines()[0]) from None
    out_dir = run_dir(cfg)
    identity = run_identity(cfg, examples)
    if rank == 0:
        _record_run(cfg, out_dir, identity, len(examples), skipped)
    policy.to(device)
    if fsdp:
        from llm.fsdp import shard_model

        shard_model(policy, mixed_precision=cfg.mixed_precision)
    pad_id = tokenizer.pad_token_id
    if cfg.stage == "sft":
        del reference
        examples = _sft_examples(cfg, examples, tokenizer, device)
        step_loss = SFTLoss(packing=cfg.packing)
    else:
        step_loss = _daa_loss(cfg, reference, examples, pad_id, device, fsdp)
    run_info = {"config": dataclasses.asdict(cfg), "skipped_rows": len(skipped),
                "identity": identity}  # fmt: skip
    final = train(
        policy, examples, step_loss, _train_config(cfg), out_dir, pad_id=pad_id,
        tokenizer=tokenizer, resume=cfg.resume, run_info=run_info, progress=cfg.progress,
    )  # fmt: skip
    return final, out_dir


def _start_processes(cfg: Config) -> tuple[bool, torch.device, int]:
    """Whether the policy is sharded, the device, and this process's rank (process group started
    under torchrun or with --fsdp on)."""
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    fsdp = cfg.fsdp == "on" or (cfg.fsdp == "auto" and distributed)
    if cfg.mixed_precision and not fsdp:
        raise ValueError("--mixed-precision needs FSDP: add --fsdp on (or run under torchrun)")
    device = _device(cfg)
    if distributed or fsdp:
        from llm.fsdp import init_distributed  # imported when used: it is slow

        init_distributed(device)
    return fsdp, device, dist.get_rank() if dist.is_initialized() else 0


def _train_config(cfg: Config) -> TrainConfig:
    return TrainConfig(
        lr=cfg.lr, warmup_steps=cfg.warmup_steps, batch_size=cfg.batch_size,
        micro_batch_size=cfg.micro_batch_size, max_grad_norm=cfg.max_grad_norm,
        epochs=cfg.epochs, checkpoint_every=cfg.checkpoint_every, seed=cfg.seed,
        log_every=cfg.log_every,
    )  # fmt: skip


def _models(cfg: Config, *, vocab_size: int) -> tuple[Any, Any]:
    """The policy and the reference (--reference: another model) in their dtypes."""
    policy, reference = load_policy_and_reference(
        cfg.model,
        policy_dtype=parse_dtype(cfg.policy_dtype),
        reference_dtype=parse_dtype(cfg.reference_dtype),
        seed=cfg.seed,
        vocab_size=vocab_size,
    )
    if cfg.reference:
        reference = load_model(cfg.reference, dtype=parse_dtype(cfg.reference_dtype))
        reference.requires_grad_(False)
    if cfg.stage == "sft" and cfg.sft_source == "samples" and not cfg.sample_model:
        raise ValueError("--sample-model must name a model for --sft-source samples")
    return policy, reference


def _record_run(
    cfg: Config, out_dir: Path, identity: dict[str, Any], n_pairs: int, skipped: list[str]
) -> None:
    """Check the run folder is this run's, say what the data gave, write data.json and
    config.json (rank 0 only)."""
    check_run_folder(out_dir, identity)
    print(f"data: {n_pairs} pairs; skipped {len(skipped)} bad rows", file=sys.stderr)
    for msg in skipped[:10]:
        print(f"  skipped {msg}", file=sys.stderr)
    out_dir.mkdir(parents=True, exist_ok=True)
    report = {"pairs": n_pairs, "skipped": len(skipped), "skipped_rows": skipped,
              "fingerprint": identity["data_fingerprint"]}  # fmt: skip
    # data.json first: a config.json never exists without the fingerprint it was run with
    atomic_write_text(out_dir / "data.json", json.dumps(report, indent=2) + "\n")
    atomic_write_text(out_dir / "config.json", json.dumps(dataclasses.asdict(cfg), indent=2) + "\n")


def _sft_examples(cfg: Config, examples: list, tokenizer: Any, device: torch.device) -> list:
    """The SFT data: the chosen responses, or (--sft-source samples) samples of --sample-model."""
    if cfg.sft_source != "samples":
        return examples
    sampler = load_model(cfg.sample_model).to(device)
    return sample_sft_examples(
        sampler,
        examples,
        max_new_tokens=cfg.sample_max_new_tokens,
        eos_id=tokenizer.eos_token_id if cfg.source != "tree" else None,
        pad_id=tokenizer.pad_token_id,
        seed=cfg.seed,
    )


def _daa_loss(
    cfg: Config, reference: Any, examples: list, pad_id: int, device: torch.device, fsdp: bool
) -> DAALoss:
    """The DAA step loss: the bound objective with the reference model, or with its log-probs
    of the whole dataset computed once (--precompute-reference)."""
    entry = objectives.get(cfg.objective)
    hyper = {"alpha": cfg.alpha} if "alpha" in entry.hyper else {}
    reference.to(device)
    if fsdp:
        from llm.fsdp import shard_model

        shard_model(reference)
    table = None
    if cfg.precompute_reference and entry.needs_reference:
        table = precompute_reference(
            reference,
            examples,
            micro_batch_size=cfg.micro_batch_size,
            pad_id=pad_id,
            packing=cfg.packing,
        )
        reference = None
    return DAALoss(cfg.objective, cfg.beta, hyper=hyper, reference=reference, ref_table=table,
                   packing=cfg.packing)  # fmt: skip


if __name__ == "__main__":
    run(Config, main, description=__doc__)
