"""How a policy is held in memory while it trains, and what that costs on a GPU.

Two precisions (``PRECISIONS``), both with the paper's RMSProp (torch's defaults: α = 0.99,
ε = 1e-8, no momentum):

* ``fp32`` (the paper's): float32 weights and gradients, ``torch.optim.RMSprop`` (its state in
  the weights' dtype). 16 bytes a parameter on a GPU, where torch's foreach RMSProp also
  allocates a float32 copy of the whole state (``√square_avg``) during each step.
* ``bf16-weights``: bfloat16 weights and gradients, float32 RMSProp state
  (``RMSpropFP32State``): each update is computed in float32 and stochastically rounded into the
  weights (unbiased: E[round(x)] = x). 8 bytes a parameter; one parameter at a time, so no
  temporary is larger than the largest weight. What it changes: the forward and backward run on
  bf16 weights (log-probs to ~1e-2 nats a token; ``tests/llm/test_llm_precision.py`` compares
  training against fp32), and each weight carries a rounding noise of half its bf16 spacing.

``memory_plan`` is the arithmetic of docs/llm.md ("Memory at the 6.9b shape"): bytes per
parameter for weights, gradients, optimizer state (and its temporaries) and the frozen
reference, plus activations, for a Pythia shape; ``choose_precision`` picks the first precision
(fp32, then bf16-weights) whose peak (SFT or DAA) fits a card. ``scripts/gpu_figures.sh`` asks
it per stage:

    python -m llm.precision --size 6.9b --memory-mib 81559   # prints bf16-weights (an H100)
"""

from __future__ import annotations

import argparse
import functools
import hashlib
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

__all__ = [
    "OPTIMIZERS",
    "PRECISIONS",
    "Precision",
    "RMSpropFP32State",
    "build_optimizer",
    "choose_precision",
    "memory_plan",
    "peak",
    "precision",
    "stochastic_round",
]

OPTIMIZERS = ("rmsprop", "rmsprop-fp32-state")
"""``llm.train.TrainConfig.optimizer``: torch's RMSprop (state in the weights' dtype), or
``RMSpropFP32State``."""


@dataclass(frozen=True)
class Precision:
    """How a trained policy is held: its weights' dtype (gradients follow them) and optimizer."""

    weights: torch.dtype
    optimizer: str  # a name in OPTIMIZERS
    bytes_per_param: int  # weights + gradients + optimizer state + its step's temporaries


PRECISIONS: dict[str, Precision] = {
    # 4 weights + 4 gradients + 4 square_avg + 4 foreach temporary (√square_avg)
    "fp32": Precision(torch.float32, "rmsprop", 16),
    # 2 weights + 2 gradients + 4 square_avg (temporaries: a few copies of one weight)
    "bf16-weights": Precision(torch.bfloat16, "rmsprop-fp32-state", 8),
}
"""Precision names accepted on the command line (``--precision``)."""


def precision(name: str) -> Precision:
    """The ``Precision`` named ``name``; ValueError naming the allowed ones otherwise."""
    try:
        return PRECISIONS[name]
    except KeyError:
        raise ValueError(
            f"precision must be one of {', '.join(PRECISIONS)}; got {name!r}"
        ) from None


# ------------------------------------------------------------------------------ the optimizer
def stochastic_round(x: Tensor, *, generator: torch.Generator | None = None) -> Tensor:
    """float32 ``x`` rounded to bfloat16, up or down at random with the probabilities that make
    the rounding unbiased (E[result] = x): the 16 low bits of the float32 pattern (the part
    bfloat16 drops) plus a uniform 16-bit integer carry into the kept bits with probability
    (dropped part) / 2^16. Works on the magnitude, so for both signs. Exact bfloat16 values come
    back unchanged. Any shape; returns bfloat16 of ``x``'s shape."""
    if x.dtype != torch.float32:
        raise ValueError(f"x must be float32; got {x.dtype}")
    noise = torch.randint(
        0, 1 << 16, x.shape, dtype=torch.int32, device=x.device, generator=generator
    )
    bits = (x.view(torch.int32) + noise) & -(1 << 16)  # keep the top 16 bits (bfloat16's)
    return bits.view(torch.float32).to(torch.bfloat16)  # exact: the low bits are zero


def _seed(*parts: object) -> int:
    return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:7], "little")


