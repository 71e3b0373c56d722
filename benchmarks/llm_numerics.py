"""The llm package's numerics in 16-bit dtypes, measured: what a float16/bfloat16 reference does to
the DPO margin, and how far cached sampling drifts from a plain forward in each dtype.

1. Reference dtype. At step 0 the policy equals the reference, so h = [log π(y_w) − log π_ref(y_w)]
   − [log π(y_l) − log π_ref(y_l)] is 0 in exact arithmetic. With the paper's layout (policy fp32,
   reference fp16, or bf16) h is the rounding of the reference alone: reported as max and mean |h|
   and as the DPO loss's deviation from log 2 at β = 0.1, and the summed log-prob gap per token.
2. Sampling. ``llm.sampling.generate`` recomputes its first batch with a plain forward and refuses
   a per-token gap above ``TOKEN_TOLERANCE`` of the dtype; here the gap is measured per dtype on
   the same prompts (max over sampled tokens), next to the tolerance, so the tolerance is known to
   pass a correct model with room to spare.

    python benchmarks/llm_numerics.py --device cuda --shape 160m --json out.json
    python benchmarks/llm_numerics.py --device cpu --shape tiny          # the CPU dry run

Random Pythia-shaped weights (nothing downloads), random tokens with TL;DR-like lengths.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import time
from pathlib import Path

import torch

from llm.compat import version_report
from llm.data import _collate
from llm.logprobs import response_logps
from llm.model import DTYPES, build_model
from llm.sampling import TOKEN_TOLERANCE, SamplingCheckError, generate
from treemdp.objectives import loss as daa_loss


def random_pairs(n: int, vocab: int, seed: int, prompt: int, response: int):
    """n (prompt, chosen, rejected) token tuples: prompts of prompt/2..prompt tokens, responses of
    response/4..response tokens, ids in [1, vocab)."""
    g = torch.Generator().manual_seed(seed)

    def seq(lo: int, hi: int) -> tuple[int, ...]:
        k = int(torch.randint(lo, hi + 1, (1,), generator=g))
        return tuple(torch.randint(1, vocab, (k,), generator=g).tolist())

    return [
        (seq(prompt // 2, prompt), seq(response // 4, response), seq(response // 4, response))
        for _ in range(n)
    ]


@torch.no_grad()
def summed_logps(model, rows, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed response log-probs and token counts of (prompt, response) rows. Shapes (n,)."""
    b = _collate(rows, 0)
    logp, n = response_logps(
        model, b.input_ids.to(device), b.attention_mask.to(device), b.response_mask.to(device)
    )
    return logp.double().cpu(), n.cpu()


def reference_dtype_effect(policy, pairs, device, dtype: torch.dtype) -> dict[str, float]:
    """|h| at step 0 with the reference in ``dtype`` and the policy in float32."""
    reference = copy.deepcopy(policy).to(dtype)
    chosen = [(p, c) for p, c, _ in pairs]
    rejected = [(p, r) for p, _, r in pairs]
    pc, nc = summed_logps(policy, chosen, device)
    pr, _ = summed_logps(policy, rejected, device)
    rc, _ = summed_logps(reference, chosen, device)
    rr, _ = summed_logps(reference, rejected, device)
    h = (pc - rc) - (pr - rr)
    loss = daa_loss("dpo", pc, pr, rc, rr, beta=0.1)
    del reference
    return {
        "h_abs_max": float(h.abs().max()),
        "h_abs_mean": float(h.abs().mean()),
        "dpo_loss_minus_log2_max": float((loss - math.log(2)).abs().max()),
        "logp_gap_per_token_max": float(((pc - rc).abs() / nc).max()),
    }


def sampling_gap(model, prompts, device, max_new_tokens: int) -> dict[str, float | str]:
    """Max per-token gap between cached sampling and a plain forward (estimated from the rows'
    sums: |Σ gap| / length), and whether generate's own self-check passed."""
    dtype = next(model.parameters()).dtype
    gen = torch.Generator(device=device).manual_seed(0)
    kwargs = dict(max_new_tokens=max_new_tokens, eos_id=None, pad_id=0, generator=gen)
    try:
        generate(model, prompts, **kwargs)
        verdict = "passed"
    except SamplingCheckError as err:
        verdict = f"refused: {err}"
    gen.manual_seed(0)
    out = generate(model, prompts, self_check=False, **kwargs)
    plain, n = summed_logps(model, list(zip(prompts, out.responses, strict=True)), device)
    gap = (plain - out.logp.double()).abs() / n
    return {
        "self_check": verdict,
        "gap_per_token_mean_max": float(gap.max()),
        "tolerance_per_token": TOKEN_TOLERANCE[dtype],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--shape", default="160m", help="Pythia shape of the random model")
    ap.add_argument("--pairs", type=int, default=32, help="preference pairs scored")
    ap.add_argument("--prompt-tokens", type=int, default=256, help="longest prompt")
    ap.add_argument("--response-tokens", type=int, default=64, help="longest response")
    ap.add_argument("--samples", type=int, default=16, help="prompts sampled per dtype")
    ap.add_argument("--json", type=Path, help="write the results here")
    args = ap.parse_args()
    t0 = time.perf_counter()
    policy = build_model(args.shape, seed=0).to(args.device)
    vocab = policy.config.vocab_size
    pairs = random_pairs(args.pairs, vocab, 1, args.prompt_tokens, args.response_tokens)
    results = {"versions": version_report(), "shape": args.shape, "reference": {}, "sampling": {}}
    for name in ("bf16", "fp16"):
        results["reference"][name] = reference_dtype_effect(
            policy, pairs, args.device, DTYPES[name]
        )
    prompts = [p for p, _, _ in pairs[: args.samples]]
    for name in ("fp32", "bf16", "fp16"):
        model = policy if name == "fp32" else copy.deepcopy(policy).to(DTYPES[name])
        results["sampling"][name] = sampling_gap(model, prompts, args.device, args.response_tokens)
        del model
    results["seconds"] = round(time.perf_counter() - t0, 1)
    print(json.dumps(results, indent=2))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
