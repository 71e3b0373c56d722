"""Sampling from a causal LM with the KV cache, and the tree language's exact distribution.

``generate`` samples responses for a batch of prompts at a temperature, one forward per new token
over the cache (prompts are left-padded, positions counted from each row's first real token), and
returns the summed log-probability of each sample under the distribution it was drawn from.

The tree language (``llm.tree_language``) can be decoded *on the tree*: ``TreeDecoding`` allows at
each step only the action tokens that lead to a child of the current node and stops a row at a
leaf, so every sample is a response of the tree. The LLM restricted this way is a tree policy:
π(a|s) is the softmax of the model's logits over the valid actions of s. ``tree_logprobs`` gives
its exact log-probability of every leaf (one forward per depth over all internal nodes, then
``treemdp.policy.response_logprobs``), so Σ_y π(y|x) = 1 for every prompt by construction.
``tree_full_logprobs`` is the unrestricted model's mass on each leaf (the rest leaves the tree).

``sample_sft_examples`` is SFT data drawn through ``generate``: the one sampler of the package.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Protocol

import torch
from torch import Tensor, nn
from transformers import DynamicCache

from llm.compat import cache_kwargs, check_cache_filled, last_logits_kwargs
from llm.data import Example
from llm.logprobs import token_logps
from llm.tree_language import TreeLanguage
from treemdp.policy import response_logprobs
from treemdp.tree import Tree

__all__ = [
    "Samples",
    "SamplingCheckError",
    "TreeDecoding",
    "generate",
    "sample_sft_examples",
    "tree_full_logprobs",
    "tree_logprobs",
]


class DecodingState(Protocol):
    """Per-batch decoding constraint: which tokens each row may take next, and when it ends."""

    def allowed(self) -> Tensor:
        """Shape (B, V) bool: tokens a row may sample next."""
        ...

    def step(self, tokens: Tensor) -> Tensor:
        """Advance by the sampled tokens (shape (B,)); return which rows have ended. Shape (B,)."""
        ...


class Decoding(Protocol):
    """Builds a ``DecodingState`` for a batch of prompts."""

    def begin(self, prompts: Sequence[tuple[int, ...]], vocab_size: int) -> DecodingState: ...


@dataclass(frozen=True)
class Samples:
    """Sampled responses.

    Attributes:
        responses: token ids of each response (with EOS when it ended on EOS).
        logp: Σ_t log π(y_t | x, y_<t) under the sampling distribution (temperature and any
            decoding constraint applied), float32. Shape (n,).
    """

    responses: list[tuple[int, ...]]
    logp: Tensor


def _left_pad(prompts: Sequence[tuple[int, ...]], pad_id: int, device) -> tuple[Tensor, Tensor]:
    T = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), T), pad_id, dtype=torch.long, device=device)
    att = torch.zeros((len(prompts), T), dtype=torch.long, device=device)
    for i, p in enumerate(prompts):
        ids[i, T - len(p) :] = torch.tensor(p, dtype=torch.long)
        att[i, T - len(p) :] = 1
    return ids, att


class SamplingCheckError(RuntimeError):
    """Sampled log-probabilities disagree with a plain forward over the same tokens."""


TOKEN_TOLERANCE: dict[torch.dtype, float] = {
    torch.float64: 1e-6,
    torch.float32: 1e-3,
    torch.float16: 0.1,
    torch.bfloat16: 0.25,
}
"""Largest |Δ log π(y_t)| per token allowed between cached decoding and a plain forward, by the
model's parameter dtype (the two paths round differently; context lost costs whole nats)."""

SELF_CHECK_ROWS = 16
"""Rows of the first batch that ``generate`` recomputes with a plain forward."""


