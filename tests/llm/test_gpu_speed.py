"""The DPO step's speed levers give the same step (CPU), and scripts/gpu_speed.sh's dry run."""

from __future__ import annotations

import functools
import subprocess
import sys

import pandas as pd
import pytest
import torch

from llm.data import collate_pairs
from llm.logprobs import concatenated_logps
from llm.losses import DAALoss
from llm.model import build_model, compile_blocks
from tests.llm.helpers_llm import ROOT, perturbed, subprocess_env
from tests.scripts import load_script


@functools.cache
def has_trl() -> bool:
    """Whether gpu_speed.sh's Python, in the environment the tests give it, imports trl and
    datasets: that decides which way its TRL stage goes."""
    check = "import importlib.util as u, sys; sys.exit(not all(map(u.find_spec, sys.argv[1:])))"
    argv = [sys.executable, "-c", check, "trl", "datasets"]
    return subprocess.run(argv, env=subprocess_env()).returncode == 0


def _logps(model, batch):
    return concatenated_logps(model, batch.input_ids, batch.attention_mask, batch.response_mask)


def test_build_on_a_device_in_its_dtype(tokenizer):
    model = build_model("tiny", vocab_size=len(tokenizer), dtype=torch.bfloat16, device="cpu")
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert {p.device.type for p in model.parameters()} == {"cpu"}
    # The default build (device None) is untouched by the option: same weights as before.
    a, b = build_model("tiny", seed=3), build_model("tiny", seed=3, device=None)
    assert all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters(), strict=True))
    with pytest.raises(ValueError, match="attn_implementation must be one of"):
        build_model("tiny", attn_implementation="fast")


def test_eager_attention_and_compiled_blocks_give_the_sdpa_log_probs(tiny_model, text_examples):
    b = collate_pairs(text_examples[:4], 0)  # rows of different lengths: padding is exercised
    sdpa = perturbed(tiny_model)
    assert sdpa.config._attn_implementation == "sdpa"
    want = _logps(sdpa, b)
    sdpa.config._attn_implementation = "eager"
    got = _logps(sdpa, b)
    torch.testing.assert_close(got.chosen, want.chosen, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got.rejected, want.rejected, rtol=1e-5, atol=1e-5)
    sdpa.config._attn_implementation = "sdpa"
    names = list(sdpa.state_dict())
    compile_blocks(sdpa, backend="eager")  # dynamo only: the C++ build takes minutes on a CPU
    assert list(sdpa.state_dict()) == names  # checkpoints keep their tensor names
    got = _logps(sdpa, b)
    torch.testing.assert_close(got.chosen, want.chosen, rtol=1e-6, atol=1e-5)


def test_bf16_autocast_on_fp32_master_weights_keeps_the_first_loss(tiny_model, text_examples):
    b = collate_pairs(text_examples, 0)
    policy, reference = perturbed(tiny_model, scale=0.2), tiny_model.requires_grad_(False)
    index = torch.arange(len(text_examples))
    loss = DAALoss("dpo", 0.1, reference=reference)
    fp32, _ = loss(policy, b, index)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed, _ = loss(policy, b, index)
    mixed.backward()
    assert {p.grad.dtype for p in policy.parameters()} == {torch.float32}  # master gradients
    n = len(index)
    assert float(fp32.detach()) / n != pytest.approx(0.6931, abs=1e-3)  # not the trivial log 2
    # bf16 rounds each matmul to ~3 significant digits; the summed log-probs of a ~10-token
    # response stay within ~0.1 nats, the mean DPO loss within ~1e-2.
    diff = abs(float(mixed.detach()) - float(fp32.detach())) / n
    assert 0 < diff < 1e-2


