"""Response log-probs: oracle (per-token loop), concatenated = separate forwards, padding and
truncation invariance, dtype policy, the output projection in blocks."""

from __future__ import annotations

import pytest
import torch

from llm import logprobs
from llm.data import Example, collate_pairs, collate_sft
from llm.logprobs import PairLogps, concatenated_logps, response_logps, token_logps
from llm.model import build_model
from tests.llm.helpers_llm import perturbed
from treemdp import objectives


def loop_logps(model, example_rows):
    """Oracle: full-vocabulary log_softmax of each row alone, summed token by token in Python."""
    out = []
    for prompt, response in example_rows:
        ids = torch.tensor([[*prompt, *response]])
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=ids).logits[0].double(), dim=-1)
        total = 0.0
        for t in range(len(prompt), ids.shape[1]):
            total += float(logp[t - 1, ids[0, t]])
        out.append(total)
    return torch.tensor(out, dtype=torch.float64)


def test_summed_logps_equal_per_token_loop(tiny_model, text_examples):
    batch = collate_sft(text_examples, pad_id=0)
    with torch.no_grad():
        logp, n = response_logps(
            tiny_model, batch.input_ids, batch.attention_mask, batch.response_mask
        )
    expected = loop_logps(tiny_model, [(e.prompt, e.chosen) for e in text_examples])
    torch.testing.assert_close(logp.double(), expected, atol=1e-4, rtol=1e-5)
    assert n.tolist() == [len(e.chosen) for e in text_examples]
    assert logp.dtype == torch.float32