@torch.no_grad()
def generate(
    model: nn.Module,
    prompts: Sequence[tuple[int, ...]],
    *,
    max_new_tokens: int,
    eos_id: int | None,
    pad_id: int,
    generator: torch.Generator,
    temperature: float = 1.0,
    batch_size: int = 64,
    decoding: Decoding | None = None,
    self_check: bool = True,
) -> Samples:
    """Sample one response per prompt, batched, with the KV cache.

    Args:
        model: a transformers causal LM.
        prompts: prompt token ids (each non-empty).
        max_new_tokens: response length limit (>= 1).
        eos_id: a row ends after sampling this token (kept in the response); None: no EOS.
        pad_id: id used for left padding (never attended to).
        generator: the only source of randomness (on the model's device).
        temperature: > 0; 1.0 samples the model's own distribution.
        batch_size: prompts per forward.
        decoding: optional constraint (e.g. ``TreeDecoding``); rows also end when it says so.
        self_check: recompute the per-token log-probs of the first ``SELF_CHECK_ROWS`` samples
            with a plain forward (no cache) and raise ``SamplingCheckError`` if any differs by
            more than ``TOKEN_TOLERANCE`` of the model's dtype. The cache is checked always.

    Returns:
        ``Samples`` in prompt order.
    """
    _check_generate_args(prompts, max_new_tokens, temperature, batch_size)
    responses: list[tuple[int, ...]] = []
    logps: list[Tensor] = []
    for s in range(0, len(prompts), batch_size):
        chunk = list(prompts[s : s + batch_size])
        state = None if decoding is None else decoding.begin(chunk, model.config.vocab_size)
        new_ids, per_token = _sample_chunk(
            model, chunk, state, max_new_tokens=max_new_tokens, eos_id=eos_id, pad_id=pad_id,
            generator=generator, temperature=temperature,
        )  # fmt: skip
        lengths = _lengths(new_ids, eos_id, state)
        if self_check and s == 0:
            _check_against_plain_forward(
                model, chunk, new_ids, per_token, lengths,
                pad_id=pad_id, temperature=temperature, decoding=decoding,
            )  # fmt: skip
        rows = new_ids.tolist()
        responses.extend(tuple(r[:n]) for r, n in zip(rows, lengths, strict=True))
        logps.append(per_token.sum(1).cpu())
    return Samples(responses, torch.cat(logps) if logps else torch.zeros(0))


def _check_generate_args(
    prompts: Sequence[tuple[int, ...]], max_new_tokens: int, temperature: float, batch_size: int
) -> None:
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1; got {max_new_tokens}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0; got {temperature}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1; got {batch_size}")
    if any(len(p) == 0 for p in prompts):
        raise ValueError("prompts must be non-empty token sequences")


def _sample_chunk(
    model: nn.Module,
    chunk: Sequence[tuple[int, ...]],
    state: DecodingState | None,
    *,
    max_new_tokens: int,
    eos_id: int | None,
    pad_id: int,
    generator: torch.Generator,
    temperature: float,
) -> tuple[Tensor, Tensor]:
    """Sample one batch of prompts token by token over the cache until every row has ended or
    ``max_new_tokens`` are drawn.

    Returns:
        ``(new_ids, per_token)``: the sampled tokens (``pad_id`` after a row's end) and their
        log-probs (0 after a row's end). Shapes (B, n), n <= ``max_new_tokens``.
    """
    device = next(model.parameters()).device
    ids, att = _left_pad(chunk, pad_id, device)
    pos = (att.cumsum(-1) - 1).clamp(min=0)
    cache = DynamicCache(config=model.config)  # filled in place by every forward
    out = model(
        input_ids=ids, attention_mask=att, position_ids=pos,
        **cache_kwargs(model, cache), **last_logits_kwargs(model),
    )  # fmt: skip
    check_cache_filled(cache, ids.shape[1])
    done = torch.zeros(len(chunk), dtype=torch.bool, device=device)
    new: list[Tensor] = []
    token_logps: list[Tensor] = []
    next_pos = pos[:, -1] + 1
    for t in range(max_new_tokens):
        tok, logp = _next_token(out.logits[:, -1], state, done, temperature, generator, pad_id)
        new.append(tok)
        token_logps.append(logp)
        done = done | _ended(tok, eos_id, state)
        if bool(done.all()) or t == max_new_tokens - 1:
            break
        att = torch.cat([att, torch.ones_like(att[:, :1])], dim=1)
        out = model(
            input_ids=tok[:, None],
            attention_mask=att,
            position_ids=next_pos[:, None],
            **cache_kwargs(model, cache),
        )
        next_pos = next_pos + 1
    return torch.stack(new, dim=1), torch.stack(token_logps, dim=1)


