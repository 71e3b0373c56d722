"""Sequence log-probabilities of response tokens, through one concatenated forward.

A batch of B pairs is laid out as 2B rows, chosen rows first, then rejected rows (the DPO code's
``concatenated_forward``), so the policy sees both responses in one forward and one backward.
Only response tokens are scored: prompt and padding positions never reach the output
projection, which saves most of the work of the vocabulary-sized matmul when prompts are long
(``response_logps``). The log-softmax is formed as ``logit[label] - logsumexp(logits)`` in
float32 on the selected rows only, so no (rows × T × V) log-prob tensor is ever materialised;
without gradient the rows go through the projection in blocks of ``SCORING_BLOCK`` logits
(``token_logps``), so that the log-sum-exp reads logits still in the CPU's cache.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.distributed.fsdp import FSDPModule

from llm.packing import PACKINGS, Packed, pack, packed_attention
from treemdp.objectives import Margins

__all__ = [
    "PACKED_TOLERANCE",
    "SCORING_BLOCK",
    "PackingMismatchError",
    "PairLogps",
    "check_packing",
    "concatenated_logps",
    "response_logps",
    "token_logps",
]

SCORING_BLOCK = 2**22
"""Logits (rows × vocabulary) that ``token_logps`` materialises at once without gradient: 16 MB
in float32, 83 rows of a 50,304-token vocabulary. One (K, V) block of a few thousand response
tokens is hundreds of MB, and its log-sum-exp then reads it from memory: on a 2-core Xeon,
scoring 2,048 tokens of Pythia-14m's vocabulary took ~750 ms in one block and ~470 ms in blocks
of 128 rows, of which ~410 ms is the matmul itself."""


def token_logps(head: nn.Module, h: Tensor, labels: Tensor, *, temperature: float = 1.0) -> Tensor:
    """log softmax(head(h) / temperature)[label] of each row, in float32.

    Without gradient, and when ``head`` is not an FSDP unit (which gathers its sharded weight
    at every call), the rows go through ``head`` in blocks of ``SCORING_BLOCK`` logits; the
    result equals the one-block computation up to the matmul's summation order.

    Args:
        head: the output projection (``model.get_output_embeddings()``).
        h: the hidden states that predict the tokens. Shape (K, H).
        labels: the tokens' ids. Shape (K,), int64.
        temperature: the logits are divided by it (> 0).

    Returns:
        Shape (K,), float32.
    """
    rows = h.shape[0]
    block = max(rows, 1)
    if not torch.is_grad_enabled() and not isinstance(head, FSDPModule):
        block = max(1, SCORING_BLOCK // head.weight.shape[0])
    parts = []
    for s in range(0, max(rows, 1), block):  # one empty block when rows == 0
        logits = head(h[s : s + block]).float()
        if temperature != 1.0:
            logits = logits / temperature
        picked = logits.gather(1, labels[s : s + block, None]).squeeze(1)
        parts.append(picked - torch.logsumexp(logits, dim=1))
    return torch.cat(parts) if len(parts) != 1 else parts[0]


def response_logps(
    model: nn.Module,
    input_ids: Tensor,
    attention_mask: Tensor,
    response_mask: Tensor,
    *,
    packing: str = "off",
) -> tuple[Tensor, Tensor]:
    """Summed log-probability of the response tokens of each row, and their number.

    Token t of a row is scored by the model's prediction at position t − 1, so a response token
    can never sit at position 0 (every row starts with at least one prompt token).

    Args:
        model: a transformers causal LM (``base_model`` gives hidden states,
            ``get_output_embeddings()`` the output projection).
        input_ids: token ids, right-padded. Shape (N, T), int64. The inputs may live on the
            CPU (packing there costs no device synchronisation); they are moved to the model's
            device, where the results are.
        attention_mask: 1 for real tokens, 0 for padding. Shape (N, T).
        response_mask: True where the token is a response token. Shape (N, T), bool.
        packing: ``off`` (the padded (N, T) batch), ``rows`` (the real tokens only, end to
            end) or ``pairs`` (also one prompt per pair; rows i and i + N/2 must share their
            prompt, as ``concatenated_logps``' do). The same function without the padding's (and
            the repeated prompt's) work; ``llm.packing``.

    Returns:
        ``(logp_sum, n_tokens)``: float32 sums Σ_t log π(y_t | x, y_<t) over response tokens,
        shape (N,), and the int64 count of response tokens, shape (N,).
    """
    if input_ids.dim() != 2 or not (input_ids.shape == attention_mask.shape == response_mask.shape):
        raise ValueError(
            "input_ids, attention_mask and response_mask must share one (N, T) shape; got "
            f"{tuple(input_ids.shape)}, {tuple(attention_mask.shape)}, {tuple(response_mask.shape)}"
        )
    response_mask = response_mask.bool()
    # Both checks in one device-to-host copy (each bool() of a GPU tensor waits for the GPU).
    at_start, on_pad = torch.stack(
        [response_mask[:, 0].any(), (response_mask & (attention_mask == 0)).any()]
    ).tolist()
    if at_start:
        raise ValueError("response_mask must be False at position 0: each row needs a prompt token")
    if on_pad:
        raise ValueError("response_mask must be False on padding (attention_mask 0)")
    if packing not in PACKINGS:
        raise ValueError(f"packing must be one of {', '.join(PACKINGS)}; got {packing!r}")
    device = next(model.parameters()).device
    if packing == "off":
        tensors = (x.to(device) for x in (input_ids, attention_mask, response_mask))
        rows, h, labels = _padded_scoring(model, *tensors)
    else:
        packed = pack(packing, input_ids, attention_mask, response_mask).to(device)
        rows, h, labels = _packed_scoring(packed, model)
    token_logp = token_logps(model.get_output_embeddings(), h, labels)  # (K,)
    logp_sum = torch.zeros(input_ids.shape[0], dtype=torch.float32, device=device)
    logp_sum = logp_sum.index_add(0, rows, token_logp)
    return logp_sum, response_mask.sum(dim=1).to(device)


def _padded_scoring(
    model: nn.Module, input_ids: Tensor, attention_mask: Tensor, response_mask: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """The hidden states that score response tokens, from one forward of the padded batch.

    Returns:
        ``(rows, h, labels)``: each scored token's row (K,), the hidden state at the position
        before it (K, H), and its id (K,), K = number of response tokens.
    """
    hidden = model.base_model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    scored = response_mask[:, 1:]  # (N, T-1): token t+1 is scored from position t
    rows = scored.nonzero(as_tuple=True)[0]  # (K,)
    return rows, hidden[:, :-1][scored], input_ids[:, 1:][scored]


def _packed_scoring(packed: Packed, model: nn.Module) -> tuple[Tensor, Tensor, Tensor]:
    """``_padded_scoring`` from one forward over the packed tokens: each response token is
    scored from the hidden state of the token before it in its original row (``Packed.prev``)."""
    with packed_attention(model):
        hidden = model.base_model(**packed.forward_kwargs()).last_hidden_state[0]  # (K, H)
    scored = packed.scored  # (R,) integer indices: no device sync
    return packed.row[scored], hidden[packed.prev[scored]], packed.input_ids[0, scored]


class PackingMismatchError(RuntimeError):
    """The packed forward's log-probs differ from the padded forward's beyond tolerance."""


PACKED_TOLERANCE: dict[torch.dtype, float] = {
    torch.float64: 1e-5,
    torch.float32: 1e-5,
    torch.float16: 2e-2,
    torch.bfloat16: 2e-2,
}
"""Largest |packed − padded| of a row's summed log-prob per response token, in nats, by the dtype
the matmuls run in: float32 differs only by summation order (~1e-7 measured); a 16-bit kernel
rounds every activation (~1e-3 measured between bf16 SDPA and its row-by-row form at
Pythia-14m). Tighter than ``llm.sampling.TOKEN_TOLERANCE``, which bounds the largest single
token of cached decoding, not a mean over a row."""


def check_packing(
    model: nn.Module,
    input_ids: Tensor,
    attention_mask: Tensor,
    response_mask: Tensor,
    packing: str = "rows",
) -> float:
    """Compare the packed (``packing``: rows or pairs) and padded log-probs of one batch, without
    gradient.

    The tolerance is that of the dtype the model's matmuls run in (its weights', or bf16 under
    autocast or FSDP mixed precision), read from the first linear layer's output. A random
    model's log-probs hardly depend on the context, so the check has its teeth on trained
    models (an SFT policy), where a row that saw another row's tokens would score differently.

    Returns:
        the largest |packed − padded| / (response tokens) over the rows, in nats per token.

    Raises:
        PackingMismatchError: when that exceeds ``PACKED_TOLERANCE`` of the compute dtype.
    """
    seen: list[torch.dtype] = []
    first_linear = next(m for m in model.base_model.modules() if isinstance(m, nn.Linear))
    hook = first_linear.register_forward_hook(lambda m, i, out: seen.append(out.dtype))
    args = (model, input_ids, attention_mask, response_mask)
    try:
        with torch.no_grad():
            padded, n = response_logps(*args)
            packed, _ = response_logps(*args, packing=packing)
    finally:
        hook.remove()
    worst = float(((packed - padded).abs() / n.clamp_min(1)).max())
    limit = max(PACKED_TOLERANCE.get(dtype, PACKED_TOLERANCE[torch.bfloat16]) for dtype in seen)
    if not math.isfinite(worst) or worst > limit:
        raise PackingMismatchError(
            f"{packing}-packed and padded response log-probs differ by {worst:.3g} nats per "
            f"token, more than {limit:g} for {seen[0]} compute; packed: {packed.tolist()[:4]}, "
            f"padded: {padded.tolist()[:4]}. Train with --packing off and report this."
        )
    return worst


@dataclass(frozen=True)
class PairLogps:
    """Summed response log-probs of B pairs and the response lengths (in tokens).

    Attributes:
        chosen: Σ log π(y_w|x). Shape (B,), float32.
        rejected: Σ log π(y_l|x). Shape (B,), float32.
        len_chosen: |y_w| in tokens. Shape (B,), int64.
        len_rejected: |y_l| in tokens. Shape (B,), int64.
    """

    chosen: Tensor
    rejected: Tensor
    len_chosen: Tensor
    len_rejected: Tensor

    def margins(self, ref: PairLogps) -> Margins:
        """The registry's input: these (the policy's) and ``ref``'s summed log-probs."""
        return Margins(self.chosen, self.rejected, ref.chosen, ref.rejected)


def concatenated_logps(
    model: nn.Module,
    input_ids: Tensor,
    attention_mask: Tensor,
    response_mask: Tensor,
    *,
    packing: str = "off",
) -> PairLogps:
    """Chosen and rejected log-probs of B pairs from one forward over their 2B rows.

    Args:
        model: a causal LM (see ``response_logps``).
        input_ids: rows 0..B−1 are prompt+chosen, rows B..2B−1 prompt+rejected. Shape (2B, T).
        attention_mask: Shape (2B, T).
        response_mask: Shape (2B, T), bool.
        packing: ``off``, ``rows`` or ``pairs`` (see ``response_logps``).

    Returns:
        ``PairLogps`` with (B,) tensors.
    """
    n = input_ids.shape[0]
    if n % 2:
        raise ValueError(f"input_ids must hold 2B rows (chosen then rejected); got {n} rows")
    logp, count = response_logps(model, input_ids, attention_mask, response_mask, packing=packing)
    b = n // 2
    return PairLogps(logp[:b], logp[b:], count[:b], count[b:])
