"""Padding-free (packed) forwards: the same log-probs and gradients as the padded batch, rows that
cannot see each other, the attention restored afterwards, and the run-time check that refuses."""

from __future__ import annotations

import pytest
import torch

from llm.data import collate_pairs
from llm.logprobs import concatenated_logps, response_logps
from llm.model import build_model
from llm.packing import (
    PACKED_ATTENTION,
    PackedRows,
    PackingMismatchError,
    check_packing,
    pack_rows,
    packed_attention,
    varlen_attention,
)
from tests.llm.helpers_llm import perturbed


def _batch(text_examples):
    b = collate_pairs(text_examples, pad_id=0)
    assert (b.attention_mask == 0).any(), "the test batch must hold padding"
    return b


def test_pack_rows_keeps_real_tokens_in_row_order_with_restarting_positions():
    ids = torch.tensor([[5, 6, 7, 0], [8, 9, 0, 0], [1, 2, 3, 4]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0], [1, 1, 1, 1]])
    resp = torch.tensor([[0, 1, 1, 0], [0, 1, 0, 0], [0, 0, 1, 1]]).bool()
    p = pack_rows(ids, mask, resp)
    assert p.input_ids.tolist() == [[5, 6, 7, 8, 9, 1, 2, 3, 4]]
    assert p.position_ids.tolist() == [[0, 1, 2, 0, 1, 0, 1, 2, 3]]
    assert p.cu_seqlens.tolist() == [0, 3, 5, 9] and p.cu_seqlens.dtype == torch.int32
    assert p.max_len == 4
    assert p.row.tolist() == [0, 0, 0, 1, 1, 2, 2, 2, 2]
    assert p.response.tolist() == [False, True, True, False, True, False, False, True, True]


@pytest.mark.parametrize(
    "mask, message",
    [([[0, 1, 1]], "right padding"), ([[1, 0, 1]], "right padding"), ([[0, 0, 0]], "at least")],
)
def test_pack_rows_refuses_left_padding_holes_and_empty_rows(mask, message):
    ids = torch.zeros(1, 3, dtype=torch.long)
    with pytest.raises(ValueError, match=message):
        pack_rows(ids, torch.tensor(mask), torch.zeros(1, 3, dtype=torch.bool))


def test_packed_logps_equal_padded_logps_and_gradients(tiny_model, text_examples):
    policy = perturbed(tiny_model)
    b = _batch(text_examples)
    grads = {}
    for packed in (False, True):
        policy.zero_grad()
        lp = concatenated_logps(
            policy, b.input_ids, b.attention_mask, b.response_mask, packed=packed
        )
        (lp.chosen - 0.5 * lp.rejected).sum().backward()
        grads[packed] = ([lp.chosen.detach(), lp.rejected.detach()],
                         [p.grad.clone() for p in policy.parameters()])  # fmt: skip
    (pad_lp, pad_g), (pack_lp, pack_g) = grads[False], grads[True]
    for a, c in zip(pad_lp, pack_lp, strict=True):
        torch.testing.assert_close(c, a, atol=1e-5, rtol=1e-5)
    for a, c in zip(pad_g, pack_g, strict=True):
        torch.testing.assert_close(c, a, atol=1e-5, rtol=1e-4)
    assert policy.config._attn_implementation == "sdpa"  # restored after the packed forward


def test_rows_do_not_attend_to_each_other(tiny_model, text_examples):
    """Changing one row's tokens changes no other row's packed log-prob (a leak across the row
    boundary would)."""
    b = _batch(text_examples)
    ids = b.input_ids.clone()
    ids[0, : int(b.attention_mask[0].sum())] = (ids[0, : int(b.attention_mask[0].sum())] + 3) % 200
    with torch.no_grad():
        before, _ = response_logps(tiny_model, b.input_ids, b.attention_mask, b.response_mask,
                                   packed=True)  # fmt: skip
        after, _ = response_logps(tiny_model, ids, b.attention_mask, b.response_mask, packed=True)
    assert not torch.equal(before[0], after[0])
    torch.testing.assert_close(after[1:], before[1:], atol=0, rtol=0)


def test_packed_attention_is_restored_after_an_error(tiny_model):
    with pytest.raises(RuntimeError, match="boom"), packed_attention(tiny_model):
        assert tiny_model.config._attn_implementation == PACKED_ATTENTION
        raise RuntimeError("boom")
    assert tiny_model.config._attn_implementation == "sdpa"


