"""Preference data: DPO-code truncation, bad rows by row number, JSONL/TL;DR sources, batches."""

from __future__ import annotations

import builtins
import json

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from llm.data import (
    BadRowError,
    Example,
    TruncationConfig,
    collate_pairs,
    load_tokenizer,
    read_jsonl,
    read_tldr,
    tldr_row,
    tokenize_rows,
    truncate,
)


def test_truncation_matches_the_dpo_code():
    cfg = TruncationConfig(max_length=10, max_prompt_length=4)
    p, c, r = list(range(8)), [100, 101], [200]
    # Fits (8 + 2 = 10): nothing is cut.
    assert truncate(p, c, r, cfg) == (tuple(p), (100, 101), (200,))
    # Too long: the prompt keeps its first 4 tokens, then the responses fit.
    long_c = list(range(100, 105))
    assert truncate(p, long_c, r, cfg) == ((0, 1, 2, 3), tuple(long_c), (200,))
    keep_end = TruncationConfig(max_length=10, max_prompt_length=4, truncation_mode="keep_end")
    assert truncate(p, long_c, r, keep_end)[0] == (4, 5, 6, 7)
    # Still too long after cutting the prompt: both responses cut to 10 - 4 = 6 tokens.
    very_long = list(range(100, 120))
    assert truncate(p, very_long, very_long[:8], cfg) == (
        (0, 1, 2, 3),
        tuple(range(100, 106)),
        tuple(range(100, 106)),
    )


def test_truncation_config_checks():
    with pytest.raises(ValueError, match="max_prompt_length must lie in"):
        TruncationConfig(max_length=8, max_prompt_length=8)
    with pytest.raises(ValueError, match="truncation_mode"):
        TruncationConfig(truncation_mode="middle")


def test_default_limits_are_512_and_256_and_eos_ends_responses(tokenizer):
    cfg = TruncationConfig()
    assert (cfg.max_length, cfg.max_prompt_length) == (512, 256)
    row = {"prompt": "p" * 400, "chosen": "c" * 300, "rejected": "r"}
    (ex,), _ = tokenize_rows([(1, row)], tokenizer, cfg)
    assert len(ex.prompt) == 256 and len(ex.chosen) == 256  # 300 + EOS cut to 512 - 256
    assert ex.rejected[-1] == tokenizer.eos_token_id and len(ex.rejected) == 2


BAD = [
    ({"prompt": "p", "chosen": "a"}, "missing or non-string field\\(s\\) rejected"),
    ({"prompt": "p", "chosen": 3, "rejected": "b"}, "missing or non-string field\\(s\\) chosen"),
    ({"prompt": "p", "chosen": "  ", "rejected": "b"}, "empty chosen response"),
    ({"prompt": "p", "chosen": "a", "rejected": ""}, "empty rejected response"),
    ({"prompt": "", "chosen": "a", "rejected": "b"}, "empty prompt"),
    ({"prompt": "p", "chosen": "same", "rejected": "same"}, "chosen == rejected"),
    ({"prompt": "x" * 600, "chosen": "a", "rejected": "b"}, "prompt has 600 tokens, over max"),
    (None, "expected a JSON object"),
]


@pytest.mark.parametrize(("row", "message"), BAD)
def test_bad_rows_are_reported_by_row_number(tokenizer, row, message):
    good = {"prompt": "p", "chosen": "a", "rejected": "b"}
    rows = [(1, good), (2, good), (3, row)]
    with pytest.raises(BadRowError, match=f"^row 3: {message}"):
        tokenize_rows(rows, tokenizer)
    examples, skipped = tokenize_rows(rows, tokenizer, on_bad_row="skip")
    assert [e.row for e in examples] == [1, 2] and len(skipped) == 1
    assert skipped[0].startswith("row 3:")


def test_chosen_equal_after_truncation_is_bad(tokenizer):
    cfg = TruncationConfig(max_length=6, max_prompt_length=3)
    row = {"prompt": "pppp", "chosen": "abcdefX", "rejected": "abcdefY"}
    with pytest.raises(BadRowError, match="row 1: chosen == rejected after tokenization"):
        tokenize_rows([(1, row)], tokenizer, cfg)


