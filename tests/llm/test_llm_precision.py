"""llm.precision: RMSProp with float32 state on bf16 weights (stochastic rounding), its numerics
against float32 training, and the memory arithmetic that picks a precision for a card."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from llm.data import collate_pairs
from llm.logprobs import concatenated_logps
from llm.losses import DAALoss
from llm.precision import (
    PRECISIONS,
    RMSpropFP32State,
    choose_precision,
    main,
    memory_plan,
    shape_params,
    stochastic_round,
)
from llm.train import TrainConfig, read_log, train
from tests.llm.helpers_llm import perturbed

H100, H200 = 81559 * 2**20, 143771 * 2**20  # nvidia-smi's memory.total, MiB


def _fake_grads(model, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    for p in model.parameters():
        p.grad = torch.randn(p.shape, generator=g).to(p.dtype)


def test_float32_weights_step_exactly_as_torch_rmsprop(tiny_model):
    a, b = tiny_model, copy.deepcopy(tiny_model)
    ours = RMSpropFP32State(list(a.parameters()), lr=1e-3)
    theirs = torch.optim.RMSprop(list(b.parameters()), lr=1e-3)
    for step in range(3):
        for model, opt in ((a, ours), (b, theirs)):
            _fake_grads(model, step)
            opt.step()
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=0, atol=1e-7)


def test_stochastic_rounding_is_unbiased_and_lands_on_a_neighbour():
    gen = torch.Generator().manual_seed(0)
    exact = torch.tensor([1.0, -2.5, 0.0, 3.0e-3, 65504.0]).to(torch.bfloat16).float()
    assert torch.equal(stochastic_round(exact, generator=gen).float(), exact)  # never moved
    # 1 + 0.3 spacings (bf16's spacing at 1 is 2^-7), and its negative: 30% up (in magnitude)
    for x in (1 + 0.3 * 2**-7, -(1 + 0.3 * 2**-7)):
        r = stochastic_round(torch.full((200_000,), x), generator=gen).float()
        lo, hi = sorted((abs(x) - 0.3 * 2**-7, abs(x) + 0.7 * 2**-7))
        assert set(r.abs().unique().tolist()) == {lo, hi}
        se = 2**-7 * (0.3 * 0.7 / r.numel()) ** 0.5
        assert abs(float(r.double().mean()) - x) < 5 * se
    with pytest.raises(ValueError, match="x must be float32"):
        stochastic_round(torch.ones(2, dtype=torch.float64))


def test_an_update_below_the_bf16_spacing_moves_the_weight_on_average():
    # A LayerNorm-like weight at 1 (bf16 spacing just below 1: 2^-8 = 0.0039) and RMSProp's
    # first step at lr 1e-4 (the SFT's): -lr·g/√(0.01·g²) = -10·lr = -0.001, under half a spacing.
    def one_step(optimizer):
        w = torch.nn.Parameter(torch.ones(100_000, dtype=torch.bfloat16))
        w.grad = torch.ones_like(w)
        optimizer([w]).step()
        return w.detach().double()

    plain = one_step(lambda ps: torch.optim.RMSprop(ps, lr=1e-4))
    assert torch.equal(plain, torch.ones_like(plain))  # round-to-nearest drops the update
    ours = one_step(lambda ps: RMSpropFP32State(ps, lr=1e-4, seed=3))
    se = 2**-8 * (0.26 * 0.74 / ours.numel()) ** 0.5  # ~26% of the weights step down
    assert abs(float(ours.mean()) - (1 - 1e-3)) < 5 * se


def test_state_is_float32_and_survives_a_state_dict_round_trip(tiny_model):
    model = tiny_model.to(torch.bfloat16)
    opt = RMSpropFP32State(list(model.parameters()), lr=1e-3, seed=1)
    _fake_grads(model, 0)
    opt.step()
    again = RMSpropFP32State(list(model.parameters()), lr=1e-3, seed=1)
    again.load_state_dict(copy.deepcopy(opt.state_dict()))  # torch would cast it to bf16
    for p in model.parameters():
        assert again.state[p]["square_avg"].dtype == torch.float32
        assert torch.equal(again.state[p]["square_avg"], opt.state[p]["square_avg"])
    with pytest.raises(ValueError, match="float32 or bfloat16"):
        RMSpropFP32State([torch.nn.Parameter(torch.ones(2, dtype=torch.float16))], lr=1e-3)
    with pytest.raises(ValueError, match="optimizer must be one of"):
        TrainConfig(optimizer="adam")


def _dpo(policy, reference, examples, *, precision: str, steps: int, out: Path, **kw):
    """``steps`` DPO steps of 4 pairs at lr 3e-4 (gpu_figures.sh's) at ``precision``; the
    per-step losses."""
    prec = PRECISIONS[precision]
    cfg = TrainConfig(
        lr=3e-4, warmup_steps=0, batch_size=4, micro_batch_size=4,
        epochs=steps * 4 / len(examples), optimizer=prec.optimizer, **kw,
    )  # fmt: skip
    loss = DAALoss("dpo", 0.1, reference=reference)
    train(policy.to(prec.weights), examples, loss, cfg, out, pad_id=0, progress=False, save=False)
    return [row["loss"] for row in read_log(out)]


def test_bf16_weights_train_within_tolerance_of_fp32(tiny_model, text_examples, tmp_path):
    # Stated tolerance (measured: 6e-4 and 0.05 nats at the tiny shape, 1.7e-3 and 0.10 at 14m
    # over 6-8 steps): per-step mean DPO loss within 5e-3 of fp32's, every summed response
    # log-prob within 0.25 nats, after 8 steps from the same start.
    reference = tiny_model.requires_grad_(False)
    start = perturbed(tiny_model, scale=0.02).requires_grad_(True)
    b = collate_pairs(text_examples, 0)
    logps, losses = {}, {}
    for name in ("fp32", "bf16-weights"):
        policy = copy.deepcopy(start)
        losses[name] = _dpo(policy, reference, text_examples, precision=name, steps=8,
                            out=tmp_path / name)  # fmt: skip
        with torch.no_grad():
            logps[name] = concatenated_logps(policy, *b.tensors())
    assert losses["fp32"][-1] < losses["fp32"][0] - 0.1  # it trained
    assert max(abs(x - y) for x, y in zip(*losses.values(), strict=True)) < 5e-3
    for side in ("chosen", "rejected"):
        got, want = getattr(logps["bf16-weights"], side), getattr(logps["fp32"], side)
        assert (got - want).abs().max() < 0.25


def test_memory_plan_picks_bf16_weights_for_6_9b_on_an_h100_only():
    assert shape_params("14m", vocab_size=50304) == 14_067_712  # Pythia-14m's released count
    n = shape_params("6.9b", vocab_size=16)
    assert 6.44e9 < n < 6.45e9  # 12·4096²·32 + biases and norms
    fp32 = memory_plan("6.9b", "fp32", reference_dtype="fp16", tokens=112)
    bf16 = memory_plan("6.9b", "bf16-weights", reference_dtype="bf16", tokens=112)
    # bytes per parameter: 4 + 4 + 8 (state and foreach's copy) + 2, and 2 + 2 + 4 + 2
    assert fp32["weights"] + fp32["gradients"] + fp32["optimizer"] == 16 * n
    assert bf16["weights"] + bf16["gradients"] == 4 * n and 4 * n < bf16["optimizer"] < 4.2 * n
    assert fp32["reference"] == bf16["reference"] == 2 * n
    assert fp32["total"] > H100 and bf16["total"] < 0.85 * H100  # fits with > 15% to spare
    assert choose_precision("6.9b", H100) == "bf16-weights"
    assert choose_precision("6.9b", H200) == "fp32"
    assert choose_precision("2.8b", H100) == choose_precision("1b", H100) == "fp32"
    with pytest.raises(ValueError, match="no precision fits"):
        choose_precision("12b", H100)


def test_command_line_prints_the_choice_and_the_plans(capsys):
    main(["--size", "6.9b", "--memory-mib", "81559", "--plan"])
    lines = capsys.readouterr().out.splitlines()
    assert lines[-1] == "bf16-weights" and len(lines) == 5
    assert lines[0].startswith("fp32 sft: weights 25.8, gradients 25.8, optimizer 51.6")


def test_a_resumed_bf16_weights_run_ends_with_the_same_weights(tiny_model, text_examples, tmp_path):
    # The state stays fp32 through the checkpoint, and the rounding's random bits depend on the
    # step, not on the process: resuming from step 2 gives step 4's weights bit for bit.
    cfg = TrainConfig(lr=1e-3, warmup_steps=0, batch_size=4, micro_batch_size=4,
                      epochs=2.0, checkpoint_every=8, optimizer="rmsprop-fp32-state")  # fmt: skip
    loss = DAALoss("dpo", 0.1, reference=tiny_model.requires_grad_(False))
    start = perturbed(tiny_model, scale=0.02).requires_grad_(True).to(torch.bfloat16)
    first = copy.deepcopy(start)
    train(first, text_examples, loss, cfg, tmp_path, pad_id=0, progress=False)  # 4 steps
    import shutil

    shutil.rmtree(tmp_path / "step-0000004")
    (tmp_path / "latest.json").write_text('{"checkpoint": "step-0000002", "step": 2}')
    again = copy.deepcopy(start)
    train(again, text_examples, loss, cfg, tmp_path, pad_id=0, progress=False, resume=True)
    for p, q in zip(first.parameters(), again.parameters(), strict=True):
        assert p.dtype == torch.bfloat16 and torch.equal(p, q)


def test_checkpoints_from_before_the_optimizer_field_resume_with_rmsprop(tmp_path):
    from dataclasses import asdict, replace

    from llm.train import _check_resume

    cfg = TrainConfig()
    old = {k: v for k, v in asdict(cfg).items() if k != "optimizer"}  # written before the field
    _check_resume({"train_config": old}, cfg, 10, tmp_path)  # torch's RMSprop then and now
    with pytest.raises(ValueError, match=r"cannot resume .*\['optimizer'\]"):
        _check_resume({"train_config": old}, replace(cfg, optimizer="rmsprop-fp32-state"), 10,
                      tmp_path)  # fmt: skip