def test_packed_attention_refuses_calls_outside_a_packed_forward(tiny_model):
    q = torch.zeros(2, 1, 3, 4)
    with pytest.raises(ValueError, match="packed forward"):
        varlen_attention(None, q, q, q, None, cu_seq_lens_q=torch.tensor([0, 3]))
    with pytest.raises(ValueError, match="packed forward"):
        varlen_attention(None, q[:1], q[:1], q[:1], None)
    with pytest.raises(ValueError, match="dropout"):
        cu = torch.tensor([0, 3], dtype=torch.int32)
        varlen_attention(None, q[:1], q[:1], q[:1], None, dropout=0.1, cu_seq_lens_q=cu)


_FORWARD_KWARGS = PackedRows.forward_kwargs  # the sound one, kept for the broken ones below


def _scored_one_position_late(model, input_ids, attention_mask, response_mask):
    """_packed_scoring with an off-by-one: token i+1 scored from the state at i+1, not i."""
    packed = pack_rows(input_ids, attention_mask, response_mask)
    with packed_attention(model):
        hidden = model.base_model(**packed.forward_kwargs()).last_hidden_state[0]
    scored = packed.response[1:]
    return packed.row[1:][scored], hidden[1:][scored], packed.input_ids[0, 1:][scored]


def _rows_see_each_other(self):
    kw = _FORWARD_KWARGS(self)
    k = self.input_ids.shape[1]
    whole = torch.tensor([0, k], dtype=torch.int32)
    return {**kw, "cu_seq_lens_q": whole, "cu_seq_lens_k": whole, "max_length_q": k,
            "max_length_k": k}  # fmt: skip


@pytest.mark.parametrize("bug", ["rows see each other", "scored one position late"])
def test_check_packing_passes_on_a_sound_model_and_refuses_a_broken_packed_path(
    tiny_model, text_examples, monkeypatch, bug
):
    import llm.logprobs

    b = _batch(text_examples)
    assert check_packing(tiny_model, b.input_ids, b.attention_mask, b.response_mask) < 1e-6
    if bug == "rows see each other":
        monkeypatch.setattr(PackedRows, "forward_kwargs", _rows_see_each_other)
    else:
        monkeypatch.setattr(llm.logprobs, "_packed_scoring", _scored_one_position_late)
    with pytest.raises(PackingMismatchError, match="nats per token"):
        check_packing(tiny_model, b.input_ids, b.attention_mask, b.response_mask)


@pytest.mark.parametrize("dtype", [torch.bfloat16])
def test_packed_forward_under_16_bit_weights_stays_within_the_check(text_examples, tokenizer,
                                                                     dtype):  # fmt: skip
    """On the CPU the row-by-row SDPA path runs in bf16; the check's 16-bit tolerance holds."""
    model = build_model("tiny", seed=0, vocab_size=len(tokenizer)).to(dtype)
    b = _batch(text_examples)
    assert check_packing(model, b.input_ids, b.attention_mask, b.response_mask) < 2e-2


TIMING = ("tokens_per_s", "pairs_per_s")


@pytest.mark.parametrize("loss", ["dpo", "rdpo", "sft"])
def test_packed_training_equals_padded_training(tmp_path, tokenizer, text_examples, loss):
    from llm.losses import DAALoss, SFTLoss
    from llm.model import load_policy_and_reference
    from llm.train import TrainConfig, read_log, train

    cfg = TrainConfig(lr=1e-4, warmup_steps=0, batch_size=4, micro_batch_size=2, epochs=2,
                      checkpoint_every=0, seed=1)  # fmt: skip
    logs, heads = {}, {}
    for packed in (False, True):
        policy, reference = load_policy_and_reference(
            "tiny", vocab_size=len(tokenizer), reference_dtype=torch.float32, seed=0
        )
        step_loss = (
            SFTLoss(packed=packed)
            if loss == "sft"
            else DAALoss(
                loss,
                0.2,
                hyper={"alpha": 0.05} if loss == "rdpo" else {},
                reference=reference,
                packed=packed,
            )
        )
        out = tmp_path / str(packed)
        train(policy, text_examples, step_loss, cfg, out, pad_id=0, progress=False)
        logs[packed] = [{k: v for k, v in r.items() if k not in TIMING} for r in read_log(out)]
        heads[packed] = policy.get_output_embeddings().weight.detach()
    assert len(logs[True]) == len(logs[False]) == 4
    for a, b in zip(logs[False], logs[True], strict=True):
        assert a.keys() == b.keys()
        for k in a:
            assert b[k] == pytest.approx(a[k], rel=1e-5, abs=1e-6), k
    torch.testing.assert_close(heads[True], heads[False], atol=1e-5, rtol=0)


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
        train(policy, text_examples, DAALoss("dpo", 0.1, reference=reference, packed=True), cfg,
              tmp_path, pad_id=0, progress=False)  # fmt: skip
    assert not (tmp_path / "log.csv").exists()  # refused before the first step


