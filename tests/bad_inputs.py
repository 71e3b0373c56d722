"""Invalid inputs, as data: the public functions' argument checks (``API_CASES``) and a generator
of invalid values for every constrained CLI flag (``invalid_flag_values``).

docs/reference.md is generated from this table and the config dataclasses
(``python scripts/make_reference.py``); tests/test_bad_input.py runs every case and checks that
the doc is in sync.
"""

from __future__ import annotations

import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from treemdp import objectives, scaling
from treemdp.batching import EpochSchedule
from treemdp.data import random_pairs, validate_pairs
from treemdp.metrics import weighted_r2
from treemdp.optim import make_optimizer
from treemdp.problem import ProblemSpec, build_problem
from treemdp.runs import read_table
from treemdp.runs.cli import config_flags
from treemdp.train import RunSpec, train
from treemdp.tree import Tree


@dataclass(frozen=True)
class ApiCase:
    """One invalid call: ``call()`` must raise ValueError matching ``message`` (the argument's
    name and its allowed range)."""

    function: str
    argument: str
    valid: str
    call: Callable[[], Any]
    message: str


_T = Tree.complete(2, 2)
_Z = torch.zeros(2)


def _problem():
    return build_problem(_T, [0], ProblemSpec(sft_steps=0))


def _loss(name: str, **kw: Any) -> Callable[[], Any]:
    return lambda: objectives.loss(name, _Z, _Z, _Z, _Z, **kw)


