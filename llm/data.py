"""Preference data: rows of (prompt, chosen, rejected) text → token examples → padded batches.

Sources (``load_rows``):
    * ``tldr``: Reddit TL;DR comparisons (Stiennon et al. 2020) through the optional ``datasets``
      package; default ``openai/summarize_from_feedback``, config ``comparisons`` (92.9K pairs).
      Any hub dataset with ``prompt``/``chosen``/``rejected`` string columns works too.
    * ``jsonl``: a local file, one JSON object per line with ``prompt``, ``chosen``, ``rejected``.
    * the tree language (``llm.tree_language``): a treemdp problem as token sequences.

Rows are numbered from 1 in source order (row n of a JSONL file is its line n). A bad row (a
missing or non-string field, an empty prompt or response, chosen == rejected, or a prompt longer
than ``max_length`` tokens) raises ``BadRowError`` naming the row, or with ``on_bad_row="skip"``
is dropped and counted.

Truncation follows the DPO reference code (``tokenize_batch_element``): responses get EOS
appended; if prompt + the longer response exceeds ``max_length`` (512), the prompt is cut to
``max_prompt_length`` (256) tokens, keeping its start (``keep_start``; ``keep_end`` keeps its
end); if that is still too long, both responses are cut to ``max_length − max_prompt_length``.
A prompt longer than ``max_length`` on its own is treated as a bad row rather than silently cut
to its first 256 tokens.
"""

from __future__ import annotations

import codecs
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor

__all__ = [
    "BadRow",
    "BadRowError",
    "Batch",
    "Example",
    "TruncationConfig",
    "byte_tokenizer",
    "collate_pairs",
    "collate_sft",
    "load_tokenizer",
    "read_jsonl",
    "read_tldr",
    "tokenize_rows",
    "truncate",
]

FIELDS = ("prompt", "chosen", "rejected")


class BadRowError(ValueError):
    """A preference row that cannot be used; the message names the row number and the reason."""


@dataclass(frozen=True)
class TruncationConfig:
    """Token limits (the DPO reference code's defaults)."""

    max_length: int = 512  # prompt + response tokens of one sequence, after truncation
    max_prompt_length: int = 256  # prompt tokens kept when a sequence is too long
    truncation_mode: Literal["keep_start", "keep_end"] = "keep_start"  # which prompt end to keep

    def __post_init__(self) -> None:
        if self.max_length < 2:
            raise ValueError(f"max_length must be >= 2; got {self.max_length}")
        if not 1 <= self.max_prompt_length < self.max_length:
            raise ValueError(
                f"max_prompt_length must lie in [1, max_length - 1 = {self.max_length - 1}]; "
                f"got {self.max_prompt_length}"
            )
        if self.truncation_mode not in ("keep_start", "keep_end"):
            raise ValueError(
                f"truncation_mode must be 'keep_start' or 'keep_end'; got {self.truncation_mode!r}"
            )


@dataclass(frozen=True)
class Example:
    """One tokenized preference pair (after truncation).

    Attributes:
        prompt: prompt token ids (at least one).
        chosen: chosen-response token ids (at least one).
        rejected: rejected-response token ids (at least one).
        row: the source row number (from 1).
    """

    prompt: tuple[int, ...]
    chosen: tuple[int, ...]
    rejected: tuple[int, ...]
    row: int

    @property
    def n_tokens(self) -> int:
        """Tokens of both sequences (prompt counted twice, as the forward sees it)."""
        return 2 * len(self.prompt) + len(self.chosen) + len(self.rejected)


def truncate(
    prompt: Sequence[int], chosen: Sequence[int], rejected: Sequence[int], cfg: TruncationConfig
) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
    """Truncate one pair as the DPO reference code does (see the module docstring)."""
    p, c, r = tuple(prompt), tuple(chosen), tuple(rejected)
    if len(p) + max(len(c), len(r)) > cfg.max_length:
        k = cfg.max_prompt_length
        p = p[:k] if cfg.truncation_mode == "keep_start" else p[-k:]
    if len(p) + max(len(c), len(r)) > cfg.max_length:
        keep = cfg.max_length - cfg.max_prompt_length
        c, r = c[:keep], r[:keep]
    return p, c, r


@dataclass(frozen=True)
class BadRow:
    """A row ``read_jsonl`` could not parse, with the reason (reported by ``tokenize_rows``)."""

    reason: str


