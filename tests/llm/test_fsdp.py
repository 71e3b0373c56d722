"""FSDP2 training on the CPU (gloo): two sharded processes give the one-process run, a sharded
run killed with SIGKILL resumes to the uninterrupted one, and the response-only log-prob path
works under FSDP's hooks (also with bf16 mixed precision, and packed, padding-free)."""

from __future__ import annotations

import copy
import signal

import pytest
import torch
import torch.distributed as dist
from safetensors.torch import load_file

from llm.checkpoint import latest_checkpoint
from llm.logprobs import concatenated_logps
from llm.losses import DAALoss
from llm.model import load_model
from llm.train import TrainConfig, read_log, train
from tests.llm.conftest import TEXT_ROWS
from tests.llm.fsdp_ranks import run_ranks
from tests.llm.helpers_llm import perturbed

# 4 steps of 4 pairs, one pair per micro-batch (gradient accumulation over 2 per rank),
# checkpoints at steps 2 and 4; warm-up so the learning rate changes across the resume.
CFG = dict(lr=1e-4, warmup_steps=1, batch_size=4, micro_batch_size=1, epochs=2,
           checkpoint_every=8, seed=1)  # fmt: skip
TIMING = ("tokens_per_s", "pairs_per_s")


def _untimed(log):
    return [{k: v for k, v in row.items() if k not in TIMING} for row in log]


@pytest.mark.slow
def test_two_sharded_processes_give_the_one_process_run_and_resume_after_sigkill(
    tmp_path, tokenizer, text_examples
):
    from llm.model import load_policy_and_reference

    one, whole, killed = tmp_path / "one", tmp_path / "whole", tmp_path / "killed"
    # The one-process run, unsharded, in this process (one thread, as the ranks).
    policy, reference = load_policy_and_reference(
        "tiny", vocab_size=len(tokenizer), reference_dtype=torch.float32, seed=0
    )
    train(policy, text_examples, DAALoss("dpo", 0.2, reference=reference), TrainConfig(**CFG),
          one, pad_id=0, tokenizer=tokenizer, progress=False)  # fmt: skip

    # Two ranks: the uninterrupted run, then one killed after step 3 (checkpoint: step 2).
    replicas = tmp_path / "replicas"  # --fsdp off: full replicas, all-reduced gradients
    first = run_ranks([(TEXT_ROWS, CFG, whole, -1, False), (TEXT_ROWS, CFG, replicas, -1, False,
                        False), (TEXT_ROWS, CFG, killed, 3, False)])  # fmt: skip
    assert first == [-signal.SIGKILL] * 2
    assert latest_checkpoint(killed).name == "step-0000002"
    assert (killed / "step-0000002" / "dcp").is_dir()
    assert run_ranks([(TEXT_ROWS, CFG, killed, -1, True)]) == [0, 0]

    # Sharded = one process: every logged metric and every exported weight.
    log1, log2, log3 = read_log(one), read_log(whole), read_log(replicas)
    assert len(log1) == len(log2) == len(log3) == 4
    for r1, r2, r3 in zip(log1, log2, log3, strict=True):
        for k in ("loss", "margins", "logps_chosen", "logps_rejected", "grad_norm", "lr"):
            assert r2[k] == pytest.approx(r1[k], rel=1e-5, abs=1e-6), k
            assert r3[k] == pytest.approx(r1[k], rel=1e-5, abs=1e-6), k
    a = load_file(str(one / "step-0000004" / "model.safetensors"))
    b = load_file(str(whole / "step-0000004" / "model.safetensors"))
    assert a.keys() == b.keys()
    init, _ = load_policy_and_reference("tiny", vocab_size=len(tokenizer), seed=0)
    moved = a["embed_out.weight"] - init.get_output_embeddings().weight.detach()
    assert float(moved.abs().max()) > 1e-4  # the tolerance below is well under the change
    r = load_file(str(replicas / "step-0000004" / "model.safetensors"))
    for k in a:
        torch.testing.assert_close(b[k], a[k], atol=1e-5, rtol=0)
        torch.testing.assert_close(r[k], a[k], atol=1e-5, rtol=0)
    # Resumed after SIGKILL = uninterrupted, bit for bit (weights, log).
    c = load_file(str(killed / "step-0000004" / "model.safetensors"))
    assert all(torch.equal(b[k], c[k]) for k in b)
    assert _untimed(read_log(killed)) == _untimed(log2)
    # The export is a model: transformers' own loader reads it.
    loaded = load_model(whole / "step-0000004")
    assert torch.equal(loaded.get_output_embeddings().weight, b["embed_out.weight"])