@pytest.mark.slow
def test_smoke_gpu_speed_cpu_dry_run_writes_the_results_table(tmp_path):
    # every stage of the dry run but TRL's, which tests/llm/test_gpu_all.py's dry run runs
    # (ONLY=bench-trl, as on the GPU) and checks with _check_trl_rows
    res = subprocess.run(
        ["bash", str(ROOT / "scripts" / "gpu_speed.sh"), "--cpu-dry-run"],
        env={**subprocess_env(), "OUT": str(tmp_path), "PYTHON": sys.executable,
             "ONLY": "packing-cuda,bench-small,bench-large,bench-compile,fsdp"},
        cwd=ROOT, capture_output=True, text=True, timeout=400,
    )  # fmt: skip
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    table = pd.read_csv(tmp_path / "results.csv")
    assert set(table["stage"]) == {"benchmark", "fsdp", "timing", "packing"}
    packing = table[table["stage"] == "packing"].set_index("metric")["value"]
    assert packing.to_dict() == {"skipped": 12.0}  # the CUDA tests, said so (no CUDA here)
    bench = table[table["stage"] == "benchmark"]
    levers = {item.split()[1] for item in bench["item"]}
    want = ("eager", "autocast", "micro8", "fp32", "packed", "pairs", "compile")
    assert levers == {"llm.train", *(f"llm.train:{v}" for v in want)}
    assert "tiny llm.train 8 pairs fp32" in set(bench["item"])  # the base row
    mfu = bench[bench["metric"] == "mfu"]["value"]
    assert len(mfu) == 8 and (mfu > 0).all()
    run = bench[bench["metric"] == "tokens_run"].set_index("item")["value"]
    base, rows, pairs = (run[f"tiny llm.train{v} 8 pairs fp32"] for v in ("", ":packed", ":pairs"))
    assert base > rows > pairs > 0  # padding, then the repeated prompts, left out
    assert abs(vs_fp32_of(bench, "tiny llm.train:pairs 8 pairs fp32")) < 1e-5
    vs_fp32 = bench[bench["metric"] == "first_loss_vs_fp32"].set_index("item")["value"]
    assert abs(vs_fp32["tiny llm.train 8 pairs fp32"]) == 0  # base is fp32 in the dry run
    assert abs(vs_fp32["tiny llm.train:autocast 8 pairs fp32"]) < 1e-2
    fsdp = table[table["stage"] == "fsdp"].set_index(["item", "metric"])["value"]
    assert fsdp[("resume from step 2", "max |resumed - first run| (steps 3-4)")] == 0
    assert fsdp[("sharded checkpoint", "dcp files")] >= 1
    assert fsdp[("export", "from_pretrained parameters")] > 0


def vs_fp32_of(bench: pd.DataFrame, item: str) -> float:
    return bench[bench["metric"] == "first_loss_vs_fp32"].set_index("item")["value"][item]


def _check_trl_rows(table: pd.DataFrame) -> None:
    """The TRL stage either ran (TRL's row and our speed-up over it) or left a row that says
    why not: it never passes silently."""
    skipped = table[table["stage"] == "skipped"]
    if has_trl():
        trl = table[table["stage"] == "trl"].set_index(["item", "metric"])["value"]
        assert trl[("tiny trl.DPOTrainer 8 pairs fp32", "seconds_per_step")] > 0
        assert trl[("tiny llm.train 8 pairs fp32", "speedup_vs_trl")] > 0
        assert abs(trl[("tiny llm.train 8 pairs fp32", "first_loss_vs_trl")]) < 1e-5
        assert skipped.empty
    else:
        assert list(skipped["item"]) == ["bench-trl"]
        assert skipped["metric"].iloc[0].startswith("skipped: trl not importable (")
        assert not (table["stage"] == "trl").any()


def test_gpu_speed_trl_stage_without_trl_leaves_a_skipped_row(tmp_path):
    if has_trl():
        pytest.skip("trl is importable here: test_gpu_all.py's dry run runs TRL's stage")
    res = subprocess.run(
        ["bash", str(ROOT / "scripts" / "gpu_speed.sh"), "--cpu-dry-run"],
        env={**subprocess_env(), "OUT": str(tmp_path), "PYTHON": sys.executable,
             "ONLY": "bench-trl"},
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "bench-trl: skipped: trl not importable" in res.stdout  # one line in the log
    table = pd.read_csv(tmp_path / "results.csv")
    assert set(table["stage"]) == {"skipped"}  # ONLY: no other stage ran
    _check_trl_rows(table)


def test_benchmark_runs_trl_on_cuda_and_asks_for_trl_or_no_trl(monkeypatch, capsys):
    bench = load_script("benchmarks/llm_dpo_step.py")
    monkeypatch.setattr(bench, "trl_missing", lambda: [])
    args = bench.parse_args(["--device", "cuda", "--dtype", "bf16"])  # no --no-trl needed now
    assert (args.device, args.no_trl, args.trl_gradient_checkpointing) == ("cuda", False, False)
    monkeypatch.setattr(bench, "trl_missing", lambda: ["trl", "datasets"])
    with pytest.raises(SystemExit) as stop:
        bench.parse_args(["--device", "cuda"])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert "cannot import trl, datasets" in err
    assert "scripts/trl_wheels.sh" in err and "--no-trl" in err
    assert bench.parse_args(["--device", "cuda", "--no-trl"]).no_trl  # ours alone needs no TRL
    with pytest.raises(SystemExit):
        bench.parse_args(["--no-trl", "--variants", "base,fast"])
    assert "unknown ['fast']" in capsys.readouterr().err