def _next_token(
    logits: Tensor,
    state: DecodingState | None,
    done: Tensor,
    temperature: float,
    generator: torch.Generator,
    pad_id: int,
) -> tuple[Tensor, Tensor]:
    """Draw every row's next token from the last position's ``logits`` (shape (B, V)) at the
    temperature, within the decoding constraint; ended rows (``done``) get ``pad_id`` and log-prob
    0. Returns the tokens and their log-probs, shapes (B,)."""
    logits = logits.float() / temperature
    if state is not None:
        logits = logits.masked_fill(~state.allowed().to(logits.device), float("-inf"))
    logp = torch.log_softmax(logits, dim=-1)
    tok = _multinomial(logp.exp(), generator)
    tok = torch.where(done, torch.full_like(tok, pad_id), tok)
    return tok, torch.where(done, 0.0, logp.gather(1, tok[:, None])[:, 0])


_FAST_DRAW: dict[tuple, bool] = {}
"""Per (shape, dtype, devices): whether ``_multinomial``'s first draw reproduced torch's."""


def _multinomial(probs: Tensor, generator: torch.Generator) -> Tensor:
    """``torch.multinomial(probs, 1, generator=generator)[:, 0]``: the same tokens from the same
    random numbers, faster on the CPU.

    torch.multinomial draws one sample per row as argmax(p / q), q ~ Exp(1) from
    ``exponential_``, whose CPU kernel (torch 2.13, where its MKL path is disabled,
    pytorch#132395) makes each q one at a time from a float64 uniform u as −log1p(−u).
    ``_exponential`` makes the same u's with ``torch.rand`` and the logarithm vectorised: ~40 ms
    instead of ~70 ms for a (64, 50,304) batch, where the draws were half of a small model's
    sampling time (the same q in all 129M values tested). The first draw of each shape is compared
    with torch's own (every q, the generator's state after, and the tokens); where any differs
    (another torch version, another device), ``torch.multinomial`` is used.

    Args:
        probs: row probabilities, non-negative and finite. Shape (B, V).
        generator: consumed as torch.multinomial consumes it.

    Returns:
        One token per row. Shape (B,), int64.
    """
    key = (tuple(probs.shape), probs.dtype, probs.device.type, generator.device.type)
    fast = _FAST_DRAW.get(key)
    if fast is None:
        fast = _FAST_DRAW[key] = _fast_draw_agrees(probs, generator)
    if not fast:
        return torch.multinomial(probs, 1, generator=generator)[:, 0]
    if not bool((probs.min() >= 0) & (probs.max() < float("inf"))):  # torch.multinomial's error
        return torch.multinomial(probs, 1, generator=generator)[:, 0]
    return (probs / _exponential(probs, generator)).argmax(dim=-1)


def _exponential(like: Tensor, generator: torch.Generator) -> Tensor:
    """Exp(1) draws shaped and typed like ``like``, as −log1p(−u) of float64 uniforms."""
    u = torch.rand(like.shape, generator=generator, dtype=torch.float64, device=like.device)
    return torch.log1p(u.neg_()).neg_().to(like.dtype)


def _fast_draw_agrees(probs: Tensor, generator: torch.Generator) -> bool:
    """Whether ``_exponential`` and the argmax reproduce torch's draws on this batch, leaving
    the generator where it was."""
    if probs.device.type != "cpu" or generator.device.type != "cpu":
        return False
    start = generator.get_state()
    want = torch.multinomial(probs, 1, generator=generator)[:, 0]
    after = generator.get_state()
    generator.set_state(start)
    torch_q = torch.empty_like(probs).exponential_(1, generator=generator)
    generator.set_state(start)
    q = _exponential(probs, generator)
    same_state = torch.equal(generator.get_state(), after)
    generator.set_state(start)
    return same_state and torch.equal(q, torch_q) and torch.equal((probs / q).argmax(dim=-1), want)


def _ended(tok: Tensor, eos_id: int | None, state: DecodingState | None) -> Tensor:
    """Rows that end with this token (shape (B,)): EOS, or the decoding constraint says so."""
    ended = torch.zeros_like(tok, dtype=torch.bool)
    if eos_id is not None:
        ended |= tok == eos_id
    if state is not None:
        ended |= state.step(tok).to(tok.device)
    return ended


