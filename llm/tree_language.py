"""The tree language: a treemdp problem rendered as token sequences for a language model.

One token per root state (the prompt: ``<s{k}>`` for prompt k) and one token per action
(``a{j}``). Response i of a ``treemdp.tree.Tree`` is the token sequence of
``tree.response_actions(i)``; no EOS is appended, since in the tree a leaf ends the response
(moving to s∞ takes no action). An LLM trained on these sequences is trained on exactly the
toy's problem: its sequence log-prob of a response is the toy policy's log π(y|x).

``TreeLanguage`` is the one definition of this layout (vocabulary, tokenizer, encoding of prompts,
actions and responses, decoding back to leaves); everything that builds or reads tree-language
tokens goes through it.

Pairs are the stable interface of treemdp's data module: response-index tensors ``chosen`` and
``rejected`` of shape (P,), indices into the tree's leaves. Pair p is row p + 1.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any, ClassVar, Literal

import torch
from torch import Tensor

from llm.data import BadRowError, Example
from treemdp.tree import Tree

__all__ = ["TreeLanguage"]


@dataclass(frozen=True, eq=False)
class TreeLanguage:
    """The token layout of one tree: ``<pad>`` (id 0), then ``<s0>`` … ``<s{K-1}>`` (one per
    prompt), then ``a0`` … ``a{b-1}`` (one per action).

    Attributes:
        tree: the problem's tree or forest (K = ``tree.n_prompts`` prompts, b = ``tree.branching``
            actions).
    """

    tree: Tree
    PAD: ClassVar[str] = "<pad>"
    PAD_ID: ClassVar[int] = 0

    @property
    def first_action(self) -> int:
        """Token id of ``a0``; action a is token ``first_action + a``."""
        return 1 + self.tree.n_prompts

    @property
    def actions(self) -> slice:
        """The action tokens' ids, ``a0`` … ``a{b-1}``, as a slice of the vocabulary."""
        return slice(self.first_action, self.first_action + self.tree.branching)

    @property
    def vocab_size(self) -> int:
        """Tokens in the language: 1 + K + b."""
        return self.first_action + self.tree.branching

    def vocabulary(self) -> dict[str, int]:
        """Token text → id, in id order."""
        vocab = {self.PAD: self.PAD_ID}
        for k in range(self.tree.n_prompts):
            vocab[f"<s{k}>"] = len(vocab)
        for a in range(self.tree.branching):
            vocab[f"a{a}"] = len(vocab)
        return vocab

    def tokenizer(self) -> Any:
        """A word-level ``PreTrainedTokenizerFast`` over ``vocabulary()``: texts are tokens
        separated by spaces; ``<pad>`` is the pad, EOS and unknown token."""
        from tokenizers import Tokenizer, models, pre_tokenizers
        from transformers import PreTrainedTokenizerFast

        tok = Tokenizer(models.WordLevel(vocab=self.vocabulary(), unk_token=self.PAD))
        tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
        return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token=self.PAD, eos_token=self.PAD)

    # ------------------------------------------------------------------------------ encode
    def prompt(self, k: int) -> tuple[int]:
        """The prompt of root k: ``(<s{k}>,)``."""
        return (1 + k,)

    def prompts(self, n: int) -> list[tuple[int]]:
        """``n`` prompts cycling through the roots (prompt i asks root i mod K), so every root
        is asked equally often when K divides n."""
        return [self.prompt(i % self.tree.n_prompts) for i in range(n)]

    def action_token(self, action: int) -> int:
        """The token of action ``action`` (``a{action}``)."""
        return self.first_action + action

    def response(self, leaf: int) -> tuple[int, ...]:
        """The action tokens of response ``leaf`` (no EOS)."""
        return tuple(self.action_token(a) for a in self.tree.response_actions(leaf))

    def node_tokens(self, node: int) -> tuple[int, ...]:
        """The prompt token of ``node``'s root, then one token per action on the way to it."""
        tree, path = self.tree, []
        while int(tree.parent[node]) >= 0:
            path.append(self.action_token(int(tree.action[node])))
            node = int(tree.parent[node])
        return (*self.prompt(int(tree.node_prompt[node])), *reversed(path))

    def examples(
        self,
        chosen: Tensor,
        rejected: Tensor,
        *,
        on_bad_row: Literal["error", "skip"] = "error",
    ) -> tuple[list[Example], list[str]]:
        """The pairs of a treemdp dataset as token examples.

        Args:
            chosen: response indices of y_w, in [0, L). Shape (P,), int64.
            rejected: response indices of y_l. Shape (P,), int64.
            on_bad_row: a pair with an index out of range, chosen == rejected, or responses of
                two different prompts raises ``BadRowError`` (``"error"``) or is dropped
                (``"skip"``).

        Returns:
            ``(examples, skipped)`` as in ``llm.data.tokenize_rows``.
        """
        if chosen.dim() != 1 or chosen.shape != rejected.shape:
            raise ValueError(
                "chosen and rejected must be 1-D tensors of one length (P,); got "
                f"{tuple(chosen.shape)} and {tuple(rejected.shape)}"
            )
        if on_bad_row not in ("error", "skip"):
            raise ValueError(f"on_bad_row must be 'error' or 'skip'; got {on_bad_row!r}")
        examples: list[Example] = []
        skipped: list[str] = []
        for p, (c, r) in enumerate(zip(chosen.tolist(), rejected.tolist(), strict=True)):
            try:
                k = self._pair_prompt(p + 1, c, r)
            except BadRowError as err:
                if on_bad_row == "error":
                    raise
                skipped.append(str(err))
                continue
            examples.append(Example(self.prompt(k), self.response(c), self.response(r), p + 1))
        return examples, skipped

    def _pair_prompt(self, row: int, chosen: int, rejected: int) -> int:
        """The prompt both responses of a pair answer; ``BadRowError`` naming ``row`` if none."""
        L = self.tree.n_responses
        if not (0 <= chosen < L and 0 <= rejected < L):
            raise BadRowError(
                f"row {row}: response index out of [0, {L - 1}] ({chosen}, {rejected})"
            )
        if chosen == rejected:
            raise BadRowError(f"row {row}: chosen == rejected (response {chosen})")
        k = int(self.tree.leaf_prompt[chosen])
        if k != int(self.tree.leaf_prompt[rejected]):
            raise BadRowError(f"row {row}: chosen and rejected answer different prompts")
        return k

    # ------------------------------------------------------------------------------ decode
    def root(self, prompt: Sequence[int]) -> int:
        """The root (prompt index k) a tree-language prompt asks; ValueError if it is none."""
        k = prompt[-1] - 1
        if not 0 <= k < self.tree.n_prompts:
            raise ValueError("prompts must be tree-language root tokens <s0> ... <sK>")
        return k

    def action(self, token: int | Tensor) -> int | Tensor:
        """The action of an action token, or of a tensor of them (the inverse of
        ``action_token``)."""
        return token - self.first_action

    @cached_property
    def leaf_index(self) -> dict[tuple[int, ...], int]:
        """(prompt token, action tokens...) → leaf index, for every leaf of the tree."""
        # One walk up the tree for all leaves at once (level by level), not one per leaf: a
        # language is built per evaluated checkpoint, and trees have thousands of leaves.
        tree = self.tree
        node, depth = tree.leaves.clone(), tree.response_length
        tokens = torch.zeros(tree.n_responses, tree.max_depth, dtype=torch.long)
        for back in range(tree.max_depth):
            live = depth > back  # leaves with a (back+1)-th action from the end
            tokens[live, depth[live] - 1 - back] = tree.action[node[live]] + self.first_action
            node = torch.where(live, tree.parent[node], node)
        prompts = (tree.leaf_prompt + 1).tolist()  # self.prompt(k) == (1 + k,)
        rows, lengths = tokens.tolist(), depth.tolist()
        return {(prompts[i], *rows[i][: lengths[i]]): i for i in range(tree.n_responses)}

    def decode(self, ids: Sequence[int]) -> int:
        """The leaf whose prompt and response tokens are ``ids``; −1 when ``ids`` is not a
        prompt followed by a whole response of the tree."""
        return self.leaf_index.get(tuple(ids), -1)

    def decode_example(self, example: Example) -> tuple[int, tuple[int, ...], tuple[int, ...]]:
        """``(prompt index, chosen actions, rejected actions)`` of a tree-language example."""
        return (
            self.root(example.prompt),
            tuple(self.action(t) for t in example.chosen),
            tuple(self.action(t) for t in example.rejected),
        )
