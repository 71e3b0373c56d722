"""Throughput of one DPO training step: llm.train against TRL's DPOTrainer, same model/data/batch.

For each model shape (``tiny``; ``14m`` = Pythia-14m, vocab 50,304; ``160m`` … ``6.9b`` on a GPU),
fp32 on CPU or ``--dtype bf16`` on ``--device cuda``:

* the same random GPT-NeoX policy (a reference copy moved by small noise, so the first loss is not
  trivially log 2) and the same frozen reference, both in ``--dtype`` with ``--attn`` attention,
  the reference computed on the fly each step in both; TRL with bf16 autocast when the weights
  are bf16 (its ``bf16`` setting), without gradient checkpointing (TRL's default is on; ours
  never recomputes; ``--trl-gradient-checkpointing`` for TRL's default);
* the same data: B pairs of random lowercase text under the byte tokenizer (one token per
  character, so both pipelines see identical token ids), prompt and response lengths drawn
  TL;DR-like (prompts 64–256 tokens, responses 8–48 tokens + EOS);
* the same batch: all B pairs in every step, RMSProp, constant lr, clip 10, β = 0.1.

Reported per implementation: median seconds per step after one warm-up step, pairs/s, tokens/s
(non-padding tokens of the 2B chosen/rejected sequences), the first step's loss, and the share of
the device's measured matmul rate reached, counting ~6·params·tokens FLOPs for the policy
(forward + backward) and 2·params·tokens for the reference forward (with ``--peak-tflops``: MFU,
the same count against the datasheet peak); and the same share counting only the FLOPs a step
needs (blocks on all tokens, output projection on response tokens only). With TRL: each
llm.train row's speed-up over it (``speedup_vs_trl``) and first-loss difference.

TRL and datasets are not dependencies of the project (``scripts/trl_wheels.sh`` installs pinned
versions; ``--no-trl`` runs without them).

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/llm_dpo_step.py --shapes tiny,14m
    python benchmarks/llm_dpo_step.py --device cuda --dtype bf16 --shapes 1b --batch 32 \
        --peak-tflops 989     # one H200, TRL side by side
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import gc
import importlib.util
import json
import math
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

from llm.data import Example, TruncationConfig, byte_tokenizer, tokenize_rows
from llm.losses import DAALoss
from llm.model import build_model, compile_blocks, n_params
from llm.train import TrainConfig, data_stream, read_log, train


def make_rows(n: int, seed: int, prompt: tuple[int, int] = (64, 256)) -> list[dict[str, str]]:
    g = torch.Generator().manual_seed(seed)
    letters = "abcdefghijklmnopqrstuvwxyz "

    def text(lo: int, hi: int) -> str:
        k = int(torch.randint(lo, hi + 1, (1,), generator=g))
        return "".join(letters[i] for i in torch.randint(0, 27, (k,), generator=g).tolist())

    return [
        {"prompt": text(*prompt), "chosen": text(8, 48), "rejected": text(8, 48)} for _ in range(n)
    ]


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def matmul_rate(
    n: int = 1024, repeats: int = 10, device: str = "cpu", dtype: torch.dtype = torch.float32
) -> float:
    """Measured matmul FLOP/s on the device (2n³ FLOPs per n×n product, best of repeats,
    stopping after ~2 s of products)."""
    if device.startswith("cuda"):
        n = max(n, 8192)  # a 1024² product cannot fill a GPU
    elif dtype != torch.float32:
        n = min(n, 256)  # 16-bit matmuls crawl on CPUs without native support (0.4 GFLOP/s here)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    a @ b
    _sync(device)
    best, start = math.inf, time.perf_counter()
    for _ in range(repeats):
        t = time.perf_counter()
        a @ b
        _sync(device)
        best = min(best, time.perf_counter() - t)
        if time.perf_counter() - start > 2.0:
            break
    return 2 * n**3 / best


def perturbed_policy(
    reference: torch.nn.Module, seed: int, dtype: torch.dtype | None = None
) -> torch.nn.Module:
    """A copy of ``reference`` (cast to ``dtype``) moved by N(0, 0.02²) noise, drawn on the CPU
    for a CPU model and on the device otherwise (no host round trip for large models)."""
    policy = copy.deepcopy(reference).to(dtype or next(reference.parameters()).dtype)
    device = next(policy.parameters()).device
    g = torch.Generator(device=device).manual_seed(seed)
    with torch.no_grad():
        for p in policy.parameters():
            noise = torch.randn(p.shape, generator=g, device=device, dtype=torch.float32)
            p.add_((0.02 * noise).to(p.dtype))
    return policy.requires_grad_(True).train(False)


class _StopError(Exception):
    """Raised after the last timed step, so ``train`` never writes its final checkpoint."""


def bench_ours(
    policy,
    reference,
    examples,
    steps,
    lr,
    *,
    micro_batch: int = 0,
    autocast: bool = False,
    packing: str = "off",
) -> dict[str, float]:
    """``steps`` optimizer steps of ``llm.train`` on all ``examples``; median seconds per step
    after the first, and the first step's loss.

    Args:
        micro_batch: pairs per forward (0: all of them, no accumulation).
        autocast: run the step under bf16 autocast (fp32 master weights in the policy).
        packing: padding-free forwards (``llm.packing``: rows or pairs), checked against padded
            ones first.
    """
    cfg = TrainConfig(
        lr=lr,
        warmup_steps=0,
        batch_size=len(examples),
        micro_batch_size=micro_batch or len(examples),
        max_grad_norm=10.0,
        epochs=steps + 1,  # stopped after `steps`: the final checkpoint is not timed nor written
        checkpoint_every=0,
    )

    def stop(step: int) -> None:
        if step == steps:
            raise _StopError

    device = next(policy.parameters()).device
    context = (
        torch.autocast(device.type, dtype=torch.bfloat16) if autocast else contextlib.nullcontext()
    )
    with tempfile.TemporaryDirectory() as tmp:
        try:
            with context:
                train(policy, examples, DAALoss("dpo", 0.1, reference=reference, packing=packing),
                      cfg, Path(tmp), pad_id=0, progress=False, on_step=stop)  # fmt: skip
        except _StopError:
            pass
        log = read_log(Path(tmp))
    secs = [len(examples) / row["pairs_per_s"] for row in log[1:]]
    return {"first_loss": log[0]["loss"], "seconds_per_step": statistics.median(secs)}


# A lever is one change to the step, measured against "base" (policy and reference in --dtype,
# sdpa attention, all pairs in one forward). Values: overrides of those settings.
VARIANTS: dict[str, dict[str, object]] = {
    "base": {},
    "eager": {"attn": "eager"},  # transformers' plain attention instead of SDPA
    "autocast": {"policy_dtype": torch.float32, "autocast": True},  # fp32 master, bf16 compute
    "compile": {"compile": True},  # torch.compile of each decoder block
    "micro8": {"micro_batch": 8},  # gradient accumulation over 8-pair forwards
    "fp32": {"policy_dtype": torch.float32, "reference_dtype": torch.float32},  # loss reference
    "packed": {"packing": "rows"},  # padding-free rows, varlen attention (llm.packing)
    "pairs": {"packing": "pairs"},  # padding-free, and one prompt per pair
}


def bench_trl(
    policy,
    reference,
    rows,
    tokenizer,
    steps,
    lr,
    *,
    device: str = "cpu",
    bf16: bool = False,
    gradient_checkpointing: bool = False,
) -> dict[str, float]:
    """``steps`` optimizer steps of TRL's DPOTrainer on all ``rows``; median seconds per step
    after the first (on_step_begin to on_step_end, the device synchronised at both), and the
    first step's loss.

    Args:
        device: where ``policy`` and ``reference`` are (cpu: ``use_cpu=True``).
        bf16: TRL's bf16 setting (autocast); True for bf16 weights, False for fp32 ones.
        gradient_checkpointing: TRL's default is True (recompute in the backward); llm.train
            never recomputes, so the comparison turns it off.
    """
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import DPOConfig, DPOTrainer

    times: list[float] = []

    class Timer(TrainerCallback):
        # CUDA runs asynchronously: without the syncs a step's kernels spill into the next.
        def on_step_begin(self, args, state, control, **kw):
            _sync(device)
            self.t = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            _sync(device)
            times.append(time.perf_counter() - self.t)

    with tempfile.TemporaryDirectory() as tmp:
        args = DPOConfig(
            output_dir=tmp,
            per_device_train_batch_size=len(rows),
            gradient_accumulation_steps=1,
            learning_rate=lr,
            lr_scheduler_type="constant",
            optim="rmsprop",
            max_grad_norm=10.0,
            beta=0.1,
            loss_type=["sigmoid"],
            max_length=None,
            max_steps=steps,
            logging_steps=10**6,
            save_strategy="no",
            report_to=[],
            use_cpu=device == "cpu",
            bf16=bf16,  # TRL configs default to bf16 autocast; fp32 weights run without it
            gradient_checkpointing=gradient_checkpointing,
            seed=0,
            dataloader_num_workers=0,
            disable_tqdm=True,
        )

        class ExactLoss(DPOTrainer):
            # The log rounds the loss to 4 digits; keep the exact value of each step.
            def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
                out = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
                exact.append(float((out[0] if return_outputs else out).detach()))
                return out

        exact: list[float] = []
        trainer = ExactLoss(
            model=policy,
            ref_model=reference,
            args=args,
            train_dataset=Dataset.from_list(rows),
            processing_class=tokenizer,
            callbacks=[Timer()],
        )
        trainer.train()
        del trainer
    return {"first_loss": exact[0], "seconds_per_step": statistics.median(times[1:])}


def _run_trl(reference, rows, tokenizer, args, dtype) -> dict[str, float]:
    """TRL's DPOTrainer on the policy and reference of ``base`` (both in ``dtype``, ``--attn``),
    timed steps, wall time and peak memory as for a lever."""
    torch.manual_seed(0)
    policy = perturbed_policy(reference, seed=1, dtype=dtype)
    ref = copy.deepcopy(reference).to(dtype).requires_grad_(False)
    for m in (policy, ref):
        m.config._attn_implementation = args.attn
    cuda = args.device.startswith("cuda")
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(args.device)
    t0 = time.perf_counter()
    r = bench_trl(policy, ref, rows, tokenizer, args.steps, lr=1e-6, device=args.device,
                  bf16=dtype == torch.bfloat16,
                  gradient_checkpointing=args.trl_gradient_checkpointing)  # fmt: skip
    r["wall_s"] = time.perf_counter() - t0
    if cuda:
        r["peak_memory_gib"] = torch.cuda.max_memory_allocated(args.device) / 2**30
    del policy, ref
    gc.collect()  # the trainer's accelerator keeps the models in reference cycles
    if cuda:
        torch.cuda.empty_cache()
    return r


TRL_MISSING = (
    "TRL's DPOTrainer needs trl and datasets, which are not dependencies of the project: "
    "install them (bash scripts/trl_wheels.sh --here DIR, then PYTHONPATH=DIR/site-packages; "
    "on the GPU machine, carried wheels: scripts/trl_wheels.sh) or pass --no-trl"
)


def trl_missing() -> list[str]:
    """The packages TRL's side of the benchmark needs that cannot be imported (not importing
    them: a cheap check at argument parsing)."""
    return [m for m in ("trl", "datasets") if importlib.util.find_spec(m) is None]


def tokens_of(examples: list[Example]) -> int:
    return sum(e.n_tokens for e in examples)


def forward_tokens(examples: list[Example], variant: str, args: argparse.Namespace) -> float:
    """Tokens the blocks of one timed ``llm.train`` step run through, per policy forward (the
    reference's is the same): the padded rows of each micro-batch, in the order the timed steps
    draw them (mean over the steps), or the packed tokens (rows: the real ones; pairs: minus one
    prompt per pair)."""
    v = VARIANTS[variant]
    packing = str(v.get("packing", "off"))
    if packing == "rows":
        return float(tokens_of(examples))
    if packing == "pairs":
        return float(tokens_of(examples) - sum(len(e.prompt) for e in examples))
    micro = int(v.get("micro_batch", args.micro_batch)) or len(examples)
    stream = data_stream(len(examples), args.steps, len(examples), seed=0)[1:]  # the timed steps
    per_step = []
    for order in stream.tolist():
        parts = [[examples[i] for i in order[j : j + micro]] for j in range(0, len(order), micro)]
        per_step.append(sum(2 * len(part) * max(len(e.prompt) + max(len(e.chosen), len(e.rejected))
                                                 for e in part) for part in parts))  # fmt: skip
    return statistics.mean(per_step)


def _run_variant(name, reference, examples, args, dtype) -> dict[str, float]:
    """One lever setting: a fresh policy and reference from ``reference``, timed steps."""
    v = VARIANTS[name]
    policy = perturbed_policy(reference, seed=1, dtype=v.get("policy_dtype", dtype))
    ref = copy.deepcopy(reference).to(v.get("reference_dtype", dtype)).requires_grad_(False)
    attn = v.get("attn", args.attn)
    for m in (policy, ref):
        m.config._attn_implementation = attn  # read by every attention forward
    if v.get("compile"):
        compile_blocks(policy, backend=args.compile_backend)
        compile_blocks(ref, backend=args.compile_backend)
    if args.device.startswith("cuda"):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(args.device)
    torch.manual_seed(0)
    t0 = time.perf_counter()
    r = bench_ours(policy, ref, examples, args.steps, lr=1e-6,
                   micro_batch=int(v.get("micro_batch", args.micro_batch)),
                   autocast=bool(v.get("autocast")),
                   packing=str(v.get("packing", "off")))  # fmt: skip
    r["wall_s"] = time.perf_counter() - t0
    if args.device.startswith("cuda"):
        r["peak_memory_gib"] = torch.cuda.max_memory_allocated(args.device) / 2**30
    del policy, ref
    return r


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line, checked: known variants, and trl importable unless ``--no-trl``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shapes", default="tiny,14m", help="model shapes, comma-separated")
    parser.add_argument("--batch", type=int, default=8, help="pairs per step")
    parser.add_argument("--steps", type=int, default=6, help="steps per run (first is warm-up)")
    parser.add_argument(
        "--threads", type=int, default=torch.get_num_threads(), help="torch threads"
    )
    parser.add_argument("--repeats", type=int, default=1, help="alternating runs; best is kept")
    parser.add_argument("--no-trl", action="store_true", help="benchmark only llm.train")
    parser.add_argument(
        "--trl-gradient-checkpointing",
        action="store_true",
        help="TRL with its default gradient checkpointing (recompute in the backward; off by "
        "default here: llm.train does not recompute)",
    )
    parser.add_argument("--json", default="", help="also write the results to this JSON file")
    parser.add_argument(
        "--device", default="cpu", help="cpu or cuda (TRL too: bf16 autocast when --dtype bf16)"
    )
    parser.add_argument(
        "--dtype", default="fp32", choices=("fp32", "bf16"), help="policy and reference dtype"
    )
    parser.add_argument(
        "--variants",
        default="base",
        help=f"levers of llm.train to measure, comma-separated, of: {', '.join(VARIANTS)} "
        "(base: --dtype, sdpa, one forward; fp32: the first-loss reference)",
    )
    parser.add_argument("--attn", default="sdpa", help="attention of base (sdpa or eager)")
    parser.add_argument(
        "--compile-backend",
        default="inductor",
        help="torch.compile backend of the compile variant (eager: dynamo only, for CPU tests)",
    )
    parser.add_argument(
        "--prompt-tokens", default="64,256", help="prompt length range LO,HI (TL;DR-like)"
    )
    parser.add_argument(
        "--matmul-n", type=int, default=1024, help="size of the matmul-rate probe (CPU)"
    )
    parser.add_argument("--micro-batch", type=int, default=0, help="pairs per forward (0: all)")
    parser.add_argument(
        "--peak-tflops",
        type=float,
        default=0.0,
        help="the device's peak dense TFLOP/s for model FLOP utilisation (H100/H200 SXM bf16: "
        "989); 0: report fractions of the measured matmul rate only",
    )
    args = parser.parse_args(argv)
    unknown = [v for v in args.variants.split(",") if v and v not in VARIANTS]
    if unknown:
        parser.error(f"--variants: unknown {unknown}; choose from {', '.join(VARIANTS)}")
    if not args.no_trl and trl_missing():
        parser.error(f"cannot import {', '.join(trl_missing())}. {TRL_MISSING}")
    return args


def main() -> None:
    args = parse_args()
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[args.dtype]
    variants = [v for v in args.variants.split(",") if v]
    torch.set_num_threads(args.threads)
    tokenizer = byte_tokenizer()
    lo, hi = (int(x) for x in args.prompt_tokens.split(","))
    rows = make_rows(args.batch, seed=0, prompt=(lo, hi))
    examples, _ = tokenize_rows(
        enumerate(rows, 1), tokenizer, TruncationConfig(max_length=1024, max_prompt_length=512)
    )
    rate = matmul_rate(n=args.matmul_n, device=args.device, dtype=dtype)
    machine = platform.processor() or platform.machine()
    if args.device.startswith("cuda"):
        machine = torch.cuda.get_device_name(args.device)
    print(
        f"machine: {machine}, torch {torch.__version__}, {args.threads} threads; "
        f"measured {args.dtype} matmul rate {rate / 1e9:.1f} GFLOP/s"
    )
    n_tok = tokens_of(examples)
    n_resp = sum(len(e.chosen) + len(e.rejected) for e in examples)
    padded = (
        2
        * len(examples)
        * max(max(len(e.prompt) + len(e.chosen), len(e.prompt) + len(e.rejected)) for e in examples)
    )
    print(
        f"data: {args.batch} pairs, {n_tok} tokens per step (chosen + rejected sequences); "
        f"{padded} with padding in one forward ({100 * (1 - n_tok / padded):.0f}% padding)"
    )
    results = []
    for shape in args.shapes.split(","):
        t_build = time.perf_counter()
        # Built on the device in its dtype (no float32 host copy); on the CPU as before.
        on = None if args.device == "cpu" else args.device
        reference = build_model(shape, seed=0, device=on, dtype=dtype)
        reference = reference.to(args.device, dtype).requires_grad_(False)
        print(f"{shape:>5} built in {time.perf_counter() - t_build:.1f} s")
        N = n_params(reference)
        head = reference.get_output_embeddings().weight.numel()  # V·H, as is the input embedding
        # FLOPs a step cannot avoid: the blocks on every token, the output projection on response
        # tokens only, no input-embedding matmul (a lookup); attention scores left out.
        needed = 8 * (N - 2 * head) * n_tok + 8 * head * n_resp
        impls = [f"llm.train:{v}" if v != "base" else "llm.train" for v in variants]
        impls += [] if args.no_trl else ["trl.DPOTrainer"]
        best: dict[str, dict[str, float]] = {}
        # Alternate the implementations and keep each one's fastest run: the machine is shared,
        # and other load only ever slows a run down.
        for _ in range(args.repeats):
            for name in impls:
                # the best rate seen: other sessions share the CPU
                rate = max(rate, matmul_rate(n=args.matmul_n, device=args.device, dtype=dtype))
                try:
                    if name.startswith("llm.train"):
                        variant = name.partition(":")[2] or "base"
                        r = _run_variant(variant, reference, examples, args, dtype)
                    else:
                        r = _run_trl(reference, rows, tokenizer, args, dtype)
                except Exception as err:  # report, keep the other numbers
                    print(f"{shape} {name}: failed: {type(err).__name__}: {err}")
                    continue
                print(f"{shape:>5} {name:<15} run: {r['seconds_per_step'] * 1e3:8.1f} ms/step")
                if name not in best or r["seconds_per_step"] < best[name]["seconds_per_step"]:
                    best[name] = r
        for name, r in best.items():
            t = r["seconds_per_step"]
            flops = 8 * N * n_tok  # 6·N·tokens (policy fwd+bwd) + 2·N·tokens (reference fwd)
            run = {}  # what the blocks ran (padding, or one prompt per pair, counted as is)
            if name.startswith("llm.train"):
                tokens_run = forward_tokens(examples, name.partition(":")[2] or "base", args)
                flops_run = 8 * (N - 2 * head) * tokens_run + 8 * head * n_resp
                run = {"tokens_run": tokens_run, "flops_run": flops_run}
            row = {
                "shape": shape,
                "params": N,
                "impl": name,
                "pairs": args.batch,
                "seconds_per_step": t,
                "pairs_per_s": args.batch / t,
                "tokens_per_s": n_tok / t,
                "first_loss": r["first_loss"],
                "flops_counted": flops,
                "flops_needed": needed,
                **run,
                **{k: r[k] for k in ("peak_memory_gib", "wall_s") if k in r},
            }
            results.append(row)
        by = {r["impl"]: r for r in results if r["shape"] == shape}
        if "trl.DPOTrainer" in by:  # every llm.train row's speed-up over TRL (> 1: ours faster)
            trl = by["trl.DPOTrainer"]
            for row in (r for r in results if r["shape"] == shape and r is not trl):
                row["speedup_vs_trl"] = trl["seconds_per_step"] / row["seconds_per_step"]
                row["first_loss_vs_trl"] = row["first_loss"] - trl["first_loss"]
        if "llm.train:fp32" in by:  # every lever's first loss against the fp32 step's
            for row in (r for r in results if r["shape"] == shape):
                row["first_loss_vs_fp32"] = row["first_loss"] - by["llm.train:fp32"]["first_loss"]
        del reference
    print(f"best measured {args.dtype} matmul rate over the run: {rate / 1e9:.1f} GFLOP/s")
    for row in results:
        row["matmul_fraction"] = row["flops_counted"] / row["seconds_per_step"] / rate
        row["needed_fraction"] = row["flops_needed"] / row["seconds_per_step"] / rate
        row["device"], row["dtype"] = args.device, args.dtype
        if args.peak_tflops > 0:  # model FLOP utilisation against the device's datasheet peak
            row["mfu"] = row["flops_counted"] / row["seconds_per_step"] / (args.peak_tflops * 1e12)
            row["mfu_needed"] = (
                row["flops_needed"] / row["seconds_per_step"] / (args.peak_tflops * 1e12)
            )
            if "flops_run" in row:  # the device's use on the work it was given
                row["mfu_run"] = (
                    row["flops_run"] / row["seconds_per_step"] / (args.peak_tflops * 1e12)
                )
        print(
            f"{row['shape']:>5} {row['impl']:<15} {row['seconds_per_step'] * 1e3:8.1f} ms/step "
            f"{row['pairs_per_s']:8.2f} pairs/s {row['tokens_per_s']:9.0f} tokens/s  "
            f"first loss {row['first_loss']:.7f}  {100 * row['matmul_fraction']:5.1f}% of matmul "
            f"rate ({100 * row['needed_fraction']:.1f}% counting needed FLOPs only)"
            + (
                f"; MFU {100 * row['mfu']:.1f}% of {args.peak_tflops:g} TFLOP/s"
                if "mfu" in row
                else ""
            )
            + (f" ({100 * row['mfu_run']:.1f}% on the tokens run)" if "mfu_run" in row else "")
            + (f"; peak {row['peak_memory_gib']:.1f} GiB" if "peak_memory_gib" in row else "")
            + (
                f"; first loss - fp32 {row['first_loss_vs_fp32']:+.1e}"
                if "first_loss_vs_fp32" in row
                else ""
            )
        )
    for row in (r for r in results if r["impl"].startswith("llm.train") and "speedup_vs_trl" in r):
        trl = next(
            t for t in results if t["shape"] == row["shape"] and t["impl"] == "trl.DPOTrainer"
        )
        mfu = "mfu" if "mfu" in row else "matmul_fraction"
        print(
            f"{row['shape']:>5} {row['impl']} vs TRL: {row['speedup_vs_trl']:.2f}x its throughput "
            f"({row['seconds_per_step'] * 1e3:.1f} vs {trl['seconds_per_step'] * 1e3:.1f} ms/step, "
            f"{row['tokens_per_s']:.0f} vs {trl['tokens_per_s']:.0f} tokens/s, "
            f"{'MFU' if mfu == 'mfu' else 'matmul rate'} {100 * row[mfu]:.1f}% vs "
            f"{100 * trl[mfu]:.1f}%); first loss - TRL's {row['first_loss_vs_trl']:+.1e}"
        )
    if args.json:
        Path(args.json).write_text(json.dumps({"matmul_rate": rate, "results": results}, indent=2))


if __name__ == "__main__":
    main()
