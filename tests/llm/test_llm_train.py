"""Training runs end to end: resume after SIGKILL, two-process data parallel, checkpoints, CLI."""

from __future__ import annotations

import copy
import json
import re
import shutil
import signal
import socket
import subprocess
import sys
import textwrap

import pytest
import torch
from safetensors.torch import load_file

from llm.checkpoint import latest_checkpoint
from llm.model import load_model
from llm.train import read_log
from tests.llm.helpers_llm import ROOT, load_cli, subprocess_env
from treemdp.runs.cli import build_parser, parse_config, run

SCRIPT = textwrap.dedent(
    """
    import os, signal, sys, torch
    from pathlib import Path
    from conftest import TEXT_ROWS
    from llm.data import TruncationConfig, byte_tokenizer, tokenize_rows
    from llm.model import load_policy_and_reference
    from llm.losses import DAALoss
    from llm.train import TrainConfig, train

    out, kill_at, resume = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3] == "1"
    torch.set_num_threads(1)
    tok = byte_tokenizer()
    examples, _ = tokenize_rows(enumerate(TEXT_ROWS, 1), tok, TruncationConfig())
    policy, reference = load_policy_and_reference(
        "tiny", vocab_size=len(tok), reference_dtype=torch.float32, seed=0)
    cfg = TrainConfig(lr=1e-3, warmup_steps=3, batch_size=4, micro_batch_size=2, epochs=4,
                      checkpoint_every=8, seed=1)

    def on_step(step):
        if step == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)

    train(policy, examples, DAALoss("rdpo", 0.2, hyper={"alpha": 0.05}, reference=reference),
          cfg, out, pad_id=0, tokenizer=tok, resume=resume, on_step=on_step, progress=False)
    """
)

TIMING = ("tokens_per_s", "pairs_per_s")


def _run(script, out, kill_at, resume):
    return subprocess.run(
        [sys.executable, str(script), str(out), str(kill_at), "1" if resume else "0"],
        env={**subprocess_env(), "PYTHONPATH": f"{ROOT}:{ROOT / 'tests' / 'llm'}"},
        capture_output=True,
        text=True,
        timeout=300,
    )


def _untimed(log):
    return [{k: v for k, v in row.items() if k not in TIMING} for row in log]


@pytest.mark.slow
def test_resume_after_sigkill_equals_the_uninterrupted_run(tmp_path):
    script = tmp_path / "run.py"
    script.write_text(SCRIPT)
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    done = _run(script, whole, -1, False)
    assert done.returncode == 0, done.stderr
    # 8 steps of 4 pairs, checkpoints every 8 examples (steps 2, 4, 6, 8); kill after step 5.
    dead = _run(script, killed, 5, False)
    assert dead.returncode == -signal.SIGKILL
    assert latest_checkpoint(killed).name == "step-0000004"
    assert len(read_log(killed)) == 5  # step 5 was logged, then lost with the kill
    again = _run(script, killed, -1, True)
    assert again.returncode == 0, again.stderr
    a = load_file(str(whole / "step-0000008" / "model.safetensors"))
    b = load_file(str(killed / "step-0000008" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert _untimed(read_log(whole)) == _untimed(read_log(killed))
    sa = torch.load(whole / "step-0000008" / "trainer_state.pt", weights_only=False)
    sb = torch.load(killed / "step-0000008" / "trainer_state.pt", weights_only=False)
    assert sa["examples_seen"] == sb["examples_seen"] == 32
    for x, y in zip(
        sa["optimizer"]["state"].values(), sb["optimizer"]["state"].values(), strict=True
    ):
        assert torch.equal(x["square_avg"], y["square_avg"])
    # A checkpoint folder is a model: the real from_pretrained code loads it.
    loaded = load_model(whole / "step-0000008")
    assert torch.equal(loaded.get_output_embeddings().weight, a["embed_out.weight"])


TREE_ARGS = [
    "--model", "tiny", "--source", "tree", "--tree-pairs", "0>1,5>7,3>20,11>2",
    "--batch-size", "4", "--micro-batch-size", "1", "--lr", "1e-3", "--warmup-steps", "0",
    "--epochs", "3", "--reference-dtype", "fp32", "--checkpoint-every", "0", "--no-progress",
]  # fmt: skip


@pytest.mark.slow
def test_two_processes_give_the_single_process_run(tmp_path):
    # Both runs in subprocesses with one intra-op thread each, so float reduction orders agree.
    script = str(ROOT / "experiments" / "llm_train.py")
    one = [sys.executable, script, *TREE_ARGS, "--out", str(tmp_path), "--run-name", "one"]
    with socket.socket() as s:  # a free port for the rendezvous
        s.bind(("127.0.0.1", 0))
        port = str(s.getsockname()[1])
    two = [
        sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
        "--master-addr", "127.0.0.1", "--master-port", port, script,
        *TREE_ARGS, "--out", str(tmp_path), "--run-name", "two",
    ]  # fmt: skip
    for cmd in (one, two):
        res = subprocess.run(cmd, env=subprocess_env(), capture_output=True, text=True, timeout=300)
        assert res.returncode == 0, res.stderr[-2000:]
    one, two = read_log(tmp_path / "one"), read_log(tmp_path / "two")
    assert len(one) == len(two) == 3
    for r1, r2 in zip(one, two, strict=True):
        for k in ("loss", "margins", "logps_chosen", "grad_norm", "reward_accuracy"):
            assert r2[k] == pytest.approx(r1[k], rel=1e-6, abs=1e-7), k
    a = load_file(str(tmp_path / "one" / "step-0000003" / "model.safetensors"))
    b = load_file(str(tmp_path / "two" / "step-0000003" / "model.safetensors"))
    for k in a:  # RMSProp amplifies float-order noise on ~0 gradients up to ~lr; see objectives
        torch.testing.assert_close(a[k], b[k], atol=3e-4, rtol=0)


def test_help_documents_every_flag():
    cli = load_cli()
    text = build_parser(cli.Config, "").format_help()
    for f in cli.Config.__dataclass_fields__:
        assert "--" + f.replace("_", "-") in text
    assert "RMSProp learning rate" in text
    assert re.search(r"\[default:\s+5e-07\]", text)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--source", "jsonl"], "--data must name a JSONL file"),
        (["--tree-pairs", "0>x"], "tree_pairs must look like"),
        (["--tree-pairs", "0>0"], "row 1: chosen == rejected"),
        (["--batch-size", "3", "--micro-batch-size", "2"], "--batch-size 3 must be a multiple"),
        (["--model", "./no/folder"], "model folder ./no/folder does not exist"),
        (["--lr", "-1"], "lr must be > 0"),
    ],
)
def test_user_mistakes_exit_2_with_one_line(tmp_path, capsys, args, message):
    cli = load_cli()
    with pytest.raises(SystemExit) as exc:
        run(cli.Config, cli.main, [*args, "--out", str(tmp_path), "--no-progress"])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("llm_train") or "error:" in err
    assert __import__("re").search(message, err), err


