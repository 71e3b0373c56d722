"""Padding-free forwards: the real tokens of a right-padded batch, end to end, in one sequence.

A DPO micro-batch of B pairs is 2B rows padded to the longest one; with TL;DR-like lengths a third
of the positions are padding, and every linear layer computes them; and each prompt is computed
twice, once before each response. Packing keeps only the real tokens (``pack_rows``), or also one
prompt per pair (``pack_pairs``): the tokens are laid end to end in one (1, K) sequence, each
keeps its position in its original row (so rotary embeddings see what they see in the padded
batch), and attention runs over sequences given by boundaries (``cu_q``, ``cu_k``) and, for
pairs, a gather of the keys (a rejected response's keys are its prompt and itself).

Attention runs through ``PACKED_ATTENTION``, an implementation registered with transformers'
``AttentionInterface`` and switched on only for the duration of a packed forward
(``packed_attention``). On a CUDA device with 16-bit inputs it calls PyTorch's own varlen flash
kernel (``torch.nn.attention.varlen.varlen_attn``); elsewhere (CPU, float32) it scatters the
sequences back into a padded (S, H, T, D) layout for one causal ``scaled_dot_product_attention``
call and gathers the real positions again (exact; only attention sees the padding).

The packed forward computes the same function as the padded one: tests hold its log-probs and
gradients to the padded path's, and ``llm.logprobs.check_packing`` repeats that comparison on a
real batch before training starts (``llm.train``), refusing to train when they differ.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import AttentionInterface

__all__ = [
    "PACKED_ATTENTION",
    "PACKINGS",
    "Packed",
    "pack",
    "pack_pairs",
    "pack_rows",
    "packed_attention",
]

PACKED_ATTENTION = "treemdp_packed"
PACKINGS = ("off", "rows", "pairs")
"""``off``: the padded batch; ``rows``: each row's real tokens, end to end; ``pairs``: also one
prompt per pair (the rejected response attends to the chosen row's prompt tokens)."""


@dataclass(frozen=True)
class Packed:
    """The real tokens of a right-padded batch end to end, and the attention sequences over them.

    Attention runs over S sequences. A query sequence is a contiguous run of packed tokens; its
    keys are the packed tokens ``key_index`` lists for it (None: the query run itself). Causal
    masking aligns each sequence's last query with its last key, so a query sequence shorter
    than its keys (a rejected response after its shared prompt) sees all the extra leading keys.

    Attributes:
        input_ids: token ids. Shape (1, K), K = packed tokens.
        position_ids: each token's position in its original row. Shape (1, K).
        cu_q: query-sequence boundaries in the packed tokens. Shape (S + 1,), int32.
        cu_k: key-sequence boundaries in the key layout. Shape (S + 1,), int32.
        max_q: the longest query sequence.
        max_k: the longest key sequence.
        key_index: the packed token behind each key slot, shape (Kk,), or None when the key
            sequences are the query sequences.
        prev: the packed index of the token before each token in its original row (−1 at a
            row's start): a response token is scored from that position's hidden state. (K,).
        row: the original row of each token. Shape (K,), int64.
        scored: the packed indices of the response tokens, computed where the layout is built
            (on the host, no device waits for it). Shape (R,), int64.
    """

    input_ids: Tensor
    position_ids: Tensor
    cu_q: Tensor
    cu_k: Tensor
    max_q: int
    max_k: int
    key_index: Tensor | None
    prev: Tensor
    row: Tensor
    scored: Tensor

    def to(self, device: torch.device) -> Packed:
        """The same packing with its tensors on ``device``."""
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        return dataclasses.replace(
            self, **{k: v.to(device) for k, v in fields.items() if isinstance(v, Tensor)}
        )

    def forward_kwargs(self) -> dict[str, object]:
        """What the base model's forward takes: ids, positions, and the sequence boundaries that
        transformers passes through to the attention function."""
        return {
            "input_ids": self.input_ids,
            "position_ids": self.position_ids,
            "cu_seq_lens_q": self.cu_q,
            "cu_seq_lens_k": self.cu_k,
            "max_length_q": self.max_q,
            "max_length_k": self.max_k,
            "packed_key_index": self.key_index,
        }


def _boundaries(lengths: Tensor) -> Tensor:
    """[0, l_0, l_0 + l_1, …]: shape (len + 1,), int32."""
    cu = torch.zeros(lengths.numel() + 1, dtype=torch.int32, device=lengths.device)
    cu[1:] = lengths.cumsum(0)
    return cu


@dataclass(frozen=True)
class _Layout:
    """Row lengths and prompt lengths, shapes (N,), and the longest row and all real tokens."""

    lengths: Tensor
    prompts: Tensor
    longest: int
    total: int


def _check_layout(real: Tensor, response: Tensor) -> _Layout:
    """Each row: prompt tokens, then response tokens, then padding; ValueError naming what is
    wrong."""
    lengths, prompts = real.sum(dim=1), (real & ~response).sum(dim=1)
    cols = torch.arange(real.shape[1], device=real.device)[None, :]
    layout = (cols < lengths[:, None]) == real
    prompt_first = (cols < prompts[:, None]) == (real & ~response)
    # One device-to-host copy for the checks and the sizes.
    bad_padding, bad_order, shortest, longest, total = torch.stack(
        [
            (~layout).any().long(),
            (~prompt_first).any().long(),
            prompts.min(),
            lengths.max(),
            lengths.sum(),
        ]
    ).tolist()
    if bad_padding:
        raise ValueError("attention_mask must be right padding: each row's ones, then its zeros")
    if bad_order or shortest < 1:
        raise ValueError("each row must be prompt tokens (at least one), then response tokens")
    return _Layout(lengths, prompts, longest, total)


def pack_rows(input_ids: Tensor, attention_mask: Tensor, response_mask: Tensor) -> Packed:
    """Pack a right-padded batch: each row's real tokens, rows in order, one sequence per row.

    Args:
        input_ids: Shape (N, T), int64.
        attention_mask: 1 on real tokens, then 0 on padding. Shape (N, T).
        response_mask: True on response tokens, which follow the row's prompt. Shape (N, T).

    Returns:
        ``Packed`` with K = attention_mask.sum() tokens and N sequences.

    Raises:
        ValueError: on left padding, holes, a row without a prompt token, or a prompt token
            after a response token.
    """
    real, response = attention_mask.bool(), response_mask.bool()
    lay = _check_layout(real, response)
    cu = _boundaries(lay.lengths)
    positions = torch.arange(real.shape[1], device=real.device).expand_as(input_ids)
    rows = torch.arange(real.shape[0], device=real.device)[:, None].expand_as(input_ids)
    return Packed(
        input_ids=input_ids[real][None],
        position_ids=positions[real][None],
        cu_q=cu,
        cu_k=cu,
        max_q=lay.longest,
        max_k=lay.longest,
        key_index=None,
        prev=torch.arange(-1, lay.total - 1, device=real.device),
        row=rows[real],
        scored=response[real].nonzero().squeeze(1),
    )


def _interleave(x: Tensor) -> Tensor:
    """Rows [c_0 … c_{B−1}, r_0 … r_{B−1}] → [c_0, r_0, c_1, r_1, …] (along dim 0)."""
    b = x.shape[0] // 2
    return torch.stack([x[:b], x[b:]], dim=1).flatten(0, 1)


def pack_pairs(input_ids: Tensor, attention_mask: Tensor, response_mask: Tensor) -> Packed:
    """Pack B pairs with one prompt each: per pair, the prompt P, the chosen response C and the
    rejected response R end to end. Two attention sequences per pair: [P C] (keys [P C]) and R
    (keys [P R], so R sees the prompt and its own earlier tokens, never C). Positions are the
    original rows' (R continues from the end of P), so every log-prob is the padded batch's.

    Args:
        input_ids: rows 0..B−1 prompt+chosen, rows B..2B−1 prompt+rejected, right-padded.
            Shape (2B, T).
        attention_mask: Shape (2B, T).
        response_mask: Shape (2B, T), bool.

    Returns:
        ``Packed`` with Σ_pairs (|P| + |C| + |R|) tokens and 2B sequences.

    Raises:
        ValueError: on an odd number of rows, a bad layout (``pack_rows``), an empty response,
            or a pair whose two rows hold different prompts.
    """
    n, t = input_ids.shape
    if n % 2:
        raise ValueError(f"pairs need 2B rows (chosen then rejected); got {n}")
    real, response = attention_mask.bool(), response_mask.bool()
    lay = _check_layout(real, response)
    b, cols = n // 2, torch.arange(t, device=real.device)
    p, lc, lr = lay.prompts[:b], lay.lengths[:b], lay.lengths[b:]
    same = (input_ids[:b] == input_ids[b:]) | (cols[None, :] >= p[:, None])
    q_len = _interleave(torch.cat([lc, lr - p]))  # [P C] and R of each pair
    checks = [((p != lay.prompts[b:]) | ~same.all(dim=1)).any(), ((lc == p) | (lr == p)).any()]
    bad_prompt, empty, longest_q = torch.stack([*(c.long() for c in checks), q_len.max()]).tolist()
    if bad_prompt:
        raise ValueError("the chosen and rejected rows of a pair must hold the same prompt")
    if empty:
        raise ValueError("every response needs at least one token to be packed by pairs")
    start = _boundaries(lc + lr - p)[:-1].long()[:, None]  # each pair's first packed token
    # Where each (row, column) of the batch lies in the packed sequence: P and C from the chosen
    # row, R after C; a rejected row's prompt columns point at the chosen row's P.
    at_c = start + cols
    at_r = torch.where(cols < p[:, None], start + cols, start + (lc - p)[:, None] + cols)
    where = _interleave(torch.cat([at_c, at_r]))  # (2B, T): c_0, r_0, c_1, r_1, …
    taken = _interleave(torch.cat([real[:b], real[b:] & response[b:]]))
    prev = torch.cat([torch.full_like(where[:, :1], -1), where[:, :-1]], dim=1)
    rows = _interleave(torch.arange(n, device=real.device))[:, None].expand(n, t)
    return Packed(
        input_ids=_interleave(input_ids)[taken][None],
        position_ids=cols.expand(n, t)[taken][None],
        cu_q=_boundaries(q_len),
        cu_k=_boundaries(_interleave(lay.lengths)),
        max_q=longest_q,
        max_k=lay.longest,
        key_index=where[_interleave(real)],
        prev=prev[taken],
        row=rows[taken],
        scored=_interleave(response)[taken].nonzero().squeeze(1),
    )


def pack(packing: str, input_ids: Tensor, attention_mask: Tensor, response_mask: Tensor) -> Packed:
    """``pack_rows`` (``packing="rows"``) or ``pack_pairs`` (``"pairs"``)."""
    if packing == "rows":
        return pack_rows(input_ids, attention_mask, response_mask)
    if packing == "pairs":
        return pack_pairs(input_ids, attention_mask, response_mask)
    raise ValueError(f"packing must be 'rows' or 'pairs' to pack; got {packing!r}")


def _varlen_kernel() -> object | None:
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:  # torch < 2.10
        return None
    return varlen_attn


def _repad(x: Tensor, cu: Tensor, longest: int, shift: Tensor) -> tuple[Tensor, Tensor]:
    """Packed (L, H, D) → right-padded sequences (S, H, longest, D), sequence s's tokens starting
    at slot ``shift[s]``; and each packed position's flat index in the padded layout (L,)."""
    n_seq, (n, heads, dim) = cu.numel() - 1, x.shape
    seq = torch.repeat_interleave(
        torch.arange(n_seq, device=x.device), cu.diff().long(), output_size=n
    )
    flat = seq * longest + torch.arange(n, device=x.device) - cu.long()[seq] + shift[seq]
    out = x.new_zeros(n_seq * longest, heads, dim).index_copy(0, flat, x)
    return out.view(n_seq, longest, heads, dim).transpose(1, 2), flat


def _attend_repadded(
    q: Tensor, k: Tensor, v: Tensor, cu_q: Tensor, cu_k: Tensor, max_k: int, scale: float
) -> Tensor:
    """Causal attention of each sequence on its own keys, in one SDPA call: the keys scattered
    back into padded sequences (S, H, max_k, D), each sequence's queries into the same slots as
    its last keys (a rejected response's queries sit after its prompt's keys, as in its padded
    row), SDPA's own causal mask, and the real query slots gathered again. Exact; only attention
    sees the padding (and, for pairs, empty query slots under the prompt).

    Args:
        q: Shape (K, H, D). k, v: Shape (Kk, H, D), in the key layout.
        cu_q, cu_k: query and key boundaries, shapes (S + 1,).
        max_k: the longest key sequence (no query sequence is longer than its keys).

    Returns:
        Shape (K, H, D).
    """
    zero = torch.zeros_like(cu_k[1:]).long()
    qp, flat = _repad(q, cu_q, max_k, shift=(cu_k.diff() - cu_q.diff()).long())
    kp, vp = (_repad(x, cu_k, max_k, shift=zero)[0] for x in (k, v))
    out = F.scaled_dot_product_attention(qp, kp, vp, is_causal=True, scale=scale)
    return out.transpose(1, 2).reshape(-1, *q.shape[1:])[flat]


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
    packed_key_index: Tensor | None = None,
    **kwargs: object,
) -> tuple[Tensor, None]:
    """transformers' attention-function contract for a ``Packed`` forward.

    Args:
        module: the attention module (unused).
        query, key, value: Shape (1, H, K, D).
        attention_mask: must be None (packing replaces the mask by sequence boundaries).
        scaling: softmax scale (None: 1/√D).
        cu_seq_lens_q, cu_seq_lens_k: ``Packed.cu_q``, ``Packed.cu_k``.
        max_length_q, max_length_k: ``Packed.max_q``, ``Packed.max_k``.
        packed_key_index: ``Packed.key_index`` (None: the keys are the queries).

    Returns:
        ``(output, None)``, output of shape (1, K, H, D).
    """
    if cu_seq_lens_q is None or attention_mask is not None or query.shape[0] != 1:
        raise ValueError(
            f"attention {PACKED_ATTENTION!r} runs only inside llm.packing's packed forward "
            "(one packed row, sequence boundaries, no mask)"
        )
    if dropout:
        raise ValueError(f"packed attention has no dropout; got dropout={dropout}")
    scale = scaling if scaling is not None else 1.0 / math.sqrt(query.shape[-1])
    q, k, v = (x[0].transpose(0, 1) for x in (query, key, value))  # (K, H, D)
    if packed_key_index is not None:
        k, v = k[packed_key_index], v[packed_key_index]  # (Kk, H, D)
    if q.is_cuda and torch.is_autocast_enabled(q.device.type):
        dtype = torch.get_autocast_dtype(q.device.type)  # what SDPA would compute in
        q, k, v = q.to(dtype), k.to(dtype), v.to(dtype)
    bounds = (cu_seq_lens_q, cu_seq_lens_k, max_length_q, max_length_k)
    kernel = _varlen_kernel()
    if q.is_cuda and q.dtype in (torch.float16, torch.bfloat16) and kernel is not None:
        q, k, v = q.contiguous(), k.contiguous(), v.contiguous()  # flash's layout: (K, H, D)
        out = kernel(q, k, v, *bounds, scale=scale, window_size=(-1, 0))
    else:
        out = _attend_repadded(q, k, v, cu_seq_lens_q, cu_seq_lens_k, max_length_k, scale)
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