API_CASES: list[ApiCase] = [
    ApiCase("treemdp.tree.Tree.complete", "branching", ">= 2", lambda: Tree.complete(1, 2),
            "branching must be >= 2"),
    ApiCase("treemdp.tree.Tree.complete", "depth", ">= 1", lambda: Tree.complete(2, 0),
            "depth must be >= 1"),
    ApiCase("treemdp.tree.Tree.complete", "n_prompts", ">= 1",
            lambda: Tree.complete(2, 2, n_prompts=0), "n_prompts must be >= 1"),
    ApiCase("treemdp.tree.Tree.with_stop", "max_length", ">= 1", lambda: Tree.with_stop(2, 0),
            "max_length must be >= 1"),
    ApiCase("treemdp.tree.Tree.from_sequences", "sequences", "distinct, prefix-free, actions "
            "in [0, b-1]", lambda: Tree.from_sequences([(0,), (0, 1)], branching=2),
            "is a prefix of another"),
    ApiCase("treemdp.data.validate_pairs", "chosen/rejected", "indices in [0, L-1], "
            "chosen ≠ rejected", lambda: validate_pairs(_T, torch.tensor([0]), torch.tensor([0])),
            "chosen == rejected"),
    ApiCase("treemdp.data.validate_pairs", "chosen/rejected", "indices in [0, L-1], "
            "chosen ≠ rejected", lambda: validate_pairs(_T, torch.tensor([0]), torch.tensor([9])),
            r"must hold response indices in \[0, 3\]"),
    ApiCase("treemdp.data.random_pairs", "n_pairs", ">= 1",
            lambda: random_pairs(_T, torch.zeros(4), 0, torch.Generator()),
            "n_pairs must be >= 1"),
    ApiCase("treemdp.objectives.loss", "name", "a registry name",
            _loss("ppo", beta=0.1), "objective must be one of dpo"),
    ApiCase("treemdp.objectives.loss", "beta", "finite, > 0", _loss("dpo", beta=0.0),
            "beta must be finite and > 0"),
    ApiCase("treemdp.objectives.loss", "beta", "finite, > 0", _loss("dpo", beta=float("inf")),
            "beta must be finite and > 0"),
    ApiCase("treemdp.objectives.loss", "epsilon (cdpo)", "[0, 0.5]",
            _loss("cdpo", beta=0.1, epsilon=0.7), r"epsilon must lie in \[0.0, 0.5\]"),
    ApiCase("treemdp.objectives.loss", "epsilon (robust_dpo)", "[0, 0.5)",
            _loss("robust_dpo", beta=0.1, epsilon=0.5), r"epsilon must lie in \[0.0, 0.5\)"),
    ApiCase("treemdp.objectives.loss", "epsilon (exo)", "(0, 1)",
            _loss("exo", beta=0.1, epsilon=1.0), r"epsilon must lie in \(0, 1\)"),
    ApiCase("treemdp.objectives.loss", "r_max (chipo)", "> 0", _loss("chipo", beta=0.1, r_max=0),
            "r_max must be > 0"),
    ApiCase("treemdp.objectives.loss", "tau (discopop)", "> 0",
            _loss("discopop", beta=0.1, tau=0), "tau must be > 0"),
    ApiCase("treemdp.objectives.loss", "len_chosen/len_rejected", "> 0",
            _loss("ln_dpo", beta=0.1, len_chosen=0, len_rejected=1), "len_chosen must be > 0"),
    ApiCase("treemdp.objectives.loss", "**hyper", "the entry's hyperparameters",
            _loss("dpo", beta=0.1, gamma=1.0), "takes hyperparameters"),
    ApiCase("treemdp.optim.make_optimizer", "name", "sgd, adam, rmsprop",
            lambda: make_optimizer("lion", 0.1, 1), "optimizer must be one of"),
    ApiCase("treemdp.optim.make_optimizer", "lr", "finite, > 0",
            lambda: make_optimizer("adam", -1.0, 1), "lr must be finite and > 0"),
    ApiCase("treemdp.batching.EpochSchedule", "batch_size", ">= 1",
            lambda: EpochSchedule(4, 0, seed=0), "batch_size must be >= 1"),
    ApiCase("treemdp.problem.build_problem", "policy", "loglinear, tabular, mlp",
            lambda: build_problem(_T, [0], ProblemSpec(policy="cnn")), "policy must be one of"),
    ApiCase("treemdp.problem.build_problem", "sft_steps", ">= 0",
            lambda: build_problem(_T, [0], ProblemSpec(sft_steps=-1)), "sft_steps must be >= 0"),
    ApiCase("treemdp.problem.build_problem", "seeds", "at least one",
            lambda: build_problem(_T, []), "seeds must hold at least one seed"),
    ApiCase("treemdp.train.train", "steps", ">= 0",
            lambda: train(_problem(), [RunSpec("dpo", 0.1, 0.1)], steps=-1),
            "steps must be >= 0"),
    ApiCase("treemdp.train.train", "log_every", ">= 1",
            lambda: train(_problem(), [RunSpec("dpo", 0.1, 0.1)], steps=1, log_every=0),
            "log_every must be >= 1"),
    ApiCase("treemdp.train.train", "specs", "one RunSpec per run",
            lambda: train(_problem(), [], steps=1), "specs must hold one RunSpec per run"),
    ApiCase("treemdp.train.train", "RunSpec.lr", "> 0",
            lambda: train(_problem(), [RunSpec("dpo", 0.1, 0.0)], steps=1), "lr must be > 0"),
    ApiCase("treemdp.train.train", "precision", "float64, float32",
            lambda: train(_problem(), [RunSpec("dpo", 0.1, 0.1)], steps=1, precision="half"),
            "precision must be one of float64, float32"),
    ApiCase("treemdp.train.train", "check_sample", ">= 1",
            lambda: train(_problem(), [RunSpec("dpo", 0.1, 0.1)], steps=1, check_sample=0),
            "check_sample must be >= 1"),
    ApiCase("treemdp.train.train", "device", "cpu, cuda[:N] (if present), auto",
            lambda: train(_problem(), [RunSpec("dpo", 0.1, 0.1)], steps=1, device="tpu"),
            "--device 'tpu' is not a device torch knows"),
    ApiCase("treemdp.metrics.weighted_r2", "weights", ">= 0, positive sum per run",
            lambda: weighted_r2(torch.ones(1, 3), torch.ones(1, 3), -torch.ones(1, 3)),
            "weights must be >= 0"),
    ApiCase("treemdp.scaling.fit", "form", "a scaling form", lambda: scaling.fit(
            "cubic", [0.0, 1.0, 2.0], [0.0, 1.0, 2.0]), "form must be one of"),
    ApiCase("treemdp.runs.read_table", "path", "an existing, intact table",
            lambda: read_table("/nonexistent/metrics.csv"), "does not exist: run the experiment"),
    ApiCase("llm.train.TrainConfig", "lr", "> 0", lambda: _llm_config(lr=0.0),
            "lr must be > 0"),
    ApiCase("llm.train.TrainConfig", "batch_size", "multiple of micro_batch_size",
            lambda: _llm_config(batch_size=3, micro_batch_size=2), "must be a multiple"),
    ApiCase("llm.train.TrainConfig", "warmup_steps", ">= 0", lambda: _llm_config(warmup_steps=-1),
            "warmup_steps must be >= 0"),
    ApiCase("treemdp.tree.Tree.with_stop", "max_length", "node arrays within max_bytes",
            lambda: Tree.with_stop(3, 40), "needs 245760.00 GiB .*use a smaller tree"),
    ApiCase("treemdp.memory.check_memory", "need", "<= memory_mb MiB",
            lambda: _memory().check_memory(2**31, 1024, "x"),
            "x needs about 2,048 MiB \\(estimate\\), over --memory-mb 1024"),
    ApiCase("treemdp.memory.check_memory", "memory_mb", ">= 1",
            lambda: _memory().check_memory(1, 0, "x"), "memory_mb must be >= 1"),
    ApiCase("treemdp.memory.policy_params", "policy", "tabular, loglinear, mlp",
            lambda: _memory().policy_params("cnn", n_internal=1, branching=2, features=1),
            "policy must be one of"),
    ApiCase("treemdp.runs.cli.check_device", "name", "cpu, cuda[:N] (if present), mps (if present)",
            lambda: _check_device("tpu"), "--device 'tpu' is not a device torch knows"),
    ApiCase("treemdp.runs.verify_folder", "folder", "a run folder with its manifest.json",
            lambda: _verify_folder("/nonexistent"), "manifest.json is missing"),
    ApiCase("llm.data.read_jsonl", "path", "an existing JSONL file", lambda: _read_jsonl("/"),
            "data file / is a folder"),
    ApiCase("llm.checkpoint.latest_checkpoint", "root", "latest.json naming a complete checkpoint",
            lambda: _dangling_pointer(), "names step-0000009, which is missing or incomplete"),
]  # fmt: skip