def _check_against_plain_forward(
    model: nn.Module,
    prompts: Sequence[tuple[int, ...]],
    new_ids: Tensor,
    per_token: Tensor,
    lengths: Sequence[int],
    *,
    pad_id: int,
    temperature: float,
    decoding: Decoding | None,
) -> None:
    """Recompute the sampled tokens' log-probs without the cache; raise if they disagree.

    Args:
        new_ids: sampled tokens, padded after each row's end. Shape (B, n).
        per_token: their log-probs as ``generate`` accumulated them. Shape (B, n).
        lengths: tokens of each row that count.
    """
    k = min(len(prompts), SELF_CHECK_ROWS)
    prompts, new_ids, per_token = list(prompts[:k]), new_ids[:k], per_token[:k]
    device = new_ids.device
    ids, att = _left_pad(prompts, pad_id, device)
    T, n = ids.shape[1], new_ids.shape[1]
    counted = (
        torch.arange(n, device=device)[None] < torch.tensor(lengths[:k], device=device)[:, None]
    )
    full_att = torch.cat([att, counted.long()], dim=1)
    pos = (full_att.cumsum(-1) - 1).clamp(min=0)
    hidden = model.base_model(
        input_ids=torch.cat([ids, new_ids], dim=1), attention_mask=full_att, position_ids=pos
    ).last_hidden_state[:, T - 1 : T - 1 + n]  # position T-1+t predicts response token t
    head = model.get_output_embeddings()
    if decoding is None:  # the counted tokens only, in blocks (llm.logprobs.token_logps)
        replay = torch.zeros_like(per_token)
        replay[counted] = token_logps(
            head, hidden[counted], new_ids[counted], temperature=temperature
        ).to(replay.dtype)
    else:
        logits = head(hidden).float() / temperature  # (k, n, V)
        state = decoding.begin(prompts, model.config.vocab_size)
        for t in range(n):
            logits[:, t] = logits[:, t].masked_fill(~state.allowed().to(device), float("-inf"))
            state.step(new_ids[:, t])
        replay = torch.log_softmax(logits, dim=-1).gather(2, new_ids[..., None])[..., 0]
        replay = torch.where(counted, replay, 0.0)
    gap = (replay - per_token).abs()
    dtype = next(model.parameters()).dtype
    tolerance = TOKEN_TOLERANCE.get(dtype, 0.25)
    if not bool(gap.max() <= tolerance):  # also catches NaN
        worst = int(gap.flatten().argmax())
        raise SamplingCheckError(
            f"sampled log-probs disagree with a plain forward over the same tokens: max "
            f"|Δ log π(token)| = {float(gap.max()):.3g} > {tolerance:g} allowed for {dtype} "
            f"(row {worst // n}, token {worst % n}; summed over the row: "
            f"{float((replay - per_token).sum(1).abs().max()):.3g}). The KV-cache path of this "
            "transformers/torch version computes something else than the model; not sampling."
        )


def _lengths(new: Tensor, eos_id: int | None, state: DecodingState | None) -> list[int]:
    """Tokens of each row up to and including the one that ended it (EOS or a leaf)."""
    T = new.shape[1]
    if state is not None and hasattr(state, "lengths"):
        return state.lengths.tolist()
    if eos_id is None:
        return [T] * new.shape[0]
    is_eos = new == eos_id
    first = torch.where(is_eos.any(1), is_eos.float().argmax(1) + 1, T)
    return first.tolist()


# ------------------------------------------------------------------------------- SFT data
def sample_sft_examples(
    model: nn.Module,
    examples: Sequence[Example],
    *,
    max_new_tokens: int,
    eos_id: int | None,
    pad_id: int,
    seed: int,
    batch_size: int = 16,
) -> list[Example]:
    """SFT data from samples of a given policy: each example's chosen response is replaced by a
    sample of ``model`` at temperature 1 (``generate``; prompts of one length are batched
    together, so no padding).

    Args:
        model: the policy to sample.
        examples: the prompts (``chosen`` is replaced, ``rejected`` kept).
        max_new_tokens: sample length limit (>= 1).
        eos_id: a sample ends after this token (kept); None: every sample has
            ``max_new_tokens`` tokens.
        pad_id: the padding id ``generate`` puts after a row's end (never kept).
        seed: seeds the generator on the model's device.
        batch_size: prompts per forward.

    Returns:
        Examples in the given order whose ``chosen`` is the sample (up to and including EOS).
    """
    device = next(model.parameters()).device
    gen = torch.Generator(device=device).manual_seed(seed)
    by_len: dict[int, list[int]] = {}
    for i, e in enumerate(examples):
        by_len.setdefault(len(e.prompt), []).append(i)
    out = list(examples)
    for idx in by_len.values():
        samples = generate(
            model, [examples[i].prompt for i in idx], max_new_tokens=max_new_tokens,
            eos_id=eos_id, pad_id=pad_id, generator=gen, batch_size=batch_size,
        )  # fmt: skip
        for i, response in zip(idx, samples.responses, strict=True):
            out[i] = replace(examples[i], chosen=response)
    return out


