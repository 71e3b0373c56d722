"""Models: Pythia shapes, dtype policy, the real from_pretrained path on a test-written folder."""

from __future__ import annotations

import pytest
import torch

from llm.data import collate_pairs, load_tokenizer
from llm.logprobs import concatenated_logps
from llm.model import (
    PYTHIA_SHAPES,
    build_model,
    load_model,
    load_policy_and_reference,
    n_params,
    parse_dtype,
    pythia_config,
)


def test_pythia_shapes_have_the_published_parameter_counts():
    # Pythia-14m: 14,067,712 parameters (the hub checkpoint's count); embedding 50304 × 128.
    m = build_model("14m")
    assert n_params(m) == 14_067_712
    assert n_params(m, non_embedding=True) == 14_067_712 - 50_304 * 128
    c = pythia_config("6.9b")
    assert (c.hidden_size, c.num_hidden_layers, c.intermediate_size) == (4096, 32, 16384)
    assert not c.tie_word_embeddings and c.use_parallel_residual


def test_build_model_is_seeded_and_leaves_the_global_rng_alone():
    state = torch.get_rng_state()
    a, b = build_model("tiny", seed=3), build_model("tiny", seed=3)
    assert torch.equal(torch.get_rng_state(), state)
    assert all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters(), strict=True))
    assert not torch.equal(
        build_model("tiny", seed=4).get_output_embeddings().weight, a.get_output_embeddings().weight
    )
    assert not a.training


def test_argument_checks():
    with pytest.raises(ValueError, match="size must be one of tiny, 14m"):
        build_model("15m")
    with pytest.raises(ValueError, match="dtype must be one of fp32, fp16, bf16"):
        parse_dtype("fp8")
    with pytest.raises(ValueError, match="does not exist"):
        load_model("./no/such/folder")
    assert set(PYTHIA_SHAPES) >= {"tiny", "14m", "70m", "1b", "2.8b", "6.9b"}


def test_save_and_load_round_trip_through_a_folder(tmp_path, tokenizer, text_examples):
    """The real from_pretrained loading code, on a folder this test writes (no hub)."""
    original = build_model("tiny", seed=7, vocab_size=len(tokenizer))
    original.save_pretrained(tmp_path / "pythia-tiny")
    tokenizer.save_pretrained(tmp_path / "pythia-tiny")
    folder = str(tmp_path / "pythia-tiny")
    policy, reference = load_policy_and_reference(folder, reference_dtype=torch.bfloat16)
    assert policy.get_output_embeddings().weight.dtype == torch.float32
    assert reference.get_output_embeddings().weight.dtype == torch.bfloat16
    assert not any(p.requires_grad for p in reference.parameters())
    assert all(p.requires_grad for p in policy.parameters())
    for (k, v), (k2, v2) in zip(
        original.state_dict().items(), policy.state_dict().items(), strict=True
    ):
        assert k == k2 and torch.equal(v, v2), k
    b = collate_pairs(text_examples, 0)
    with torch.no_grad():
        x = concatenated_logps(original, b.input_ids, b.attention_mask, b.response_mask)
        y = concatenated_logps(policy, b.input_ids, b.attention_mask, b.response_mask)
    assert torch.equal(x.chosen, y.chosen) and torch.equal(x.rejected, y.rejected)
    loaded_tok = load_tokenizer(folder)
    assert loaded_tok("TL;DR: x")["input_ids"] == tokenizer("TL;DR: x")["input_ids"]
