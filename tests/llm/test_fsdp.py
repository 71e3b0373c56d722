"""FSDP2 training on the CPU (gloo): two sharded processes give the one-process run, a sharded
run killed with SIGKILL resumes to the uninterrupted one, and the response-only log-prob path
works under FSDP's hooks (also with bf16 mixed precision)."""

from __future__ import annotations

import copy
import signal
import socket
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.distributed as dist
from safetensors.torch import load_file

from llm.checkpoint import latest_checkpoint
from llm.logprobs import concatenated_logps
from llm.model import load_model
from llm.train import DAALoss, TrainConfig, read_log, train
from tests.llm.helpers_llm import ROOT, perturbed, subprocess_env

# Both ranks run the uninterrupted run into argv[1], then (unless argv[3] == "resume") a second
# run into argv[2] that kills itself right after step 3 (its last checkpoint is step 2); with
# argv[3] == "resume" only the second run, resumed.
SCRIPT = textwrap.dedent(
    """
    import os, signal, sys, torch
    from pathlib import Path
    from conftest import TEXT_ROWS
    from llm.data import TruncationConfig, byte_tokenizer, tokenize_rows
    from llm.fsdp import init_distributed, shard_model
    from llm.model import load_policy_and_reference
    from llm.train import DAALoss, TrainConfig, train

    torch.set_num_threads(1)
    init_distributed(torch.device("cpu"))
    tok = byte_tokenizer()
    examples, _ = tokenize_rows(enumerate(TEXT_ROWS, 1), tok, TruncationConfig())

    def run(out, kill_at, resume):
        policy, reference = load_policy_and_reference(
            "tiny", vocab_size=len(tok), reference_dtype=torch.float32, seed=0)
        shard_model(policy)
        shard_model(reference)
        cfg = TrainConfig(**{CFG})

        def on_step(step):
            if step == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)

        train(policy, examples, DAALoss("dpo", 0.2, reference=reference), cfg, Path(out),
              pad_id=0, tokenizer=tok, resume=resume, on_step=on_step, progress=False)

    if sys.argv[3] != "resume":
        run(sys.argv[1], -1, False)
    resume = sys.argv[3] == "resume"
    run(sys.argv[2], -1 if resume else 3, resume)
    """
)
# 4 steps of 4 pairs, one pair per micro-batch (gradient accumulation over 2 per rank),
# checkpoints at steps 2 and 4; warm-up so the learning rate changes across the resume.
CFG = dict(lr=1e-4, warmup_steps=1, batch_size=4, micro_batch_size=1, epochs=2,
           checkpoint_every=8, seed=1)  # fmt: skip
TIMING = ("tokens_per_s", "pairs_per_s")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _two_ranks(script, *args: str) -> list[subprocess.CompletedProcess]:
    """Run ``script args`` as ranks 0 and 1 of a gloo group (torchrun's environment, without
    the launcher process)."""
    env = {
        **subprocess_env(),
        "PYTHONPATH": f"{ROOT}:{ROOT / 'tests' / 'llm'}",
        "WORLD_SIZE": "2",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(_free_port()),
    }
    procs = [
        subprocess.Popen(
            [sys.executable, str(script), *args],
            env={**env, "RANK": str(r), "LOCAL_RANK": str(r)},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for r in range(2)
    ]
    out = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=300)
        out.append(subprocess.CompletedProcess(p.args, p.returncode, stdout, stderr))
    return out


def _untimed(log):
    return [{k: v for k, v in row.items() if k not in TIMING} for row in log]


@pytest.mark.slow
def test_two_sharded_processes_give_the_one_process_run_and_resume_after_sigkill(
    tmp_path, tokenizer, text_examples
):
    from llm.model import load_policy_and_reference

    script = tmp_path / "run.py"
    script.write_text(SCRIPT.replace("{CFG}", repr(CFG)))
    one, whole, killed = tmp_path / "one", tmp_path / "whole", tmp_path / "killed"
    # The one-process run, unsharded, in this process (one thread, as the ranks).
    policy, reference = load_policy_and_reference(
        "tiny", vocab_size=len(tokenizer), reference_dtype=torch.float32, seed=0
    )
    train(policy, text_examples, DAALoss("dpo", 0.2, reference=reference), TrainConfig(**CFG),
          one, pad_id=0, tokenizer=tokenizer, progress=False)  # fmt: skip

    first = _two_ranks(script, str(whole), str(killed), "fresh")
    assert [r.returncode for r in first] == [-signal.SIGKILL] * 2, first[0].stderr[-3000:]
    assert latest_checkpoint(killed).name == "step-0000002"
    assert (killed / "step-0000002" / "dcp").is_dir()
    again = _two_ranks(script, str(whole), str(killed), "resume")
    assert [r.returncode for r in again] == [0, 0], again[0].stderr[-3000:]

    # Sharded = one process: every logged metric and every exported weight.
    log1, log2 = read_log(one), read_log(whole)
    assert len(log1) == len(log2) == 4
    for r1, r2 in zip(log1, log2, strict=True):
        for k in ("loss", "margins", "logps_chosen", "logps_rejected", "grad_norm", "lr"):
            assert r2[k] == pytest.approx(r1[k], rel=1e-5, abs=1e-6), k
    a = load_file(str(one / "step-0000004" / "model.safetensors"))
    b = load_file(str(whole / "step-0000004" / "model.safetensors"))
    assert a.keys() == b.keys()
    init, _ = load_policy_and_reference("tiny", vocab_size=len(tokenizer), seed=0)
    moved = a["embed_out.weight"] - init.get_output_embeddings().weight.detach()
    assert float(moved.abs().max()) > 1e-4  # the tolerance below is well under the change
    for k in a:
        torch.testing.assert_close(b[k], a[k], atol=1e-5, rtol=0)
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


@pytest.mark.parametrize("mixed", [False, True])
def test_response_logps_and_gradients_under_fsdp_hooks(group_of_one, tiny_model, text_examples,
                                                       mixed):  # fmt: skip
    from llm.data import collate_pairs
    from llm.fsdp import clip_grad_norm, is_sharded, shard_model

    b = collate_pairs(text_examples[:4], 0)
    plain = perturbed(tiny_model)
    sharded = shard_model(copy.deepcopy(plain), mixed_precision=mixed)
    assert is_sharded(sharded) and not is_sharded(plain)
    want = concatenated_logps(plain, b.input_ids, b.attention_mask, b.response_mask)
    got = concatenated_logps(sharded, b.input_ids, b.attention_mask, b.response_mask)
    assert got.chosen.dtype == torch.float32
    # fp32: the same numbers; bf16 compute: within bf16 rounding of sums of ~10 log-probs.
    tol = dict(rtol=2e-2, atol=0.5) if mixed else dict(rtol=1e-6, atol=1e-5)
    torch.testing.assert_close(got.chosen, want.chosen, **tol)
    torch.testing.assert_close(got.rejected, want.rejected, **tol)
    (want.chosen - want.rejected).sum().backward()
    (got.chosen - got.rejected).sum().backward()
    norm_plain = torch.nn.utils.clip_grad_norm_(list(plain.parameters()), 1e9)
    norm_sharded = clip_grad_norm(list(sharded.parameters()), 1e9)
    assert not hasattr(norm_sharded, "full_tensor")  # a plain tensor, loggable with float()
    assert float(norm_sharded) == pytest.approx(float(norm_plain), rel=3e-2 if mixed else 1e-5)
    head = sharded.get_output_embeddings().weight
    assert head.grad is not None and head.grad.dtype == torch.float32  # fp32 master gradients
