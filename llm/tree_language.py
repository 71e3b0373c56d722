"""The tree language: a treemdp problem rendered as token sequences for a language model.

One token per root state (the prompt: ``<s{k}>`` for prompt k) and one token per action
(``a{j}``). Response i of a ``treemdp.tree.Tree`` is the token sequence of
``tree.response_actions(i)``; no EOS is appended, since in the tree a leaf ends the response
(moving to s∞ takes no action). An LLM trained on these sequences is trained on exactly the
toy's problem: its sequence log-prob of a response is the toy policy's log π(y|x).

Pairs are the stable interface of treemdp's data module: response-index tensors ``chosen`` and
``rejected`` of shape (P,), indices into the tree's leaves. Pair p is row p + 1.
"""

from __future__ import annotations

from typing import Any, Literal

from torch import Tensor

from llm.data import BadRowError, Example
from treemdp.tree import Tree

__all__ = ["PAD", "decode_example", "tree_examples", "tree_tokenizer"]

PAD = "<pad>"


def _vocab(tree: Tree) -> dict[str, int]:
    vocab = {PAD: 0}
    for k in range(tree.n_prompts):
        vocab[f"<s{k}>"] = len(vocab)
    for a in range(tree.branching):
        vocab[f"a{a}"] = len(vocab)
    return vocab


def tree_tokenizer(tree: Tree) -> Any:
    """A word-level tokenizer with ``<pad>`` (id 0), one token per prompt ``<s0>`` … and one per
    action ``a0`` … ``a{b-1}``; texts are these tokens separated by spaces."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(vocab=_vocab(tree), unk_token=PAD))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token=PAD, eos_token=PAD)


def tree_examples(
    tree: Tree,
    chosen: Tensor,
    rejected: Tensor,
    *,
    on_bad_row: Literal["error", "skip"] = "error",
) -> tuple[list[Example], list[str]]:
    """The pairs of a treemdp dataset as token examples.

    Args:
        tree: the problem's tree or forest.
        chosen: response indices of y_w, in [0, L). Shape (P,), int64.
        rejected: response indices of y_l. Shape (P,), int64.
        on_bad_row: a pair with an index out of range, chosen == rejected, or responses of two
            different prompts raises ``BadRowError`` (``"error"``) or is dropped (``"skip"``).

    Returns:
        ``(examples, skipped)`` as in ``llm.data.tokenize_rows``; token ids follow
        ``tree_tokenizer(tree)``.
    """
    if chosen.dim() != 1 or chosen.shape != rejected.shape:
        raise ValueError(
            "chosen and rejected must be 1-D tensors of one length (P,); got "
            f"{tuple(chosen.shape)} and {tuple(rejected.shape)}"
        )
    if on_bad_row not in ("error", "skip"):
        raise ValueError(f"on_bad_row must be 'error' or 'skip'; got {on_bad_row!r}")
    vocab = _vocab(tree)
    first_action = vocab["a0"]
    L = tree.n_responses
    examples: list[Example] = []
    skipped: list[str] = []
    for p, (c, r) in enumerate(zip(chosen.tolist(), rejected.tolist(), strict=True)):
        n = p + 1
        try:
            if not (0 <= c < L and 0 <= r < L):
                raise BadRowError(f"row {n}: response index out of [0, {L - 1}] ({c}, {r})")
            if c == r:
                raise BadRowError(f"row {n}: chosen == rejected (response {c})")
            k = int(tree.leaf_prompt[c])
            if k != int(tree.leaf_prompt[r]):
                raise BadRowError(f"row {n}: chosen and rejected answer different prompts")
        except BadRowError as err:
            if on_bad_row == "error":
                raise
            skipped.append(str(err))
            continue
        examples.append(
            Example(
                prompt=(vocab[f"<s{k}>"],),
                chosen=tuple(first_action + a for a in tree.response_actions(c)),
                rejected=tuple(first_action + a for a in tree.response_actions(r)),
                row=n,
            )
        )
    return examples, skipped


def decode_example(tree: Tree, example: Example) -> tuple[int, tuple[int, ...], tuple[int, ...]]:
    """``(prompt index, chosen actions, rejected actions)`` of a tree-language example."""
    first_action = 1 + tree.n_prompts
    return (
        example.prompt[0] - 1,
        tuple(t - first_action for t in example.chosen),
        tuple(t - first_action for t in example.rejected),
    )