class RMSpropFP32State(torch.optim.Optimizer):
    """RMSProp (torch's update: v ← αv + (1−α)g², w ← w − lr·g / (√v + ε)) with float32 state
    whatever the weights' dtype (float32 or bfloat16).

    The update is computed in float32; bfloat16 weights take it by ``stochastic_round``, so an
    update far below a weight's bf16 spacing still moves it on average (round-to-nearest would
    drop it: a LayerNorm weight near 1 has spacing 2^-7 = 0.0078, above RMSProp's steps of
    ~lr–10·lr at lr = 3e-4). float32 weights are updated exactly as ``torch.optim.RMSprop``
    does. One parameter at a time: the largest temporaries are a few float32 copies of one
    weight. The rounding's random bits come from (``seed``, the parameter's position, its
    step count), so a resumed run draws the same bits.
    """

    def __init__(
        self,
        params: Iterable[nn.Parameter],
        lr: float,
        *,
        alpha: float = 0.99,
        eps: float = 1e-8,
        seed: int = 0,
    ) -> None:
        if lr <= 0:
            raise ValueError(f"lr must be > 0; got {lr}")
        if not 0 <= alpha < 1:
            raise ValueError(f"alpha must be in [0, 1); got {alpha}")
        super().__init__(params, {"lr": lr, "alpha": alpha, "eps": eps})
        self.seed = seed
        dtypes = {p.dtype for g in self.param_groups for p in g["params"]}
        if not dtypes <= {torch.float32, torch.bfloat16}:
            raise ValueError(f"weights must be float32 or bfloat16; got {sorted(map(str, dtypes))}")

    def load_state_dict(self, state_dict: dict) -> None:
        """torch's loading, but the state stays float32: ``Optimizer.load_state_dict`` casts
        every floating state tensor to its parameter's dtype (bf16 here)."""
        kept = {i: s["square_avg"] for i, s in state_dict["state"].items() if "square_avg" in s}
        super().load_state_dict(state_dict)
        params = [p for g in self.param_groups for p in g["params"]]
        for i, v in kept.items():
            p = params[int(i)]
            self.state[p]["square_avg"] = v.to(device=p.device, dtype=torch.float32, copy=True)

    @torch.no_grad()
    def step(self, closure: None = None) -> None:  # type: ignore[override]
        """One RMSProp step on every parameter that has a gradient."""
        if closure is not None:
            raise ValueError("closure is not supported")
        index = 0
        for group in self.param_groups:
            lr, alpha, eps = group["lr"], group["alpha"], group["eps"]
            for p in group["params"]:
                index += 1
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["step"] = torch.tensor(0.0)
                    state["square_avg"] = torch.zeros_like(p, dtype=torch.float32)
                state["step"] += 1
                v = state["square_avg"]
                g = p.grad if p.grad.dtype == torch.float32 else p.grad.float()
                v.mul_(alpha).addcmul_(g, g, value=1 - alpha)
                avg = v.sqrt().add_(eps)
                if p.dtype == torch.float32:
                    p.addcdiv_(g, avg, value=-lr)
                    continue
                new = p.float().addcdiv_(g, avg, value=-lr)
                gen = torch.Generator(device=p.device)
                gen.manual_seed(_seed(self.seed, index, int(state["step"])))
                p.copy_(stochastic_round(new, generator=gen))


def build_optimizer(
    params: list[nn.Parameter], name: str, *, lr: float, seed: int = 0
) -> torch.optim.Optimizer:
    """The optimizer ``name`` (``OPTIMIZERS``) over ``params``; ValueError for another name, or
    for ``rmsprop-fp32-state`` on weights that are neither float32 nor bfloat16."""
    if name == "rmsprop":
        return torch.optim.RMSprop(params, lr=lr)
    if name == "rmsprop-fp32-state":
        return RMSpropFP32State(params, lr=lr, seed=seed)
    raise ValueError(f"optimizer must be one of {', '.join(OPTIMIZERS)}; got {name!r}")


# ------------------------------------------------------------------------------ the arithmetic
DTYPE_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}

ACTIVATION_VALUES = 20
"""Values a decoder layer keeps per token for the backward pass, in units of hidden_size (the
layer norms' inputs and outputs, q/k/v before and after the rotary embedding, the attention
output, the MLP's 4h input and GELU output: ≈ 20·h), at the weights' dtype."""

OVERHEAD = 2 * 2**30
"""CUDA context, cuBLAS workspaces and allocator slack, bytes."""


@functools.cache
def shape_params(size: str, *, vocab_size: int) -> int:
    """Parameters of the Pythia shape ``size`` with a ``vocab_size``-token vocabulary (built on
    the meta device: no memory, exact count)."""
    from transformers import GPTNeoXForCausalLM

    from llm.model import pythia_config

    with torch.device("meta"):
        model = GPTNeoXForCausalLM(pythia_config(size, vocab_size=vocab_size))
    return sum(p.numel() for p in model.parameters())