# ------------------------------------------------------------------------------ the tree
class _TreeState:
    def __init__(self, language: TreeLanguage, roots: Tensor, vocab_size: int) -> None:
        self.language, self.tree, self.node = language, language.tree, roots.clone()
        self.lengths = torch.zeros_like(roots)
        self.finished = torch.zeros_like(roots, dtype=torch.bool)
        self.vocab_size = vocab_size

    def allowed(self) -> Tensor:
        tree, B = self.tree, self.node.shape[0]
        mask = torch.zeros(B, self.vocab_size, dtype=torch.bool)
        internal = tree.internal_index[self.node]
        live = internal >= 0
        mask[live, self.language.actions] = tree.valid[internal[live]]
        mask[~live, TreeLanguage.PAD_ID] = True  # a finished row samples padding (discarded)
        return mask

    def step(self, tokens: Tensor) -> Tensor:
        tree = self.tree
        tokens = tokens.cpu()
        internal = tree.internal_index[self.node]
        live = (internal >= 0) & ~self.finished
        action = self.language.action(tokens).clamp(0, tree.branching - 1)
        child = tree.children[internal.clamp(min=0), action]
        self.node = torch.where(live, child, self.node)
        self.lengths = self.lengths + live.long()
        self.finished = tree.internal_index[self.node] < 0
        return self.finished


@dataclass(frozen=True, eq=False)
class TreeDecoding:
    """Decode on the tree: only actions with a child are allowed, and a row ends at a leaf.

    Prompts are ``llm.tree_language`` prompts: one token ``<s{k}>`` for root k.
    """

    tree: Tree

    def begin(self, prompts: Sequence[tuple[int, ...]], vocab_size: int) -> _TreeState:
        language = TreeLanguage(self.tree)
        k = torch.tensor([language.root(p) for p in prompts])
        return _TreeState(language, self.tree.roots[k], vocab_size)


@torch.no_grad()
def _node_logits(model: nn.Module, tree: Tree, batch_size: int, *, normalised: bool) -> Tensor:
    """The model's logits of the b action tokens at every internal node (log-softmaxed over the
    whole vocabulary when ``normalised``). Shape (M, b), float64."""
    device = next(model.parameters()).device
    language = TreeLanguage(tree)
    seqs = [language.node_tokens(node) for node in tree.internal.tolist()]
    table = torch.zeros(tree.n_internal, tree.branching, dtype=torch.float64)
    by_len: dict[int, list[int]] = {}
    for i, s in enumerate(seqs):
        by_len.setdefault(len(s), []).append(i)
    for idx in by_len.values():  # one length per depth: no padding
        for s in range(0, len(idx), batch_size):
            part = idx[s : s + batch_size]
            ids = torch.tensor([seqs[i] for i in part], device=device)
            logits = model(input_ids=ids).logits[:, -1].double().cpu()
            if normalised:
                logits = torch.log_softmax(logits, dim=-1)
            table[part] = logits[:, language.actions]
    return table


def tree_logprobs(model: nn.Module, tree: Tree, *, batch_size: int = 256) -> Tensor:
    """Exact log π(y|x) of every leaf for the LLM decoded on the tree (``TreeDecoding``).

    Args:
        model: a causal LM over ``TreeLanguage(tree)``'s vocabulary.
        tree: the tree.
        batch_size: internal nodes per forward.

    Returns:
        Shape (L,), float64; logsumexp over each prompt's leaves is 0.
    """
    table = _node_logits(model, tree, batch_size, normalised=False)
    return response_logprobs(tree, table[None])[0]


def tree_full_logprobs(model: nn.Module, tree: Tree, *, batch_size: int = 256) -> Tensor:
    """log-probability of every leaf under the unrestricted model (full-vocabulary softmax at
    every step). Shape (L,), float64; per prompt the masses sum to at most 1, the rest is the
    mass of sequences that leave the tree (a non-action token, or an action without a child)."""
    full = _node_logits(model, tree, batch_size, normalised=True)
    flat = full.masked_fill(~tree.valid, float("-inf")).reshape(-1)
    node = torch.zeros(tree.n_nodes, dtype=torch.float64)
    for lo, hi, _, edge in tree.levels:
        node[lo:hi] = node[tree.parent[lo:hi]] + flat[edge]
    return node[tree.leaves]