def _memory() -> Any:
    from treemdp import memory

    return memory


def _check_device(name: str) -> Any:
    from treemdp.runs.cli import check_device

    return check_device(name)


def _verify_folder(folder: str) -> None:
    from treemdp.runs import verify_folder

    verify_folder(folder)


def _read_jsonl(path: str) -> Any:
    from llm.data import read_jsonl

    return read_jsonl(path)


def _dangling_pointer() -> Any:
    import tempfile
    from pathlib import Path

    from llm.checkpoint import latest_checkpoint

    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "latest.json").write_text('{"checkpoint": "step-0000009"}')
        return latest_checkpoint(Path(tmp))


@dataclass(frozen=True)
class RunCase:
    """A bad input that only a run meets (a folder's state, a file's bytes, a device): refused
    with one line and exit 2 (3: diverged), nothing lost. ``test`` names the test that runs it."""

    command: str
    given: str
    outcome: str
    test: str


RUN_CASES: list[RunCase] = [
    RunCase("llm_train", "a run folder of another config (e.g. other --lr, --epochs), no --resume",
            "refused, naming each differing flag; nothing rewritten",
            "tests/llm/test_llm_identity.py::test_a_second_config_never_mixes_into_a_run_folder"),
    RunCase("llm_train", "--resume with other pairs, tree depth, reference dtype, objective, β",
            "refused, naming the flag", "tests/llm/test_llm_identity.py::"
            "test_resume_refuses_another_config_or_data"),
    RunCase("llm_train", "same flags, other JSONL rows (data fingerprint)", "refused: other data",
            "tests/llm/test_llm_identity.py::test_a_jsonl_file_with_other_rows_is_another_run"),
    RunCase("llm.train.train", "--resume from a checkpoint of another identity",
            "refused, naming the keys", "tests/llm/test_llm_identity.py::"
            "test_resume_checks_the_checkpoints_identity_too"),
    RunCase("llm_train", "--resume, latest.json names a deleted checkpoint",
            "refused, naming the latest complete checkpoint to point at", "tests/llm/"
            "test_llm_identity.py::test_resume_with_a_missing_checkpoint_names_the_latest_complete_one"),
    RunCase("llm_train", "--lr 1e6 (loss or gradient norm NaN/inf)",
            "exit 3 naming step and quantity; no NaN logged or checkpointed", "tests/llm/"
            "test_llm_identity.py::test_divergence_stops_with_exit_3_and_saves_nothing_non_finite"),
    RunCase("llm_eval", "a checkpoint rewritten since its row was written",
            "its row is evaluated again (rows carry checkpoint_sha256)", "tests/llm/"
            "test_llm_identity.py::test_eval_rows_are_tied_to_the_weights_they_measured"),
    RunCase("llm_eval", "a corrupt eval.csv or eval_reference.pt",
            "refused, naming the file to delete (not the run folder) or --force", "tests/llm/"
            "test_llm_identity.py::test_corrupt_eval_files_name_the_file_to_delete_not_the_run_folder"),
    RunCase("llm_train", "--device tpu, --seed 2**63, --run-name ../../x or an absolute path",
            "refused, naming the flag; nothing written outside --out",
            "tests/llm/test_llm_identity.py::test_llm_train_bad_inputs_are_one_line"),
    RunCase("llm_train, llm_eval", "--device cuda on a CPU-only torch", "refused: use --device cpu",
            "tests/llm/test_llm_identity.py::test_device_cuda_on_a_cpu_only_torch_is_one_line"),
    RunCase("llm_train", "JSONL with binary garbage or a bad UTF-8 byte",
            "refused naming file and row; --on-bad-row skip skips it", "tests/llm/"
            "test_llm_identity.py::test_a_jsonl_with_bad_bytes_names_the_file_and_row_and_skip_skips_it"),
    RunCase("llm_train", "JSONL with a UTF-8 BOM; --data naming a folder",
            "read; refused as a folder",
            "tests/llm/test_llm_identity.py::test_a_jsonl_with_a_bom_is_read_and_a_folder_is_named"),
    RunCase("ood_mass, theory_check, toy_scaling", "--depth 14, --max-length 40, mlp100000000",
            "refused before allocating, with the MiB needed and --memory-mb",
            "tests/test_run_folders.py::"
            "test_an_experiment_too_big_for_memory_is_refused_before_allocating"),
    RunCase("sweep", "--seeds 0-1000000", "checked in one pass; set-up says what it is doing",
            "tests/test_run_folders.py::test_a_million_seeds_are_checked_in_linear_time"),
    RunCase("all five writers", "--out that is a file", "refused: a file is in the way",
            "tests/test_run_folders.py::test_out_that_is_a_file_is_one_line"),
    RunCase("ood_mass", "a read-only --out; a finished run in a read-only folder",
            "refused: permission denied", "tests/test_run_folders.py::"
            "test_a_read_only_out_and_a_finished_run_in_it_are_one_line"),
    RunCase("ood_mass", "--seed 9223372036854775808", "refused, naming --seed",
            "tests/test_run_folders.py::test_a_seed_too_large_for_torch_names_the_flag"),
    RunCase("llm_confirm", "--model nosuch", "one line, before the toy trains",
            "tests/test_run_folders.py::test_llm_confirm_unknown_model_is_one_line"),
    RunCase("ood_mass (any cached run)", "a finished run with a 0-byte responses.csv, a "
            "truncated config.json, no manifest.json", "refused, naming the file; --force",
            "tests/test_run_folders.py::test_reuse_checks_every_file_of_the_finished_run"),
    RunCase("llm_overopt", "--device tpu, --explained 2, --pairs 7 --batch 4 (an epoch that is "
            "not whole batches)", "refused, naming the flags; nothing written",
            "tests/llm/test_llm_overopt.py::test_user_mistakes_are_one_line_errors"),
    RunCase("llm_confirm, llm_confirm --grid", "--device tpu", "refused, naming --device; "
            "nothing written", "tests/test_confirm_grid.py::"
            "test_an_unknown_device_is_one_line_before_anything_is_written"),
    RunCase("llm_confirm --grid", "--budget-s spent before the first LLM run",
            "one line naming --budget-s; the toy parts are kept for the rerun",
            "tests/test_confirm_grid.py::test_a_budget_spent_before_the_first_llm_run_is_one_line"),
    RunCase("llm_confirm --grid", "--bt-pairs 7 --bt-batch 4", "refused: one epoch is whole "
            "batches", "tests/test_confirm_grid.py::test_a_bt_epoch_must_be_whole_batches"),
    RunCase("llm_overopt, llm_confirm --grid", "--betas 0.1 0.1000001, --lrs 0.001 0.0010000001",
            "each value its own run folder (names read back as the exact value)",
            "tests/test_confirm_grid.py::test_distinct_lrs_and_betas_get_distinct_run_names"),
    RunCase("llm_train", "--stage sft --packing pairs; --batch-size not a multiple of "
            "--micro-batch-size", "refused, naming the flags, before config.json is written",
            "tests/llm/test_llm_identity.py::test_llm_train_bad_inputs_are_one_line"),
    RunCase("every command built on treemdp.runs.cli.run", "Ctrl-C", "one line, exit 130; the "
            "same command resumes",
            "tests/test_cli.py::test_ctrl_c_in_main_exits_130_with_one_line"),
    RunCase("figures/make_all.py", "Ctrl-C (also in a --jobs worker); a ValueError", "one line, "
            "exit 130; exit 2 (treemdp.runs.cli.one_line_errors, as every command)",
            "tests/test_figures.py::"
            "test_make_all_ctrl_c_and_a_value_error_are_one_line_and_the_clis_exit_status"),
    RunCase("llm_overopt", "Ctrl-C in a --keep-weights run, finished with --no-keep-weights; "
            "a tampered sub-run eval.csv, deleted as advised", "no weights left; the eval.csv "
            "is named, then recomputed", "tests/llm/test_llm_overopt.py::"
            "test_ctrl_c_then_no_keep_weights_finishes_without_weights_and_a_deleted_eval_recomputes"),
]  # fmt: skip