@pytest.fixture()
def group_of_one():
    from llm.fsdp import init_distributed

    if dist.is_initialized():
        pytest.skip("a process group is already running in this process")
    init_distributed(torch.device("cpu"))
    yield
    dist.destroy_process_group()


@pytest.mark.parametrize("packing", ["off", "rows", "pairs"])
@pytest.mark.parametrize("mixed", [False, True])
def test_response_logps_and_gradients_under_fsdp_hooks(group_of_one, tiny_model, text_examples,
                                                       mixed, packing):  # fmt: skip
    from llm.data import collate_pairs
    from llm.fsdp import is_sharded, shard_model

    b = collate_pairs(text_examples[:4], 0)
    plain = perturbed(tiny_model)
    sharded = shard_model(copy.deepcopy(plain), mixed_precision=mixed)
    assert is_sharded(sharded) and not is_sharded(plain)
    want = concatenated_logps(plain, b.input_ids, b.attention_mask, b.response_mask)
    got = concatenated_logps(
        sharded, b.input_ids, b.attention_mask, b.response_mask, packing=packing
    )
    assert got.chosen.dtype == torch.float32
    # fp32: the same numbers; bf16 compute: within bf16 rounding of sums of ~10 log-probs.
    tol = dict(rtol=2e-2, atol=0.5) if mixed else dict(rtol=1e-6, atol=1e-5)
    torch.testing.assert_close(got.chosen, want.chosen, **tol)
    torch.testing.assert_close(got.rejected, want.rejected, **tol)
    (want.chosen - want.rejected).sum().backward()
    (got.chosen - got.rejected).sum().backward()
    norm_plain = torch.nn.utils.clip_grad_norm_(list(plain.parameters()), 1e9)
    norm_sharded = torch.nn.utils.clip_grad_norm_(list(sharded.parameters()), 1e9).full_tensor()
    assert float(norm_sharded) == pytest.approx(float(norm_plain), rel=3e-2 if mixed else 1e-5)
    head = sharded.get_output_embeddings().weight
    assert head.grad is not None and head.grad.dtype == torch.float32  # fp32 master gradients


def test_a_cuda_device_without_an_index_is_the_local_rank_gpu(monkeypatch):
    # `--device cuda` under torchrun: NCCL and torch.cuda.set_device need cuda:LOCAL_RANK (the
    # first GPU run of the FSDP smoke test failed on a bare "cuda")
    from experiments.llm_train import Config, _device, with_local_rank

    monkeypatch.setenv("LOCAL_RANK", "3")
    assert with_local_rank(torch.device("cuda")) == torch.device("cuda", 3)
    assert with_local_rank(torch.device("cuda", 1)) == torch.device("cuda", 1)
    assert with_local_rank(torch.device("cpu")) == torch.device("cpu")
    assert _device(Config(device="cpu")) == torch.device("cpu")


@pytest.mark.parametrize("fails", [False, True], ids=["finishes", "fails"])
def test_llm_train_tears_its_process_group_down_whether_it_finishes_or_fails(tmp_path, fails):
    # a process group left running (an error before the old code reached destroy_process_group)
    # or torn down while models sharded on it live on is what aborts a rank at exit
    from tests.llm.helpers_llm import load_cli
    from treemdp.runs.cli import parse_config

    if dist.is_initialized():
        pytest.skip("a process group is already running in this process")
    lt = load_cli()
    argv = [
        *("--fsdp", "on", "--device", "cpu", "--model", "tiny", "--batch-size", "2"),
        *("--micro-batch-size", "2", "--warmup-steps", "0", "--reference-dtype", "fp32"),
        *("--checkpoint-every", "0", "--no-progress", "--out", str(tmp_path)),
        *(("--source", "jsonl") if fails else ("--source", "tree", "--tree-pairs", "0>1,5>7")),
    ]
    cfg = parse_config(lt.Config, argv)
    if fails:  # no --data: refused after the group started
        with pytest.raises(ValueError, match="--data must name a JSONL file"):
            lt.main(cfg)
    else:
        assert lt.main(cfg).name == "step-0000001"
    assert not dist.is_initialized()