def test_concatenated_forward_equals_two_forwards(tiny_model, text_examples):
    pol = perturbed(tiny_model)
    batch = collate_pairs(text_examples, pad_id=0)
    with torch.no_grad():
        both = concatenated_logps(pol, batch.input_ids, batch.attention_mask, batch.response_mask)
        chosen = collate_sft(text_examples, 0)
        rej_examples = [Example(e.prompt, e.rejected, e.chosen, e.row) for e in text_examples]
        rejected = collate_sft(rej_examples, 0)
        c, nc = response_logps(pol, chosen.input_ids, chosen.attention_mask, chosen.response_mask)
        r, nr = response_logps(
            pol, rejected.input_ids, rejected.attention_mask, rejected.response_mask
        )
    torch.testing.assert_close(both.chosen, c, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(both.rejected, r, atol=1e-5, rtol=1e-5)
    assert both.len_chosen.tolist() == nc.tolist() and both.len_rejected.tolist() == nr.tolist()


def test_padding_does_not_change_logps(tiny_model, text_examples):
    batch = collate_sft(text_examples, pad_id=0)
    extra = 7  # more right-padding, filled with a token that is not the pad id
    ids = torch.cat([batch.input_ids, torch.full((len(text_examples), extra), 5)], dim=1)
    att = torch.cat(
        [batch.attention_mask, torch.zeros(len(text_examples), extra, dtype=torch.long)], 1
    )
    resp = torch.cat(
        [batch.response_mask, torch.zeros(len(text_examples), extra, dtype=torch.bool)], 1
    )
    with torch.no_grad():
        a, _ = response_logps(
            tiny_model, batch.input_ids, batch.attention_mask, batch.response_mask
        )
        b, _ = response_logps(tiny_model, ids, att, resp)
        alone = [
            response_logps(
                tiny_model,
                *(
                    t[i : i + 1, : len(e.prompt) + len(e.chosen)]
                    for t in (batch.input_ids, batch.attention_mask, batch.response_mask)
                ),
            )[0]
            for i, e in enumerate(text_examples)
        ]
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(a, torch.cat(alone), atol=1e-5, rtol=1e-5)


def test_truncating_a_response_keeps_the_logps_of_its_kept_tokens(tiny_model):
    # A causal model scores token t from tokens < t, so cutting the response's tail leaves the
    # kept tokens' log-probs unchanged: logp(y[:k]) = Σ_{t<k} of the full sequence's terms.
    prompt, response = (3, 17, 42), (9, 100, 7, 55, 201, 13)
    full = loop_logps(tiny_model, [(prompt, response)])
    for k in range(1, len(response) + 1):
        b = collate_sft([Example(prompt, response[:k], (1,), 1)], 0)
        with torch.no_grad():
            cut, _ = response_logps(tiny_model, b.input_ids, b.attention_mask, b.response_mask)
        parts = loop_logps(tiny_model, [(prompt, response[:k])])
        torch.testing.assert_close(cut.double(), parts, atol=1e-4, rtol=1e-5)
    assert float(parts) == pytest.approx(float(full), abs=1e-4)


def test_margins_pair_the_policy_with_the_reference_and_mean_rewards_divide_by_length():
    pl = PairLogps(
        torch.tensor([-6.0, -2.0]),
        torch.tensor([-3.0, -9.0]),
        torch.tensor([3, 1]),
        torch.tensor([1, 3]),
    )
    zero = torch.zeros(2)
    ref = PairLogps(zero, zero, pl.len_chosen, pl.len_rejected)
    m = pl.margins(ref)
    assert m.logp_chosen is pl.chosen and m.logp_rejected is pl.rejected
    assert m.ref_logp_chosen is ref.chosen and m.ref_logp_rejected is ref.rejected
    # A per-token-mean entry's implicit rewards use sum / length: -6/3, -2/1 and -3/1, -9/3.
    bound = objectives.bind("ln_dpo", beta=1.0).with_lengths(pl.len_chosen, pl.len_rejected)
    c, r = bound.rewards(m)
    assert c.tolist() == [-2.0, -2.0] and r.tolist() == [-3.0, -3.0]
    c, r = objectives.bind("dpo", beta=1.0).rewards(m)  # summed: the sums themselves
    assert c.tolist() == pl.chosen.tolist() and r.tolist() == pl.rejected.tolist()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_reference_is_close_and_returns_float32(dtype, text_examples, tokenizer):
    model = build_model("tiny", seed=0, vocab_size=len(tokenizer))
    half = build_model("tiny", seed=0, vocab_size=len(tokenizer), dtype=dtype)
    b = collate_pairs(text_examples, 0)
    with torch.no_grad():
        full = concatenated_logps(model, b.input_ids, b.attention_mask, b.response_mask)
        low = concatenated_logps(half, b.input_ids, b.attention_mask, b.response_mask)
    assert low.chosen.dtype == torch.float32
    # bf16 keeps 8 mantissa bits: per-token errors ~1e-2 on log-probs of size ~5.
    torch.testing.assert_close(low.chosen, full.chosen, atol=0.3, rtol=0.05)


def test_response_mask_checks(tiny_model):
    ids = torch.tensor([[1, 2, 3]])
    att = torch.ones_like(ids)
    with pytest.raises(ValueError, match="position 0"):
        response_logps(tiny_model, ids, att, torch.tensor([[True, True, False]]))
    with pytest.raises(ValueError, match="padding"):
        response_logps(
            tiny_model, ids, torch.tensor([[1, 1, 0]]), torch.tensor([[False, True, True]])
        )
    with pytest.raises(ValueError, match="one \\(N, T\\) shape"):
        response_logps(tiny_model, ids, att[:, :2], torch.tensor([[False, True, True]]))
    with pytest.raises(ValueError, match="2B rows"):
        concatenated_logps(tiny_model, ids, att, torch.tensor([[False, True, True]]))


def test_token_logps_in_blocks_equal_one_full_log_softmax(tiny_model, monkeypatch):
    """Without gradient the rows go through the output projection in blocks of SCORING_BLOCK
    logits (3 rows here): the same numbers as one full-vocabulary log_softmax, at a temperature
    too; with gradient in one block, whose gradient is the full computation's."""
    head = tiny_model.get_output_embeddings()
    vocab = head.weight.shape[0]
    monkeypatch.setattr(logprobs, "SCORING_BLOCK", 3 * vocab)
    gen = torch.Generator().manual_seed(0)
    h = torch.randn(10, tiny_model.config.hidden_size, generator=gen, dtype=torch.float32)
    labels = torch.randint(0, vocab, (10,), generator=gen)
    blocks: list[int] = []
    hook = head.register_forward_hook(lambda module, args, out: blocks.append(args[0].shape[0]))
    for temperature in (1.0, 0.7):
        with torch.no_grad():
            want = torch.log_softmax(head(h).float() / temperature, -1)
            want = want.gather(1, labels[:, None])[:, 0]
            blocks.clear()
            got = token_logps(head, h, labels, temperature=temperature)
        assert blocks == [3, 3, 3, 1] and got.dtype == torch.float32
        torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    blocks.clear()
    x = h.clone().requires_grad_(True)
    token_logps(head, x, labels).sum().backward()
    assert blocks == [10]
    y = h.clone().requires_grad_(True)
    torch.log_softmax(head(y), -1).gather(1, labels[:, None]).sum().backward()
    hook.remove()
    torch.testing.assert_close(x.grad, y.grad, atol=1e-6, rtol=1e-5)
    with torch.no_grad():  # no rows: an empty result
        assert token_logps(head, h[:0], labels[:0]).shape == (0,)


def test_response_logps_score_in_blocks_like_one_block(tiny_model, text_examples, monkeypatch):
    """response_logps through blocks of 4 rows equals response_logps in one block."""
    b = collate_pairs(text_examples, 0)
    with torch.no_grad():
        one, _ = response_logps(tiny_model, b.input_ids, b.attention_mask, b.response_mask)
        monkeypatch.setattr(logprobs, "SCORING_BLOCK", 4 * tiny_model.config.vocab_size)
        blocks, _ = response_logps(tiny_model, b.input_ids, b.attention_mask, b.response_mask)
    torch.testing.assert_close(blocks, one, atol=1e-5, rtol=0)