def test_llm_train_packed_flag_runs_sft_and_dpo_and_shares_the_run_folder(tmp_path):
    from llm.train import read_log
    from tests.llm.helpers_llm import load_cli
    from treemdp.runs.cli import run

    cli = load_cli()
    common = ["--model", "tiny", "--source", "tree", "--tree-pairs", "0>1,5>7,3>20,11>2",
              "--batch-size", "4", "--micro-batch-size", "2", "--lr", "1e-3", "--warmup-steps",
              "0", "--epochs", "2", "--checkpoint-every", "0", "--no-progress"]  # fmt: skip
    for stage in ("sft", "daa"):
        logs = []
        for packed in ([], ["--packed"]):
            out = tmp_path / f"{stage}{len(packed)}"
            run(cli.Config, cli.main, [*common, "--stage", stage, *packed, "--out", str(out),
                                       "--run-name", "r"])  # fmt: skip
            logs.append(read_log(out / "r"))
        for a, b in zip(*logs, strict=True):
            assert b["loss"] == pytest.approx(a["loss"], rel=1e-5, abs=1e-6)
    # --packed is not part of the run's identity: a packed resume of a padded run is allowed
    run(cli.Config, cli.main, [*common, "--stage", "daa", "--packed", "--resume", "--out",
                               str(tmp_path / "daa0"), "--run-name", "r"])  # fmt: skip


def _rows_alone(q, k, v, lengths, scale):
    """Oracle: causal SDPA of each row by itself. q, k, v: (1, H, K, D) → (1, K, H, D)."""
    out, start = [], 0
    for n in lengths:
        part = (x[:, :, start : start + n] for x in (q, k, v))
        out.append(torch.nn.functional.scaled_dot_product_attention(*part, is_causal=True,
                                                                    scale=scale))  # fmt: skip
        start += n
    return torch.cat(out, dim=2).transpose(1, 2)


def _random_packed_attention(device, dtype, head_dim, lengths=(37, 1, 200, 64, 129)):
    g = torch.Generator(device=device).manual_seed(0)
    shape = (1, 4, sum(lengths), head_dim)
    q, k, v = (torch.randn(shape, generator=g, device=device, dtype=dtype).requires_grad_(True)
               for _ in range(3))  # fmt: skip
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32)
    bounds = dict(cu_seq_lens_q=cu.to(device), cu_seq_lens_k=cu.to(device),
                  max_length_q=max(lengths), max_length_k=max(lengths))  # fmt: skip
    got, _ = varlen_attention(None, q, k, v, None, scaling=0.1, **bounds)
    want = _rows_alone(q, k, v, lengths, 0.1)
    grads = torch.autograd.grad(got.float().square().sum(), (q, k, v))
    wants = torch.autograd.grad(want.float().square().sum(), (q, k, v))
    return (got, *grads), (want, *wants)


def test_attention_of_packed_rows_equals_each_row_alone_forward_and_backward():
    """The CPU path (rows scattered back into a padded layout, one SDPA call) against SDPA of
    each row alone, with a one-token row among them; random q, k, v, so every score matters."""
    for a, b in zip(*_random_packed_attention("cpu", torch.float32, 16), strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the varlen flash kernel needs CUDA")
@pytest.mark.parametrize("head_dim", [64, 80, 256])  # Pythia 160m/410m, 2.8b, 1b
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_attention_of_packed_rows_on_cuda(head_dim, dtype):
    """On the GPU: torch's varlen flash kernel (bf16) or the padded-layout path (fp32), as
    varlen_attention calls them, against SDPA of each row alone, forward and backward."""
    tol = dict(atol=3e-2, rtol=3e-2) if dtype == torch.bfloat16 else dict(atol=1e-4, rtol=1e-4)
    for a, b in zip(*_random_packed_attention("cuda", dtype, head_dim), strict=True):
        torch.testing.assert_close(a, b, **tol)