def _check_text(row: Any, n: int) -> tuple[str, str, str]:
    if isinstance(row, BadRow):
        raise BadRowError(f"row {n}: {row.reason}")
    if not isinstance(row, Mapping):
        raise BadRowError(f"row {n}: expected a JSON object with {', '.join(FIELDS)}")
    missing = [f for f in FIELDS if not isinstance(row.get(f), str)]
    if missing:
        raise BadRowError(f"row {n}: missing or non-string field(s) {', '.join(missing)}")
    prompt, chosen, rejected = (row[f] for f in FIELDS)
    if not prompt.strip():
        raise BadRowError(f"row {n}: empty prompt")
    for name, text in (("chosen", chosen), ("rejected", rejected)):
        if not text.strip():
            raise BadRowError(f"row {n}: empty {name} response")
    if chosen == rejected:
        raise BadRowError(f"row {n}: chosen == rejected")
    return prompt, chosen, rejected


def tokenize_rows(
    rows: Iterable[tuple[int, Any]],
    tokenizer: Any,
    cfg: TruncationConfig = TruncationConfig(),
    *,
    add_eos: bool = True,
    on_bad_row: Literal["error", "skip"] = "error",
) -> tuple[list[Example], list[str]]:
    """Validate, tokenize and truncate numbered rows.

    Args:
        rows: ``(row number, row)`` pairs; a row is a mapping with string fields ``prompt``,
            ``chosen``, ``rejected`` (anything else is a bad row).
        tokenizer: a transformers tokenizer; texts are tokenized separately without special
            tokens, as in the DPO code, and ``tokenizer.eos_token_id`` ends each response.
        cfg: truncation limits.
        add_eos: append EOS to each response (off for the tree language).
        on_bad_row: ``"error"`` raises ``BadRowError`` at the first bad row, ``"skip"`` drops it.

    Returns:
        ``(examples, skipped)``: the good examples in source order and one message per skipped
        row (empty unless ``on_bad_row="skip"``).
    """
    if on_bad_row not in ("error", "skip"):
        raise ValueError(f"on_bad_row must be 'error' or 'skip'; got {on_bad_row!r}")
    eos = [tokenizer.eos_token_id] if add_eos else []
    if add_eos and tokenizer.eos_token_id is None:
        raise ValueError("tokenizer has no eos_token_id; pass add_eos=False or set one")
    examples: list[Example] = []
    skipped: list[str] = []
    for n, row in rows:
        try:
            prompt, chosen, rejected = _check_text(row, n)
            ids = [
                tokenizer(t, add_special_tokens=False)["input_ids"]
                for t in (prompt, chosen, rejected)
            ]
            if len(ids[0]) > cfg.max_length:
                raise BadRowError(
                    f"row {n}: prompt has {len(ids[0])} tokens, over max_length={cfg.max_length}"
                )
            if not ids[0]:
                raise BadRowError(f"row {n}: prompt has no tokens")
            p, c, r = truncate(ids[0], ids[1] + eos, ids[2] + eos, cfg)
            if not c or not r:
                raise BadRowError(f"row {n}: a response has no tokens")
            if c == r:
                raise BadRowError(f"row {n}: chosen == rejected after tokenization and truncation")
        except BadRowError as err:
            if on_bad_row == "error":
                raise
            skipped.append(str(err))
            continue
        examples.append(Example(p, c, r, n))
    return examples, skipped


