"""The toy on a device: ``--device cpu|cuda|auto`` and ``--precision`` (treemdp.devices, train).

Device plumbing is tested on the CPU; the CUDA equalities skip without a GPU and run in
scripts/gpu_toy.sh."""

from __future__ import annotations

from dataclasses import replace

import pandas as pd
import pytest
import torch

import treemdp.train as train_module
from tests.scripts import load_script
from treemdp.devices import PrecisionError, resolve_device, to_device
from treemdp.problem import ProblemSpec, build_problem
from treemdp.runs import read_table
from treemdp.runs.cli import with_flags
from treemdp.train import grid, train
from treemdp.tree import Tree

CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not CUDA, reason="needs a CUDA device (scripts/gpu_toy.sh)")
no_cuda = pytest.mark.skipif(CUDA, reason="checks the error without a CUDA device")


@pytest.fixture(scope="module")
def batch():
    problems = build_problem(Tree.complete(2, 3), [0, 1], ProblemSpec(sft_steps=20))
    return grid(problems, ["dpo", "ipo"], [0.1, 0.5], 0.01)


def _train(batch, **kwargs):
    problem, specs = batch
    return train(problem, specs, steps=40, log_every=10, **kwargs)


def test_an_explicit_cpu_equals_the_default(batch):
    default, cpu = _train(batch), _train(batch, device="cpu")
    pd.testing.assert_frame_equal(default.frame, cpu.frame, check_exact=True)
    assert torch.equal(default.theta, cpu.theta)


@no_cuda
def test_auto_is_the_cpu_here_and_cuda_is_a_one_line_error(batch):
    assert resolve_device("auto") == torch.device("cpu")
    pd.testing.assert_frame_equal(_train(batch, device="auto").frame, _train(batch).frame)
    with pytest.raises(ValueError, match=r"^--device cuda: this torch sees no CUDA device") as e:
        _train(batch, device="cuda")
    assert "\n" not in str(e.value)


def test_unknown_devices_and_precisions_are_refused(batch):
    with pytest.raises(ValueError, match="--device 'tpu' is not a device torch knows"):
        _train(batch, device="tpu")
    with pytest.raises(ValueError, match="precision must be one of float64, float32"):
        _train(batch, precision="float16")


def test_moving_a_problem_keeps_its_structure_and_casts_only_floats(batch):
    problem, _ = batch
    _ = problem.ref_logp  # a cached value moves with the rest
    moved = to_device(problem, torch.device("cpu"), torch.float32)
    assert moved.tree is moved.policy.tree  # shared objects stay shared
    assert moved.rewards.dtype == torch.float32 and moved.ref_logp.dtype == torch.float32
    assert moved.pairs.chosen.dtype == torch.long and moved.tree.parent.dtype == torch.long
    assert problem.rewards.dtype == torch.float64  # the original is untouched
    assert torch.allclose(moved.rewards.double(), problem.rewards, atol=1e-6)


def test_float32_trains_in_float32_and_stays_within_its_tolerance_of_float64(batch):
    wide, narrow = _train(batch), _train(batch, precision="float32")
    assert narrow.theta.dtype == torch.float64  # returned on the CPU in float64 ...
    gap = (narrow.theta - wide.theta).abs().max()
    assert 0 < gap < 1e-3  # ... but computed in float32: close, not equal
    assert (narrow.frame["mass_ood"] - wide.frame["mass_ood"]).abs().max() < 1e-4


def test_float32_beyond_the_tolerance_is_refused(batch, monkeypatch):
    monkeypatch.setattr(train_module, "FLOAT32_TOLERANCE", 0.0)
    with pytest.raises(PrecisionError, match=r"float32 differs from float64 by .* checked on runs"):
        _train(batch, precision="float32", check_sample=2)


EXPERIMENTS = ("ood_mass", "sweep", "toy_scaling", "theory_check")


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_every_toy_experiment_takes_device_and_precision_outside_its_folder_name(name):
    module = load_script(f"experiments/{name}.py")
    config = module.Config()
    assert config.device == "cpu" and config.precision == "float64"
    folder = module.output_folder(config)
    assert module.output_folder(with_flags(config, {"device": "auto"})) == folder
    assert module.output_folder(with_flags(config, {"precision": "float32"})) != folder


@no_cuda
@pytest.mark.parametrize("name", EXPERIMENTS)
def test_every_toy_experiment_refuses_cuda_without_one_before_writing(name, tmp_path):
    module = load_script(f"experiments/{name}.py")
    config = with_flags(module.Config(), {"device": "cuda", "out": str(tmp_path)})
    with pytest.raises(ValueError, match="--device cuda: this torch sees no CUDA device"):
        module.main(config)
    assert not any(tmp_path.iterdir())


@needs_cuda
def test_cuda_float64_equals_the_cpu(batch):
    cpu, gpu = _train(batch), _train(batch, device="cuda")
    numeric = cpu.frame.select_dtypes("number").columns
    gap = (cpu.frame[numeric] - gpu.frame[numeric]).abs().max().max()
    assert gap < 1e-9, gap
    assert (cpu.theta - gpu.theta).abs().max() < 1e-9


@needs_cuda
def test_cuda_float32_passes_its_own_check_and_a_ray_free_sweep_runs_there(tmp_path):
    sweep = load_script("experiments/sweep.py")
    small = dict(objectives=("dpo",), betas=(0.1,), seeds=("0-3",), steps=50, progress=False)
    config = with_flags(sweep.Config(), {**small, "sft_steps": 10, "out": str(tmp_path)})
    cpu = read_table(sweep.main(config) / "metrics.csv")
    gpu = read_table(
        sweep.main(replace(config, device="cuda", out=str(tmp_path / "gpu"))) / "metrics.csv"
    )
    assert (cpu["mass_ood"] - gpu["mass_ood"]).abs().max() < 1e-9
    sweep.main(replace(config, device="cuda", precision="float32", out=str(tmp_path / "f32")))


class _StoppedError(Exception):
    """Stops an experiment at its call of ``train``, with the keyword arguments it passed."""


def _stop(*args, **kwargs):
    raise _StoppedError(kwargs)


@pytest.mark.parametrize(
    ("name", "small"),
    [
        ("ood_mass", {"seed": (0,), "steps": 1}),
        ("theory_check", {"seed": (0,), "steps": 1}),
        ("toy_scaling", {"quick": True, "seed": (0,)}),
        ("sweep", {"seeds": ("0",), "steps": 1, "progress": False}),
    ],
)
def test_every_toy_experiment_passes_its_device_and_precision_to_train(
    name, small, tmp_path, monkeypatch
):
    module = load_script(f"experiments/{name}.py")
    monkeypatch.setattr(module, "train", _stop)
    settings = {**small, "device": "auto", "precision": "float32", "out": str(tmp_path)}
    with pytest.raises(_StoppedError) as sent:
        module.main(with_flags(module.Config(), settings))
    assert sent.value.args[0]["device"] == "auto"
    assert sent.value.args[0]["precision"] == "float32"


def test_an_extra_metrics_hook_sees_cpu_float64_whatever_the_precision(batch):
    seen = []

    def hook(logp):
        seen.append((logp.device.type, logp.dtype))
        return {"total": logp.exp().sum(-1)}

    history = _train(batch, precision="float32", extra_metrics=hook)
    assert set(seen) == {("cpu", torch.float64)}
    assert (history.frame["total"] - 1).abs().max() < 1e-5  # π sums to 1 (float32 rounding)