def test_jsonl_run_skips_and_counts_bad_rows(tmp_path, capsys):
    data = tmp_path / "pairs.jsonl"
    rows = [
        {"prompt": "Q: sky?", "chosen": " blue", "rejected": " green"},
        {"prompt": "Q: sea?", "chosen": " wet", "rejected": " wet"},
        {"prompt": "Q: sun?", "chosen": " hot", "rejected": " cold"},
    ]
    data.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    cli = load_cli()
    base = ["--source", "jsonl", "--data", str(data), "--batch-size", "2", "--micro-batch-size",
            "2", "--warmup-steps", "0", "--out", str(tmp_path), "--no-progress",
            "--reference-dtype", "bf16"]  # fmt: skip
    with pytest.raises(SystemExit):
        run(cli.Config, cli.main, base)
    assert "row 2: chosen == rejected" in capsys.readouterr().err
    final = cli.main(parse_config(cli.Config, [*base, "--on-bad-row", "skip"]))
    out = capsys.readouterr()
    assert "2 pairs; skipped 1 bad rows" in out.err and "skipped row 2" in out.err
    assert out.out.strip().startswith("done: final checkpoint") and final.is_dir()
    config = json.loads((final.parent / "config.json").read_text())
    assert config["on_bad_row"] == "skip" and config["reference_dtype"] == "bf16"
    report = json.loads((final.parent / "data.json").read_text())
    assert report["pairs"] == 2 and report["skipped"] == 1
    assert report["skipped_rows"][0].startswith("row 2: chosen == rejected")