# ---------------------------------------------------------------------------------- sources
def read_jsonl(path: str | Path) -> list[tuple[int, Any]]:
    """Numbered rows of a JSONL file (row n = line n); blank lines are skipped. A line that is
    not UTF-8 text or not JSON becomes a ``BadRow`` saying why, which ``tokenize_rows`` reports
    (or skips) like any bad row. A UTF-8 byte-order mark at the start is ignored."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"data file {path} is a folder; name a JSONL file")
    if not path.is_file():
        raise ValueError(f"data file {path} does not exist")
    rows: list[tuple[int, Any]] = []
    with path.open("rb") as f:
        for n, raw in enumerate(f, start=1):
            if n == 1 and raw.startswith(codecs.BOM_UTF8):  # written by some editors
                raw = raw[len(codecs.BOM_UTF8) :]
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                rows.append((n, BadRow(f"not UTF-8 text (byte 0x{raw[e.start]:02x} at column "
                                       f"{e.start + 1})")))  # fmt: skip
                continue
            if not line.strip():
                continue
            try:
                rows.append((n, json.loads(line)))
            except json.JSONDecodeError as e:
                rows.append((n, BadRow(f"not JSON ({e.msg} at column {e.colno})")))
    return rows


def tldr_row(record: Mapping[str, Any]) -> dict[str, Any]:
    """One ``openai/summarize_from_feedback`` comparison as prompt/chosen/rejected text.

    The prompt is the TL;DR template of the DPO/TRL TL;DR recipes::

        SUBREDDIT: r/{subreddit}\\nTITLE: {title}\\nPOST: {post}\\nTL;DR:

    and each summary gets a leading space. Records that already have prompt/chosen/rejected
    pass through unchanged.
    """
    if all(f in record for f in FIELDS):
        return {f: record[f] for f in FIELDS}
    try:
        info, summaries, choice = record["info"], record["summaries"], int(record["choice"])
        prompt = (
            f"SUBREDDIT: r/{info['subreddit']}\nTITLE: {info['title']}\n"
            f"POST: {info['post'] or info.get('article', '')}\nTL;DR:"
        )
        chosen = " " + summaries[choice]["text"].strip()
        rejected = " " + summaries[1 - choice]["text"].strip()
    except (KeyError, TypeError, IndexError, ValueError):
        return {}  # reported as a bad row (missing fields)
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected}


def read_tldr(
    name: str = "openai/summarize_from_feedback",
    config: str | None = "comparisons",
    split: str = "train",
    *,
    limit: int | None = None,
) -> list[tuple[int, Any]]:
    """Numbered TL;DR preference rows from the hub via ``datasets`` (needs the hub or its cache).

    Raises:
        ModuleNotFoundError: ``datasets`` is not installed (the message says how to install it).
    """
    try:
        import datasets
    except ImportError:
        raise ModuleNotFoundError(
            "the tldr source needs the 'datasets' package: "
            "pip install -c constraints.txt datasets (or use --source jsonl)"
        ) from None
    ds = datasets.load_dataset(name, config, split=split)
    if limit is not None:
        ds = ds.select(range(min(limit, len(ds))))
    return [(i + 1, tldr_row(rec)) for i, rec in enumerate(ds)]


# ------------------------------------------------------------------------------- tokenizers
def byte_tokenizer() -> Any:
    """A byte-level tokenizer (256 byte tokens + ``<|endoftext|>`` = id 0, also the pad) built
    in code: any text round-trips and nothing is downloaded. For random models of a named shape
    when no real tokenizer is at hand."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<|endoftext|>": 0}
    for ch in sorted(pre_tokenizers.ByteLevel.alphabet()):
        vocab[ch] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<|endoftext|>"
    )


def load_tokenizer(name_or_path: str | Path) -> Any:
    """A tokenizer from the hub or a folder; ``byte`` builds ``byte_tokenizer()``. Without a pad
    token (Pythia has none) EOS pads, as in the DPO code; padding never enters a log-prob."""
    if str(name_or_path) == "byte":
        return byte_tokenizer()
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(name_or_path))
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


# ---------------------------------------------------------------------------------- batches
@dataclass(frozen=True)
class Batch:
    """Right-padded rows for one forward.

    Attributes:
        input_ids: Shape (N, T), int64; N = 2B for pairs (chosen rows, then rejected rows).
        attention_mask: 1 on real tokens. Shape (N, T), int64.
        response_mask: True on response tokens. Shape (N, T), bool.
    """

    input_ids: Tensor
    attention_mask: Tensor
    response_mask: Tensor

    @property
    def n_tokens(self) -> int:
        """Real (non-padding) tokens in the batch."""
        return int(self.attention_mask.sum())

    def tensors(self) -> tuple[Tensor, Tensor, Tensor]:
        """``(input_ids, attention_mask, response_mask)``, as ``llm.logprobs`` takes them."""
        return self.input_ids, self.attention_mask, self.response_mask


def _collate(rows: Sequence[tuple[Sequence[int], Sequence[int]]], pad_id: int) -> Batch:
    T = max(len(p) + len(r) for p, r in rows)
    ids = torch.full((len(rows), T), pad_id, dtype=torch.long)
    att = torch.zeros((len(rows), T), dtype=torch.long)
    resp = torch.zeros((len(rows), T), dtype=torch.bool)
    for i, (p, r) in enumerate(rows):
        n = len(p) + len(r)
        ids[i, :n] = torch.tensor([*p, *r], dtype=torch.long)
        att[i, :n] = 1
        resp[i, len(p) : n] = True
    return Batch(ids, att, resp)


def collate_pairs(examples: Sequence[Example], pad_id: int) -> Batch:
    """2B rows: prompt+chosen for each example, then prompt+rejected (one forward for both)."""
    if not examples:
        raise ValueError("examples must be non-empty")
    rows = [(e.prompt, e.chosen) for e in examples] + [(e.prompt, e.rejected) for e in examples]
    return _collate(rows, pad_id)


def collate_sft(examples: Sequence[Example], pad_id: int) -> Batch:
    """B rows of prompt+chosen, for supervised fine-tuning on the chosen responses."""
    if not examples:
        raise ValueError("examples must be non-empty")
    return _collate([(e.prompt, e.chosen) for e in examples], pad_id)