def memory_plan(
    size: str,
    precision_name: str,
    *,
    reference_dtype: str,
    tokens: int,
    vocab_size: int = 16,
) -> dict[str, float]:
    """Peak GPU bytes of training the Pythia shape ``size`` at ``precision_name`` with a frozen
    reference in ``reference_dtype`` ("" for none, e.g. SFT) on batches of ``tokens`` tokens
    (padded sequences × length), by component: weights, gradients, optimizer (state and the
    step's temporaries), reference, activations, overhead, and their total. ``vocab_size``: the
    tree language's handful of tokens by default."""
    prec = precision(precision_name)
    from llm.model import PYTHIA_SHAPES

    n = shape_params(size, vocab_size=vocab_size)
    w = prec.weights.itemsize
    shape = PYTHIA_SHAPES[size]
    h, layers = shape.hidden_size, shape.num_hidden_layers
    if prec.optimizer == "rmsprop":
        optimizer = (prec.bytes_per_param - 2 * w) * n
    else:  # fp32 state, and one weight's float32 temporaries (g, √v, the new value, the noise)
        optimizer = 4 * n + 4 * 4 * (4 * h * h)
    plan = {
        "params": float(n),
        "weights": float(w * n),
        "gradients": float(w * n),
        "optimizer": float(optimizer),
        "reference": float(DTYPE_BYTES[reference_dtype] * n if reference_dtype else 0),
        "activations": float(tokens * layers * ACTIVATION_VALUES * h * w),
        "overhead": float(OVERHEAD),
    }
    plan["total"] = sum(v for k, v in plan.items() if k != "params")
    return plan


FIT = 0.9
"""Share of a card's memory a plan may use (the rest: fragmentation, evaluation's transients)."""


def choose_precision(
    size: str,
    memory_bytes: float,
    *,
    reference_dtype: str = "fp16",
    sft_tokens: int = 448,
    daa_tokens: int = 112,
) -> str:
    """The first of ``PRECISIONS`` (fp32, then bf16-weights) whose peak fits ``FIT`` of
    ``memory_bytes``: the larger ``memory_plan`` total of the SFT (no reference, batches of
    ``sft_tokens`` tokens: 64 sequences of 7 in gpu_figures.sh) and the DAA run (the reference
    in ``reference_dtype`` for fp32, bf16 for bf16-weights, where it is the SFT weights exactly;
    ``daa_tokens``: 8 pairs = 16 sequences of 7). ValueError when none fits."""
    for name in PRECISIONS:
        if peak(size, name, reference_dtype=reference_dtype, sft_tokens=sft_tokens,
                daa_tokens=daa_tokens) <= FIT * memory_bytes:  # fmt: skip
            return name
    raise ValueError(f"size {size}: no precision fits {memory_bytes / 2**30:.0f} GiB")


def peak(
    size: str, precision_name: str, *, reference_dtype: str, sft_tokens: int, daa_tokens: int
) -> float:
    """The larger of the SFT's and the DAA run's ``memory_plan`` totals, bytes (the reference in
    ``reference_dtype`` at fp32, in bf16 at bf16-weights)."""
    ref = reference_dtype if precision_name == "fp32" else "bf16"
    sft = memory_plan(size, precision_name, reference_dtype="", tokens=sft_tokens)
    daa = memory_plan(size, precision_name, reference_dtype=ref, tokens=daa_tokens)
    return max(sft["total"], daa["total"])


def main(argv: list[str] | None = None) -> None:
    """Print the precision ``choose_precision`` picks (``--plan``: each precision's plans)."""
    parser = argparse.ArgumentParser(description=choose_precision.__doc__)
    parser.add_argument("--size", required=True, help="a Pythia shape (llm.model.PYTHIA_SHAPES)")
    parser.add_argument("--memory-mib", type=float, required=True, help="the card's memory")
    parser.add_argument("--reference-dtype", default="fp16", choices=tuple(DTYPE_BYTES))
    parser.add_argument("--sft-tokens", type=int, default=448, help="tokens in an SFT batch")
    parser.add_argument("--daa-tokens", type=int, default=112, help="tokens in a DAA batch")
    parser.add_argument("--plan", action="store_true", help="print each precision's plans")
    args = parser.parse_args(argv)
    memory = args.memory_mib * 2**20
    if args.plan:
        for name in PRECISIONS:
            ref = args.reference_dtype if name == "fp32" else "bf16"
            for stage, r, tokens in (("sft", "", args.sft_tokens), ("daa", ref, args.daa_tokens)):
                plan = memory_plan(args.size, name, reference_dtype=r, tokens=tokens)
                parts = ", ".join(f"{k} {v / 1e9:.1f}" for k, v in plan.items() if k != "params")
                print(f"{name} {stage}: {parts} GB ({plan['total'] / memory:.0%} of the card)")
    print(choose_precision(args.size, memory, reference_dtype=args.reference_dtype,
                           sft_tokens=args.sft_tokens, daa_tokens=args.daa_tokens))  # fmt: skip


if __name__ == "__main__":
    main()
