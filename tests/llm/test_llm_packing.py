"""Padding-free (packed) forwards, by rows and by pairs (one prompt per pair): the layouts on
hand-made batches, attention against each sequence alone, the same log-probs and gradients as
the padded batch, sequences that cannot see each other, the attention restored afterwards, and
the run-time check that refuses a broken packed path."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from llm.data import collate_pairs
from llm.logprobs import PackingMismatchError, check_packing, concatenated_logps, response_logps
from llm.model import build_model
from llm.packing import (
    PACKED_ATTENTION,
    Packed,
    pack_pairs,
    pack_rows,
    packed_attention,
    varlen_attention,
)
from tests.llm.helpers_llm import perturbed

PACKINGS = ("rows", "pairs")
TIMING = ("tokens_per_s", "pairs_per_s")


def _batch(text_examples):
    b = collate_pairs(text_examples, pad_id=0)
    assert (b.attention_mask == 0).any(), "the test batch must hold padding"
    return b


# ------------------------------------------------------------------------------------ layouts
def test_pack_rows_keeps_real_tokens_in_row_order_with_restarting_positions():
    ids = torch.tensor([[5, 6, 7, 0], [8, 9, 0, 0], [1, 2, 3, 4]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0], [1, 1, 1, 1]])
    resp = torch.tensor([[0, 1, 1, 0], [0, 1, 0, 0], [0, 0, 1, 1]]).bool()
    p = pack_rows(ids, mask, resp)
    assert p.input_ids.tolist() == [[5, 6, 7, 8, 9, 1, 2, 3, 4]]
    assert p.position_ids.tolist() == [[0, 1, 2, 0, 1, 0, 1, 2, 3]]
    assert p.cu_q.tolist() == p.cu_k.tolist() == [0, 3, 5, 9] and p.cu_q.dtype == torch.int32
    assert p.max_q == p.max_k == 4 and p.key_index is None
    assert p.prev.tolist() == list(range(-1, 8))
    assert p.row.tolist() == [0, 0, 0, 1, 1, 2, 2, 2, 2]
    assert p.scored.tolist() == [1, 2, 4, 7, 8]


def test_pack_pairs_lays_out_prompt_chosen_rejected_with_the_prompt_shared():
    # pair 0: prompt [5, 6], chosen [7], rejected [8, 9]; pair 1: prompt [1], chosen [2, 3],
    # rejected [4]. Rows: chosen 0, chosen 1, rejected 0, rejected 1.
    ids = torch.tensor([[5, 6, 7, 0], [1, 2, 3, 0], [5, 6, 8, 9], [1, 4, 0, 0]])
    mask = (ids != 0).long()
    resp = torch.tensor([[0, 0, 1, 0], [0, 1, 1, 0], [0, 0, 1, 1], [0, 1, 0, 0]]).bool()
    p = pack_pairs(ids, mask, resp)
    assert p.input_ids.tolist() == [[5, 6, 7, 8, 9, 1, 2, 3, 4]]
    assert p.position_ids.tolist() == [[0, 1, 2, 2, 3, 0, 1, 2, 1]]
    assert p.row.tolist() == [0, 0, 0, 2, 2, 1, 1, 1, 3]
    assert p.scored.tolist() == [2, 3, 4, 6, 7, 8]
    # queries: [P C] and R per pair; keys: [P C] and [P R]
    assert p.cu_q.tolist() == [0, 3, 5, 8, 9] and p.cu_k.tolist() == [0, 3, 7, 10, 12]
    assert p.key_index.tolist() == [0, 1, 2, 0, 1, 3, 4, 5, 6, 7, 5, 8]
    # the first rejected token is scored from the prompt's last token, not the chosen one's
    assert p.prev.tolist() == [-1, 0, 1, 1, 3, -1, 5, 6, 5]
    assert (p.max_q, p.max_k) == (3, 4)


@pytest.mark.parametrize(
    "mask, message",
    [([[0, 1, 1]], "right padding"), ([[1, 0, 1]], "right padding"), ([[0, 0, 0]], "prompt")],
)
def test_pack_rows_refuses_left_padding_holes_and_rows_without_a_prompt(mask, message):
    ids = torch.zeros(1, 3, dtype=torch.long)
    with pytest.raises(ValueError, match=message):
        pack_rows(ids, torch.tensor(mask), torch.zeros(1, 3, dtype=torch.bool))


def test_pack_pairs_refuses_odd_rows_other_prompts_and_empty_responses():
    ids = torch.tensor([[5, 6, 7], [5, 6, 8]])
    mask = torch.ones(2, 3, dtype=torch.long)
    resp = torch.tensor([[0, 0, 1], [0, 0, 1]]).bool()
    pack_pairs(ids, mask, resp)  # sound
    with pytest.raises(ValueError, match="2B rows"):
        pack_pairs(ids[:1], mask[:1], resp[:1])
    with pytest.raises(ValueError, match="same prompt"):
        pack_pairs(torch.tensor([[5, 6, 7], [5, 9, 8]]), mask, resp)
    with pytest.raises(ValueError, match="same prompt"):  # prompt lengths differ
        pack_pairs(ids, mask, torch.tensor([[0, 0, 1], [0, 1, 1]]).bool())
    with pytest.raises(ValueError, match="at least one token"):
        pack_pairs(ids, torch.tensor([[1, 1, 1], [1, 1, 0]]), torch.tensor([[0, 0, 1], [0, 0, 0]]))


# ---------------------------------------------------------------------------------- attention
def _causal(q, k, v, scale):
    """Oracle: causal SDPA of one sequence. q, k, v: (H, L, D) → (H, L, D)."""
    return F.scaled_dot_product_attention(q[None], k[None], v[None], is_causal=True,
                                          scale=scale)[0]  # fmt: skip


def _random_attention(device, dtype, head_dim, pairs, layout):
    """Packed attention over random q, k, v against each sequence alone, forward and backward.

    ``pairs``: per pair, the (prompt, chosen, rejected) lengths. ``layout`` "pairs": the packed
    tokens are [P C R] per pair, queries [P C] and R, keys [P C] and [P R] (``pack_pairs``);
    "rows": [P C][P R'] with the prompt repeated, each row its own keys (``pack_rows``).
    Returns (got, want): the output and the gradients of q, k, v, each.
    """
    seqs, key_index, at = [], [], 0  # per sequence: its key tokens (its queries are the last)
    for p, c, r in pairs:
        pc = list(range(at, at + p + c))
        if layout == "pairs":
            seqs += [(pc, p + c), ([*range(at, at + p), *range(at + p + c, at + p + c + r)], r)]
            at += p + c + r
        else:
            seqs += [(pc, p + c), (list(range(at + p + c, at + 2 * p + c + r)), p + r)]
            at += 2 * p + c + r
    g = torch.Generator(device=device).manual_seed(0)
    q, k, v = (torch.randn((1, 4, at, head_dim), generator=g, device=device, dtype=dtype)
               .requires_grad_(True) for _ in range(3))  # fmt: skip
    key_index = torch.tensor([t for keys, _ in seqs for t in keys], device=device)
    q_len, k_len = [n for _, n in seqs], [len(keys) for keys, _ in seqs]
    cu_q, cu_k = (torch.tensor([0, *torch.tensor(x).cumsum(0).tolist()], dtype=torch.int32,
                               device=device) for x in (q_len, k_len))  # fmt: skip
    got, _ = varlen_attention(
        None, q, k, v, None, scaling=0.1, cu_seq_lens_q=cu_q, cu_seq_lens_k=cu_k,
        max_length_q=max(q_len), max_length_k=max(k_len),
        packed_key_index=key_index if layout == "pairs" else None,
    )  # fmt: skip
    # each sequence alone: causal attention over its keys, its last q_len outputs kept
    want = torch.cat([_causal(*(x[0][:, keys] for x in (q, k, v)), 0.1)[:, len(keys) - n :]
                      for keys, n in seqs], dim=1).transpose(0, 1)[None]  # fmt: skip
    grads = torch.autograd.grad(got.float().square().sum(), (q, k, v))
    wants = torch.autograd.grad(want.float().square().sum(), (q, k, v))
    return (got, *grads), (want, *wants)


SHAPES = [(3, 5, 1), (1, 1, 9), (40, 7, 12), (2, 30, 30)]  # (prompt, chosen, rejected) per pair


@pytest.mark.parametrize("layout", PACKINGS)
def test_attention_of_packed_sequences_equals_each_sequence_alone(layout):
    """The CPU path (sequences scattered back into a padded layout, one SDPA call; keys of a
    rejected response: its pair's prompt and itself) against SDPA of each sequence alone,
    forward and backward, on random q, k, v, so every score matters."""
    for a, b in zip(*_random_attention("cpu", torch.float32, 16, SHAPES, layout), strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the varlen flash kernel needs CUDA")
@pytest.mark.parametrize("head_dim", [64, 80, 256])  # Pythia 160m/410m, 2.8b, 1b
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("layout", PACKINGS)
def test_attention_of_packed_sequences_on_cuda(head_dim, dtype, layout):
    """On the GPU: torch's varlen flash kernel (bf16; a query sequence shorter than its keys must
    be aligned bottom-right) or the padded-layout path (fp32), against each sequence alone."""
    tol = dict(atol=3e-2, rtol=3e-2) if dtype == torch.bfloat16 else dict(atol=1e-4, rtol=1e-4)
    for a, b in zip(*_random_attention("cuda", dtype, head_dim, SHAPES, layout), strict=True):
        torch.testing.assert_close(a, b, **tol)


def test_packed_attention_is_restored_after_an_error(tiny_model):
    with pytest.raises(RuntimeError, match="boom"), packed_attention(tiny_model):
        assert tiny_model.config._attn_implementation == PACKED_ATTENTION
        raise RuntimeError("boom")
    assert tiny_model.config._attn_implementation == "sdpa"


def test_packed_attention_refuses_calls_outside_a_packed_forward():
    q = torch.zeros(2, 1, 3, 4)
    with pytest.raises(ValueError, match="packed forward"):
        varlen_attention(None, q, q, q, None, cu_seq_lens_q=torch.tensor([0, 3]))
    with pytest.raises(ValueError, match="packed forward"):
        varlen_attention(None, q[:1], q[:1], q[:1], None)
    with pytest.raises(ValueError, match="dropout"):
        cu = torch.tensor([0, 3], dtype=torch.int32)
        varlen_attention(None, q[:1], q[:1], q[:1], None, dropout=0.1, cu_seq_lens_q=cu)


# ------------------------------------------------------------------------------ log-probs
@pytest.mark.parametrize("packing", PACKINGS)
def test_packed_logps_equal_padded_logps_and_gradients(tiny_model, text_examples, packing):
    policy = perturbed(tiny_model)
    b = _batch(text_examples)
    out = {}
    for mode in ("off", packing):
        policy.zero_grad()
        lp = concatenated_logps(
            policy, b.input_ids, b.attention_mask, b.response_mask, packing=mode
        )
        (lp.chosen - 0.5 * lp.rejected).sum().backward()
        out[mode] = ([lp.chosen.detach(), lp.rejected.detach(), lp.len_chosen, lp.len_rejected],
                     [p.grad.clone() for p in policy.parameters()])  # fmt: skip
    for a, c in zip(*(out[m][0] + out[m][1] for m in ("off", packing)), strict=True):
        torch.testing.assert_close(c, a, atol=1e-5, rtol=1e-4)
    assert policy.config._attn_implementation == "sdpa"  # restored after the packed forward


@pytest.mark.parametrize("packing", PACKINGS)
def test_sequences_do_not_see_each_other(tiny_model, text_examples, packing):
    """Changing pair 0's chosen response changes only row 0's log-prob: not its rejected
    response's (which shares the prompt when packed by pairs), not another pair's."""
    b = _batch(text_examples)
    ids, n = b.input_ids.clone(), b.input_ids.shape[0]
    ids[0] = torch.where(b.response_mask[0], (ids[0] + 3) % 200 + 1, ids[0])
    with torch.no_grad():
        before, _ = response_logps(tiny_model, b.input_ids, b.attention_mask, b.response_mask,
                                   packing=packing)  # fmt: skip
        after, _ = response_logps(tiny_model, ids, b.attention_mask, b.response_mask,
                                  packing=packing)  # fmt: skip
    assert not torch.equal(before[0], after[0])
    torch.testing.assert_close(after[1:], before[1:], atol=0, rtol=0)
    assert n // 2 in range(1, n)  # row n/2 (pair 0's rejected) was among those compared


# ------------------------------------------------------------------------ the run-time check
def _rows_see_each_other(self):
    k = self.input_ids.shape[1]
    whole = torch.tensor([0, k], dtype=torch.int32)
    wide = dataclasses.replace(self, cu_q=whole, cu_k=whole, max_q=k, max_k=k, key_index=None)
    return _FORWARD_KWARGS(wide)


def _scored_one_position_late(packed, model):
    """_packed_scoring with an off-by-one: each response token scored from its own state."""
    with packed_attention(model):
        hidden = model.base_model(**packed.forward_kwargs()).last_hidden_state[0]
    scored = packed.scored
    return packed.row[scored], hidden[scored], packed.input_ids[0, scored]


_FORWARD_KWARGS = Packed.forward_kwargs  # the sound one, kept for the broken ones


@pytest.mark.parametrize("packing", PACKINGS)
@pytest.mark.parametrize("bug", ["rows see each other", "scored one position late"])
def test_check_packing_passes_on_a_sound_model_and_refuses_a_broken_packed_path(
    tiny_model, text_examples, monkeypatch, bug, packing
):
    import llm.logprobs

    b = _batch(text_examples)
    args = (tiny_model, b.input_ids, b.attention_mask, b.response_mask)
    assert check_packing(*args, packing=packing) < 1e-6
    if bug == "rows see each other":
        monkeypatch.setattr(Packed, "forward_kwargs", _rows_see_each_other)
    else:
        monkeypatch.setattr(llm.logprobs, "_packed_scoring", _scored_one_position_late)
    with pytest.raises(PackingMismatchError, match="nats per token"):
        check_packing(*args, packing=packing)


@pytest.mark.parametrize("packing", PACKINGS)
def test_packed_forward_under_16_bit_weights_stays_within_the_check(text_examples, tokenizer,
                                                                     packing):  # fmt: skip
    model = build_model("tiny", seed=0, vocab_size=len(tokenizer)).to(torch.bfloat16)
    b = _batch(text_examples)
    worst = check_packing(model, b.input_ids, b.attention_mask, b.response_mask, packing=packing)
    assert worst < 2e-2


# ----------------------------------------------------------------------------------- training
@pytest.mark.parametrize(
    ("loss", "packing"), [("dpo", "rows"), ("dpo", "pairs"), ("rdpo", "pairs"), ("sft", "rows")]
)
def test_packed_training_equals_padded_training(tmp_path, tokenizer, text_examples, loss, packing):
    from llm.losses import DAALoss, SFTLoss
    from llm.model import load_policy_and_reference
    from llm.train import TrainConfig, read_log, train

    cfg = TrainConfig(lr=1e-4, warmup_steps=0, batch_size=4, micro_batch_size=2, epochs=2,
                      checkpoint_every=0, seed=1)  # fmt: skip
    logs, heads = {}, {}
    for mode in ("off", packing):
        policy, reference = load_policy_and_reference(
            "tiny", vocab_size=len(tokenizer), reference_dtype=torch.float32, seed=0
        )
        hyper = {"alpha": 0.05} if loss == "rdpo" else {}
        step_loss = (
            SFTLoss(packing=mode)
            if loss == "sft"
            else DAALoss(loss, 0.2, hyper=hyper, reference=reference, packing=mode)
        )
        out = tmp_path / mode
        train(policy, text_examples, step_loss, cfg, out, pad_id=0, progress=False)
        logs[mode] = [{k: v for k, v in r.items() if k not in TIMING} for r in read_log(out)]
        heads[mode] = policy.get_output_embeddings().weight.detach()
    assert len(logs[packing]) == len(logs["off"]) == 4
    for a, b in zip(logs["off"], logs[packing], strict=True):
        assert a.keys() == b.keys()
        for k in a:
            assert b[k] == pytest.approx(a[k], rel=1e-5, abs=1e-6), k
    torch.testing.assert_close(heads[packing], heads["off"], atol=1e-5, rtol=0)


def test_sft_refuses_pair_packing_and_losses_refuse_unknown_packings():
    from llm.losses import DAALoss, SFTLoss

    with pytest.raises(ValueError, match="SFT packing"):
        SFTLoss(packing="pairs")
    with pytest.raises(ValueError, match="packing must be one of"):
        DAALoss("dpo", 0.1, reference=torch.nn.Linear(1, 1), packing="yes")


def test_train_refuses_a_packed_loss_whose_packed_forward_disagrees(
    tmp_path, tokenizer, text_examples, monkeypatch
):
    import llm.logprobs
    from llm.losses import DAALoss
    from llm.model import load_policy_and_reference
    from llm.train import TrainConfig, train

    monkeypatch.setattr(llm.logprobs, "_packed_scoring", _scored_one_position_late)
    policy, reference = load_policy_and_reference("tiny", vocab_size=len(tokenizer), seed=0)
    cfg = TrainConfig(lr=1e-3, warmup_steps=0, batch_size=2, micro_batch_size=2, epochs=1)
    with pytest.raises(PackingMismatchError):
        train(policy, text_examples, DAALoss("dpo", 0.1, reference=reference, packing="pairs"),
              cfg, tmp_path, pad_id=0, progress=False)  # fmt: skip
    assert not (tmp_path / "log.csv").exists()  # refused before the first step


def test_llm_train_packing_flag_runs_sft_and_dpo_and_shares_the_run_folder(tmp_path):
    from llm.train import read_log
    from tests.llm.helpers_llm import load_cli
    from treemdp.runs.cli import run

    cli = load_cli()
    common = ["--model", "tiny", "--source", "tree", "--tree-pairs", "0>1,5>7,3>20,11>2",
              "--batch-size", "4", "--micro-batch-size", "2", "--lr", "1e-3", "--warmup-steps",
              "0", "--epochs", "2", "--checkpoint-every", "0", "--no-progress"]  # fmt: skip
    for stage, packing in (("sft", "rows"), ("daa", "pairs")):
        logs = []
        for mode in ("off", packing):
            out = tmp_path / f"{stage}-{mode}"
            run(cli.Config, cli.main, [*common, "--stage", stage, "--packing", mode, "--out",
                                       str(out), "--run-name", "r"])  # fmt: skip
            logs.append(read_log(out / "r"))
        for a, b in zip(*logs, strict=True):
            assert b["loss"] == pytest.approx(a["loss"], rel=1e-5, abs=1e-6)
    # --packing is not part of the run's identity: a packed resume of a padded run is allowed
    run(cli.Config, cli.main, [*common, "--stage", "daa", "--packing", "rows", "--resume",
                               "--out", str(tmp_path / "daa-off"), "--run-name", "r"])  # fmt: skip
