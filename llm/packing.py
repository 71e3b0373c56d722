"""Padding-free forwards: the rows of a right-padded batch packed into one sequence.

A DPO micro-batch of B pairs is 2B rows padded to the longest one; with TL;DR-like lengths a third
of the positions are padding, and every linear layer computes them. Packing keeps only the real
tokens: the rows are laid end to end in one (1, K) sequence, each row's positions restart at 0
(so rotary embeddings see what they see in the padded batch), and attention is restricted to
each row by cumulative row boundaries (``cu_seqlens``), as varlen flash attention does.

Attention runs through ``PACKED_ATTENTION``, an implementation registered with transformers'
``AttentionInterface`` and switched on only for the duration of a packed forward
(``packed_attention``). On a CUDA device with 16-bit inputs it calls PyTorch's own varlen flash
kernel (``torch.nn.attention.varlen.varlen_attn``); elsewhere (CPU, float32) it scatters the
rows back into a padded (N, H, T, D) layout for one causal ``scaled_dot_product_attention`` call
and gathers the real positions again (exact; only attention sees the padding).

The packed forward computes the same function as the padded one: a test holds its log-probs and
gradients to the padded path's, and ``check_packing`` repeats that comparison on a real batch
before training starts (``llm.train``), refusing to train when they differ.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import AttentionInterface

__all__ = [
    "PACKED_ATTENTION",
    "PackedRows",
    "PackingMismatchError",
    "check_packing",
    "pack_rows",
    "packed_attention",
]

PACKED_ATTENTION = "treemdp_packed"


@dataclass(frozen=True)
class PackedRows:
    """The real tokens of N right-padded rows, end to end.

    Attributes:
        input_ids: token ids. Shape (1, K), K = number of real tokens.
        position_ids: each token's position in its own row. Shape (1, K).
        cu_seqlens: row boundaries [0, n_0, n_0 + n_1, …, K]. Shape (N + 1,), int32.
        max_len: the longest row's length.
        row: the row each token came from. Shape (K,), int64.
        response: True where the token is a response token. Shape (K,), bool.
    """

    input_ids: Tensor
    position_ids: Tensor
    cu_seqlens: Tensor
    max_len: int
    row: Tensor
    response: Tensor

    def forward_kwargs(self) -> dict[str, object]:
        """What the base model's forward takes: ids, positions, and the row boundaries that
        transformers passes through to the attention function."""
        return {
            "input_ids": self.input_ids,
            "position_ids": self.position_ids,
            "cu_seq_lens_q": self.cu_seqlens,
            "cu_seq_lens_k": self.cu_seqlens,
            "max_length_q": self.max_len,
            "max_length_k": self.max_len,
        }


def pack_rows(input_ids: Tensor, attention_mask: Tensor, response_mask: Tensor) -> PackedRows:
    """Pack a right-padded batch (each row's real tokens first, then padding).

    Args:
        input_ids: Shape (N, T), int64.
        attention_mask: 1 on real tokens, 0 on padding; each row a run of ones then zeros.
            Shape (N, T).
        response_mask: Shape (N, T), bool.

    Returns:
        ``PackedRows`` of the K = attention_mask.sum() real tokens, in row order.

    Raises:
        ValueError: if a row is empty or its real tokens are not a prefix (left padding).
    """
    real = attention_mask.bool()
    lengths = real.sum(dim=1)  # (N,)
    prefix = torch.arange(real.shape[1], device=real.device)[None, :] < lengths[:, None]
    # One device-to-host copy for both checks and the longest row.
    not_prefix, shortest, longest = torch.stack(
        [(prefix != real).any().long(), lengths.min(), lengths.max()]
    ).tolist()
    if not_prefix:
        raise ValueError("attention_mask must be right padding: each row's ones, then its zeros")
    if shortest < 1:
        raise ValueError("every row needs at least one real token to be packed")
    positions = torch.arange(real.shape[1], device=real.device).expand_as(input_ids)
    rows = torch.arange(real.shape[0], device=real.device)[:, None].expand_as(input_ids)
    cu = torch.zeros(real.shape[0] + 1, dtype=torch.int32, device=real.device)
    cu[1:] = lengths.cumsum(0)
    return PackedRows(
        input_ids=input_ids[real][None],
        position_ids=positions[real][None],
        cu_seqlens=cu,
        max_len=int(longest),
        row=rows[real],
        response=response_mask.bool()[real],
    )


def _varlen_kernel() -> object | None:
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:  # torch < 2.10
        return None
    return varlen_attn


def _attend_repadded(q: Tensor, k: Tensor, v: Tensor, cu: Tensor, max_len: int, scale: float
                     ) -> Tensor:  # fmt: skip
    """Causal attention of each row on its own: q, k, v scattered back into right-padded rows
    (N, H, max_len, D), one SDPA call, and the real positions gathered again. Exact (a real
    query sees only its own row's earlier keys; padding comes after them) and one kernel call;
    the linear layers still run on the K real tokens only.

    Args:
        q, k, v: Shape (K, H, D).
        cu: row boundaries, shape (N + 1,).
        max_len: the longest row.

    Returns:
        Shape (K, H, D).
    """
    n_rows, (n_tokens, heads, dim) = cu.numel() - 1, q.shape
    row = torch.repeat_interleave(
        torch.arange(n_rows, device=q.device), cu.diff().long(), output_size=n_tokens
    )
    flat = row * max_len + torch.arange(n_tokens, device=q.device) - cu.long()[row]  # (K,)

    def repad(x: Tensor) -> Tensor:
        out = x.new_zeros(n_rows * max_len, heads, dim).index_copy(0, flat, x)
        return out.view(n_rows, max_len, heads, dim).transpose(1, 2)

    out = F.scaled_dot_product_attention(repad(q), repad(k), repad(v), is_causal=True, scale=scale)
    return out.transpose(1, 2).reshape(n_rows * max_len, heads, dim)[flat]


def varlen_attention(
    module: nn.Module,
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attention_mask: Tensor | None,
    *,
    scaling: float | None = None,
    dropout: float = 0.0,
    cu_seq_lens_q: Tensor | None = None,
    cu_seq_lens_k: Tensor | None = None,
    max_length_q: int | None = None,
    max_length_k: int | None = None,
    **kwargs: object,
) -> tuple[Tensor, None]:
    """transformers' attention-function contract for packed rows.

    Args:
        module: the attention module (unused).
        query, key, value: Shape (1, H, K, D).
        attention_mask: must be None (packing replaces the mask by row boundaries).
        scaling: softmax scale (None: 1/√D).
        cu_seq_lens_q, cu_seq_lens_k: the row boundaries (``PackedRows.cu_seqlens``), equal.
        max_length_q, max_length_k: the longest row.

    Returns:
        ``(output, None)``, output of shape (1, K, H, D).
    """
    if cu_seq_lens_q is None or attention_mask is not None or query.shape[0] != 1:
        raise ValueError(
            f"attention {PACKED_ATTENTION!r} runs only inside llm.packing's packed forward "
            "(one packed row, row boundaries, no mask)"
        )
    if dropout:
        raise ValueError(f"packed attention has no dropout; got dropout={dropout}")
    scale = scaling if scaling is not None else 1.0 / math.sqrt(query.shape[-1])
    q, k, v = (x[0].transpose(0, 1) for x in (query, key, value))  # (K, H, D)
    if q.is_cuda and torch.is_autocast_enabled(q.device.type):
        dtype = torch.get_autocast_dtype(q.device.type)  # what SDPA would compute in
        q, k, v = q.to(dtype), k.to(dtype), v.to(dtype)
    kernel = _varlen_kernel()
    if q.is_cuda and q.dtype in (torch.float16, torch.bfloat16) and kernel is not None:
        q, k, v = q.contiguous(), k.contiguous(), v.contiguous()  # flash's layout: (K, H, D)
        out = kernel(q, k, v, cu_seq_lens_q, cu_seq_lens_k, max_length_q, max_length_k,
                     scale=scale, window_size=(-1, 0))  # fmt: skip
    else:
        out = _attend_repadded(q, k, v, cu_seq_lens_q, max_length_q, scale)
    return out[None], None


AttentionInterface.register(PACKED_ATTENTION, varlen_attention)


@contextlib.contextmanager
def packed_attention(model: nn.Module) -> Iterator[None]:
    """Route the model's attention through ``varlen_attention`` inside the block; the model's
    own implementation (sdpa, eager, …) is restored on exit, also after an exception."""
    config = model.config
    before = config._attn_implementation
    config._attn_implementation = PACKED_ATTENTION
    try:
        yield
    finally:
        config._attn_implementation = before


class PackingMismatchError(RuntimeError):
    """The packed forward's log-probs differ from the padded forward's beyond tolerance."""


def tolerance(dtype: torch.dtype) -> float:
    """Allowed |packed − padded| of a row's summed log-prob per response token, in nats: float32
    differs only by summation order (~1e-7 measured); a 16-bit kernel rounds every activation
    (~1e-3 measured between bf16 SDPA and its row-by-row form at Pythia-14m)."""
    return 1e-5 if dtype in (torch.float32, torch.float64) else 2e-2


def check_packing(
    model: nn.Module, input_ids: Tensor, attention_mask: Tensor, response_mask: Tensor
) -> float:
    """Compare the packed and padded log-probs of one batch (no gradient).

    The tolerance is that of the dtype the model's matmuls run in (its weights', or bf16 under
    autocast or FSDP mixed precision), read from the first linear layer's output. A random
    model's log-probs hardly depend on the context, so the check has its teeth on trained
    models (an SFT policy), where a row that saw another row's tokens would score differently.

    Returns:
        the largest |packed − padded| / (response tokens) over the rows, in nats per token.

    Raises:
        PackingMismatchError: when that exceeds ``tolerance`` of the compute dtype.
    """
    from llm.logprobs import response_logps

    seen: list[torch.dtype] = []
    first_linear = next(m for m in model.base_model.modules() if isinstance(m, nn.Linear))
    hook = first_linear.register_forward_hook(lambda m, i, out: seen.append(out.dtype))
    try:
        with torch.no_grad():
            padded, n = response_logps(model, input_ids, attention_mask, response_mask)
            packed, _ = response_logps(model, input_ids, attention_mask, response_mask, packed=True)
    finally:
        hook.remove()
    worst = float(((packed - padded).abs() / n.clamp_min(1)).max())
    limit = max(tolerance(dtype) for dtype in seen)
    if not math.isfinite(worst) or worst > limit:
        raise PackingMismatchError(
            f"packed and padded response log-probs differ by {worst:.3g} nats per token, more "
            f"than {limit:g} for {seen[0]} compute; packed: {packed.tolist()[:4]}, padded: "
            f"{padded.tolist()[:4]}. Train without --packed and report this."
        )
    return worst