def test_tldr_without_datasets_exits_2_saying_how_to_install(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # import datasets → ImportError
    cli = load_cli()
    with pytest.raises(SystemExit) as exc:
        run(cli.Config, cli.main, ["--source", "tldr", "--out", str(tmp_path)])
    assert exc.value.code == 2
    assert "pip install -c constraints.txt datasets" in capsys.readouterr().err


def test_sft_on_samples_of_a_given_policy_then_dpo_from_the_sft_folder(tmp_path, capsys):
    cli = load_cli()
    common = [*TREE_ARGS[:6], "--out", str(tmp_path), "--no-progress", "--batch-size", "2",
              "--micro-batch-size", "2", "--warmup-steps", "0", "--lr", "1e-3"]  # fmt: skip
    sampler = cli.main(parse_config(cli.Config, [*common, "--stage", "sft", "--run-name", "sft0"]))
    sft = cli.main(parse_config(cli.Config, [
        *common, "--stage", "sft", "--sft-source", "samples", "--sample-model", str(sampler),
        "--sample-max-new-tokens", "3", "--run-name", "sft1", "--epochs", "2"]))  # fmt: skip
    assert len(read_log(tmp_path / "sft1")) == 4  # 4 pairs × 2 epochs / batch 2
    final = cli.main(parse_config(cli.Config, [
        *common, "--model", str(sft), "--objective", "slic", "--precompute-reference",
        "--reference-dtype", "fp32", "--run-name", "daa"]))  # fmt: skip
    row = read_log(tmp_path / "daa")[0]
    assert row["loss"] == pytest.approx(1.0)  # SLiC hinge at h = 0: max(0, 1 - 0)
    shutil.rmtree(final)


def test_resume_refuses_changed_settings(tmp_path, tiny_model, text_examples):
    from llm.losses import DAALoss
    from llm.train import TrainConfig, train

    ref = copy.deepcopy(tiny_model)
    cfg = TrainConfig(lr=1e-3, warmup_steps=0, batch_size=4, micro_batch_size=4, epochs=1,
                      checkpoint_every=4)  # fmt: skip
    train(tiny_model, text_examples, DAALoss("dpo", 0.1, reference=ref), cfg, tmp_path,
          pad_id=0, progress=False)  # fmt: skip
    other = TrainConfig(**{**cfg.__dict__, "lr": 2e-3})
    with pytest.raises(ValueError, match=r"cannot resume .*\['lr'\]"):
        train(tiny_model, text_examples, DAALoss("dpo", 0.1, reference=ref), other, tmp_path,
              pad_id=0, resume=True, progress=False)  # fmt: skip
    # The same settings resume a finished run without doing anything.
    final = train(tiny_model, text_examples, DAALoss("dpo", 0.1, reference=ref), cfg, tmp_path,
                  pad_id=0, resume=True, progress=False)  # fmt: skip
    assert final.name == "step-0000002" and len(read_log(tmp_path)) == 2


def test_a_half_written_checkpoint_is_never_resumed_from(tmp_path, tiny_model, text_examples):
    from llm.losses import DAALoss
    from llm.train import TrainConfig, train
    from treemdp.runs import atomic_write_text

    ref = copy.deepcopy(tiny_model)
    cfg = TrainConfig(lr=1e-3, warmup_steps=0, batch_size=4, micro_batch_size=4, epochs=1,
                      checkpoint_every=4)  # fmt: skip
    train(copy.deepcopy(tiny_model), text_examples, DAALoss("dpo", 0.1, reference=ref), cfg,
          tmp_path, pad_id=0, progress=False)  # fmt: skip
    assert latest_checkpoint(tmp_path).name == "step-0000002"
    # A run killed while writing step 3 leaves a temporary folder; latest.json is untouched.
    (tmp_path / ".step-0000003.tmp-99").mkdir()
    (tmp_path / ".step-0000003.tmp-99" / "model.safetensors").write_bytes(b"partial")
    assert latest_checkpoint(tmp_path).name == "step-0000002"
    # A pointer to a folder without trainer state (impossible with os.replace) is not trusted,
    # nor silently replaced by a fresh start: the message names the checkpoint to point at.
    atomic_write_text(tmp_path / "latest.json", json.dumps({"checkpoint": ".step-0000003.tmp-99"}))
    dangling = r'names .step-0000003.tmp-99, which is missing .*"step-0000002"'
    with pytest.raises(ValueError, match=dangling):
        latest_checkpoint(tmp_path)
    assert not list(tmp_path.glob(".latest.json.tmp-*"))


def test_a_resumed_optimizer_state_saves_to_the_same_bytes(tmp_path, tiny_model):
    # After a resume the optimizer's state keys are str objects read back from the checkpoint;
    # pickle refers back to strings by identity, so without interning the very same state was
    # written to other bytes (the llm_confirm kill harness saw trainer_state.pt differ).
    from llm.checkpoint import STATE, load_checkpoint, save_checkpoint

    def fresh():
        model = copy.deepcopy(tiny_model)
        opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
        return model, opt, sched

    model, opt, sched = fresh()
    model(input_ids=torch.tensor([[1, 2, 3]])).logits.sum().backward()
    opt.step()
    sched.step()
    torch.manual_seed(0)
    a = save_checkpoint(tmp_path / "a", step=1, model=model, optimizer=opt, scheduler=sched,
                        state={"config": {"objective": "dpo"}})  # fmt: skip
    model2, opt2, sched2 = fresh()
    load_checkpoint(a, model=model2, optimizer=opt2, scheduler=sched2)
    torch.manual_seed(0)
    b = save_checkpoint(tmp_path / "b", step=1, model=model2, optimizer=opt2, scheduler=sched2,
                        state={"config": {"objective": "dpo"}})  # fmt: skip
    assert (a / STATE).read_bytes() == (b / STATE).read_bytes()