def test_jsonl_rows_are_numbered_by_line(tmp_path, tokenizer):
    path = tmp_path / "pairs.jsonl"
    lines = [
        json.dumps({"prompt": "p1", "chosen": "a", "rejected": "b"}),
        "",
        "{not json",
        json.dumps({"prompt": "p4", "chosen": "a", "rejected": "a"}),
        json.dumps({"prompt": "p5", "chosen": "c", "rejected": "d"}),
    ]
    path.write_text("\n".join(lines) + "\n")
    rows = read_jsonl(path)
    assert [n for n, _ in rows] == [1, 3, 4, 5]
    examples, skipped = tokenize_rows(rows, tokenizer, on_bad_row="skip")
    assert [e.row for e in examples] == [1, 5]
    assert [s.split(":")[0] for s in skipped] == ["row 3", "row 4"]
    with pytest.raises(ValueError, match="does not exist"):
        read_jsonl(tmp_path / "missing.jsonl")


def test_tldr_row_builds_the_tldr_prompt():
    rec = {
        "info": {"subreddit": "cats", "title": "Help", "post": "My cat..."},
        "summaries": [{"text": "cat bad"}, {"text": " cat good "}],
        "choice": 1,
    }
    row = tldr_row(rec)
    assert row["prompt"] == "SUBREDDIT: r/cats\nTITLE: Help\nPOST: My cat...\nTL;DR:"
    assert (row["chosen"], row["rejected"]) == (" cat good", " cat bad")
    assert tldr_row({"prompt": "p", "chosen": "a", "rejected": "b", "x": 1}) == {
        "prompt": "p",
        "chosen": "a",
        "rejected": "b",
    }
    assert tldr_row({"info": {}}) == {}  # a malformed record becomes a bad row


def test_tldr_without_datasets_says_how_to_install(monkeypatch):
    real_import = builtins.__import__

    def no_datasets(name, *args, **kwargs):
        if name == "datasets":
            raise ImportError("No module named 'datasets'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_datasets)
    with pytest.raises(ModuleNotFoundError, match=r"pip install -c constraints\.txt datasets"):
        read_tldr()


def test_collate_pairs_layout():
    ex = [Example((1, 2), (3,), (4, 5, 6), 1), Example((7,), (8, 9), (10,), 2)]
    b = collate_pairs(ex, pad_id=0)
    assert b.input_ids.tolist() == [
        [1, 2, 3, 0, 0], [7, 8, 9, 0, 0], [1, 2, 4, 5, 6], [7, 10, 0, 0, 0]]  # fmt: skip
    assert b.attention_mask.sum(1).tolist() == [3, 3, 5, 2]
    assert b.response_mask.int().tolist() == [
        [0, 0, 1, 0, 0], [0, 1, 1, 0, 0], [0, 0, 1, 1, 1], [0, 1, 0, 0, 0]]  # fmt: skip
    assert b.n_tokens == 13 and ex[0].n_tokens == 8
    with pytest.raises(ValueError, match="non-empty"):
        collate_pairs([], 0)


def test_byte_tokenizer_round_trips_any_text(tokenizer):
    text = "TL;DR: héllo → wörld 🐈\n"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(ids) == text
    assert load_tokenizer("byte")(text, add_special_tokens=False)["input_ids"] == ids
    assert tokenizer.eos_token_id == tokenizer.pad_token_id == 0
    assert torch.tensor(ids).max() < len(tokenizer)


@given(
    p=st.lists(st.integers(0, 9), min_size=1, max_size=40),
    c=st.lists(st.integers(0, 9), min_size=1, max_size=40),
    r=st.lists(st.integers(0, 9), min_size=1, max_size=40),
    max_length=st.integers(2, 50),
    data=st.data(),
)
def test_truncation_invariants(p, c, r, max_length, data):
    k = data.draw(st.integers(1, max_length - 1))
    mode = data.draw(st.sampled_from(["keep_start", "keep_end"]))
    cfg = TruncationConfig(max_length=max_length, max_prompt_length=k, truncation_mode=mode)
    tp, tc, tr = truncate(p, c, r, cfg)
    if len(p) + max(len(c), len(r)) <= max_length:
        assert (tp, tc, tr) == (tuple(p), tuple(c), tuple(r))  # what fits is never cut
    else:
        assert len(tp) + max(len(tc), len(tr)) <= max_length
    # the prompt keeps its start (or end); responses keep their start
    assert tuple(p[: len(tp)] if mode == "keep_start" else p[len(p) - len(tp) :]) == tp
    assert tc == tuple(c[: len(tc)]) and tr == tuple(r[: len(tr)]) and tp and tc and tr