def _llm_config(**kw: Any) -> Any:
    from llm.train import TrainConfig

    return TrainConfig(**kw)


# ------------------------------------------------------------------ invalid CLI values


def invalid_flag_values(cls: type) -> list[tuple[str, str, str]]:
    """(flag, invalid value, text the one-line error must contain) for every constrained field
    of config dataclass ``cls``: a value outside its choices, below its minimum, above its
    maximum, not a number, not finite."""
    cases: list[tuple[str, str, str]] = []
    for field in config_flags(cls):
        kind = field.kind
        elem = typing.get_args(kind)[0] if typing.get_origin(kind) is tuple else kind
        flag = "--" + field.name.replace("_", "-")
        meta = field.meta
        if meta.get("choices") is not None:
            cases.append((flag, "not-a-choice", f"argument {flag}: invalid choice"))
        if meta.get("min") is not None:
            low = meta["min"] - 1
            cases.append((flag, str(elem(low)), f"{flag} must be >= {meta['min']}"))
        if meta.get("max") is not None:
            high = meta["max"] + 1
            cases.append((flag, str(elem(high)), f"{flag} must be <= {meta['max']}"))
        if meta.get("xmin") is not None:
            cases.append((flag, str(elem(meta["xmin"])), f"{flag} must be > {meta['xmin']}"))
        if elem is int:
            cases.append((flag, "1.5", f"argument {flag}: invalid int value"))
        if elem is float:
            cases.append((flag, "x", f"argument {flag}: invalid float value"))
            cases.append((flag, "nan", f"{flag} must be a finite number"))
            cases.append((flag, "inf", f"{flag} must be a finite number"))
    return cases
