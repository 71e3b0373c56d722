"""Fixtures for the llm tests: tiny random GPT-NeoX models (hidden 32, 2 layers), a byte-level
tokenizer built in code, small preference datasets. Nothing is downloaded (HF_HUB_OFFLINE=1)."""

from __future__ import annotations

import pytest
import torch

from llm.data import Example, TruncationConfig, byte_tokenizer, tokenize_rows
from llm.model import build_model

# The prompts and responses of the small text dataset (lengths differ, so padding is exercised).
TEXT_ROWS = [
    {"prompt": "POST: my cat ate a lemon.\nTL;DR:", "chosen": " cat ate lemon", "rejected": " hi"},
    {"prompt": "Q: 2+2?", "chosen": " 4", "rejected": " five, I think, or maybe six"},
    {"prompt": "TITLE: moving\nPOST: new city, no friends", "chosen": " lonely", "rejected": " x"},
    {"prompt": "a", "chosen": " bb", "rejected": " ccc"},
    {"prompt": "Summarize: rain all week", "chosen": " rainy week", "rejected": " sunny"},
    {"prompt": "hello", "chosen": " world", "rejected": " there friend"},
    {"prompt": "abc def", "chosen": " ghi", "rejected": " jkl mno"},
    {"prompt": "one two three", "chosen": " four", "rejected": " zero"},
]


@pytest.fixture(autouse=True)
def _one_thread():
    # Two cores shared with other test workers; one thread also keeps CPU math deterministic.
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="session")
def tokenizer():
    return byte_tokenizer()


@pytest.fixture(scope="session")
def text_examples(tokenizer) -> list[Example]:
    examples, skipped = tokenize_rows(enumerate(TEXT_ROWS, 1), tokenizer, TruncationConfig())
    assert not skipped
    return examples


@pytest.fixture()
def tiny_model(tokenizer):
    """A random tiny GPT-NeoX (hidden 32, 2 layers) over the byte tokenizer's 257 tokens."""
    return build_model("tiny", seed=0, vocab_size=len(tokenizer))
