"""llm_eval and llm_confirm end to end: the eval.csv contract, resume after SIGKILL without
recomputing finished checkpoints, the command lines (help, user mistakes, smoke runs)."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import textwrap

import pandas as pd
import pytest

from llm.eval_run import evaluate_run
from llm.model import load_model
from tests.llm.helpers_llm import ROOT, load_cli, subprocess_env
from tests.scripts import load_script
from treemdp.runs.cli import build_parser, config_flags, parse_config, run
from treemdp.runs.eval_table import COLUMNS

TRAIN = [
    "--stage", "daa", "--objective", "dpo", "--beta", "0.1", "--model", "tiny", "--source", "tree",
    "--tree-pairs", "0>1,5>7,3>20,11>2", "--batch-size", "4", "--micro-batch-size", "4",
    "--lr", "1e-2", "--warmup-steps", "0", "--epochs", "3", "--reference-dtype", "fp32",
    "--checkpoint-every", "4", "--no-progress",
]  # fmt: skip
EVAL = ["--samples", "32", "--no-progress"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A finished tiny DPO run on the tree language: checkpoints at steps 1, 2, 3."""
    out = tmp_path_factory.mktemp("runs")
    train = load_cli()
    train.main(parse_config(train.Config, [*TRAIN, "--out", str(out), "--run-name", "dpo"]))
    return out / "dpo"


@pytest.fixture(scope="module")
def cli():
    return load_script("experiments/llm_eval.py")


def fresh_copy(run_dir, tmp_path, name):
    dst = tmp_path / name
    shutil.copytree(run_dir, dst, ignore=shutil.ignore_patterns("eval*", "judge_cache*"))
    return dst


def test_smoke_llm_eval_cli_writes_the_table_contract(run_dir, tmp_path, cli, capsys):
    folder = fresh_copy(run_dir, tmp_path, "a")
    path = run(cli.Config, cli.main, ["--run", str(folder), *EVAL])
    frame = pd.read_csv(path)
    assert list(frame.columns[: len(COLUMNS)]) == list(COLUMNS)
    assert frame["checkpoint"].tolist() == [0, 1, 2, 3]
    assert frame["examples_seen"].tolist() == [0, 4, 8, 12]
    assert frame["fraction_of_epoch"].tolist() == [0, 1, 2, 3]
    assert frame.loc[0, "kl_reverse"] == 0 and (frame["judge"] == "gold").all()
    assert {"exact_kl_reverse", "exact_mass_ood", "ood_fraction", "ties"} <= set(frame.columns)
    assert f"done: 4 checkpoints in {folder / 'eval.csv'}" in capsys.readouterr().out


KILL = textwrap.dedent(
    """
    import os, signal, sys
    from pathlib import Path
    from llm.eval_run import evaluate_run
    from llm.evaluate import EvalSettings
    from tests.scripts import load_script
    from treemdp.runs.cli import parse_config
    from treemdp.runs import read_config

    cli = load_script("experiments/llm_eval.py")
    cfg = parse_config(cli.Config, ["--run", sys.argv[1], "--samples", "32", "--no-progress"])
    folder = Path(cfg.run)
    task = cli.build_task(cfg, read_config(folder), folder)
    judge = cli.build_judge(cfg, task, folder, "cpu")
    settings = EvalSettings(samples=32, max_new_tokens=64, batch_size=64)

    def on_row(row):
        if row["checkpoint"] == 1:  # reference and step 1 are in eval.csv
            os.kill(os.getpid(), signal.SIGKILL)

    evaluate_run(folder, task, settings, judge, on_row=on_row, progress=False)
    """
)


@pytest.mark.slow
def test_killed_evaluation_resumes_without_recomputing_finished_checkpoints(run_dir, tmp_path, cli):
    whole, killed = fresh_copy(run_dir, tmp_path, "whole"), fresh_copy(run_dir, tmp_path, "killed")
    run(cli.Config, cli.main, ["--run", str(whole), *EVAL])
    script = tmp_path / "kill.py"
    script.write_text(KILL)
    res = subprocess.run(
        [sys.executable, str(script), str(killed)], env=subprocess_env(), cwd=ROOT,
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert res.returncode == -signal.SIGKILL, res.stderr[-2000:]
    assert pd.read_csv(killed / "eval.csv")["checkpoint"].tolist() == [0, 1]

    loaded = []

    def counting_load(folder):
        loaded.append(folder.name)
        return load_model(folder)

    cfg = parse_config(cli.Config, ["--run", str(killed), *EVAL])
    from treemdp.runs import read_config

    task = cli.build_task(cfg, read_config(killed), killed)
    judge = cli.build_judge(cfg, task, killed, "cpu")
    from llm.evaluate import EvalSettings

    settings = EvalSettings(samples=32)
    evaluate_run(killed, task, settings, judge, load=counting_load, progress=False)
    assert loaded == ["step-0000002", "step-0000003"]  # step 1 was not evaluated again
    a = pd.read_csv(whole / "eval.csv").drop(columns="checkpoint_path")
    b = pd.read_csv(killed / "eval.csv").drop(columns="checkpoint_path")
    pd.testing.assert_frame_equal(a, b)  # same numbers as the uninterrupted evaluation
    loaded.clear()
    evaluate_run(killed, task, settings, judge, load=counting_load, progress=False)
    assert loaded == []  # everything done: nothing is loaded
    with pytest.raises(ValueError, match="other evaluation settings"):
        cli.main(parse_config(cli.Config, ["--run", str(killed), "--samples", "16"]))


def one_line_exit_2(cls, main, argv, capsys):
    """Exit 2; the error is one line (argparse's own range errors print the usage above it)."""
    with pytest.raises(SystemExit) as exc:
        run(cls, main, argv)
    err = capsys.readouterr().err.strip()
    lines = err.splitlines()
    assert exc.value.code == 2 and "Traceback" not in err, err
    assert len(lines) == 1 or lines[0].startswith("usage:"), err
    return lines[-1]


def test_llm_eval_user_mistakes_exit_2_with_one_line(run_dir, tmp_path, cli, capsys):
    c, m = cli.Config, cli.main
    assert "--run must name" in one_line_exit_2(c, m, [], capsys)
    assert "is not a folder" in one_line_exit_2(c, m, ["--run", str(tmp_path / "nope")], capsys)
    folder = fresh_copy(run_dir, tmp_path, "b")
    err = one_line_exit_2(c, m, ["--run", str(folder), "--judge", "api"], capsys)
    assert "--api-base-url" in err or "OPENAI_BASE_URL" in err
    err = one_line_exit_2(c, m, ["--run", str(folder), "--judge", "reward-model"], capsys)
    assert "--reward-model" in err
    assert "--samples" in one_line_exit_2(c, m, ["--run", str(folder), "--samples", "0"], capsys)


@pytest.mark.parametrize("script", ["experiments/llm_eval.py", "experiments/llm_confirm.py"])
def test_help_documents_every_flag(script, capsys):
    module = load_script(script)
    with pytest.raises(SystemExit) as exc:
        run(module.Config, module.main, ["--help"], description=module.__doc__)
    text = capsys.readouterr().out
    assert exc.value.code == 0 and text == build_parser(module.Config, module.__doc__).format_help()
    for f in config_flags(module.Config):  # a nested spec's fields are flags of their own
        flag = "--" + f.name.replace("_", "-")
        assert flag in text and f.meta["help"].split()[0] in text, flag


CONFIRM = [
    "--toy-steps", "30", "--toy-sft-steps", "30", "--sft-samples", "32", "--sft-epochs", "1",
    "--steps", "4", "--checkpoints", "2", "--eval-samples", "16", "--device", "cpu",
    "--no-progress",
]  # fmt: skip


@pytest.mark.slow
def test_smoke_llm_confirm_cli(tmp_path, capsys):
    confirm = load_script("experiments/llm_confirm.py")
    folder = run(confirm.Config, confirm.main, [*CONFIRM, "--out", str(tmp_path)])
    out = capsys.readouterr().out
    table = pd.read_csv(folder / "comparison.csv")
    assert len(table) == 9 and set(table["side"]) == {"toy-tabular", "toy-loglinear", "llm"}
    assert "verdict:" in out and "verdict:" in (folder / "verdict.txt").read_text()
    assert (folder / "confirm.png").stat().st_size > 0
    for obj in ("dpo", "ipo", "slic"):
        ev = pd.read_csv(folder / "llm" / f"{obj}-beta0.1" / "eval.csv")
        assert ev["checkpoint"].tolist() == [0, 2, 4]
        # the LLM's exact distribution is a distribution; the reference row has KL 0
        assert ev.loc[0, "exact_kl_reverse"] == 0
        assert ((ev["exact_mass_ood"] + ev["exact_mass_in_dist"] - 1).abs() < 1e-9).all()
    again = run(confirm.Config, confirm.main, [*CONFIRM, "--out", str(tmp_path)])
    assert again == folder and "reusing finished results" in capsys.readouterr().out


def test_llm_confirm_user_mistakes_exit_2_with_one_line(tmp_path, capsys):
    confirm = load_script("experiments/llm_confirm.py")
    c, m = confirm.Config, confirm.main
    argv = ["--out", str(tmp_path)]
    assert "distinct" in one_line_exit_2(c, m, [*argv, "--objectives", "dpo", "dpo"], capsys)
    assert "--steps" in one_line_exit_2(c, m, [*argv, "--steps", "0"], capsys)
    assert "100,000" in one_line_exit_2(c, m, [*argv, "--depth", "12"], capsys)
    if not __import__("torch").cuda.is_available():
        assert "CUDA" in one_line_exit_2(c, m, [*argv, "--device", "cuda"], capsys)


@pytest.mark.slow
def test_smoke_gpu_check_cpu_dry_run_writes_the_results_table(tmp_path):
    res = subprocess.run(
        ["bash", str(ROOT / "scripts" / "gpu_check.sh"), "--cpu-dry-run"],
        env={**subprocess_env(), "OUT": str(tmp_path), "PYTHON": sys.executable},
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    table = pd.read_csv(tmp_path / "results.csv")
    assert set(table["check"]) == {
        "versions", "confirm", "sampled_vs_exact", "numerics", "benchmark"
    }  # fmt: skip
    bench = table[table["check"] == "benchmark"].set_index("metric")["value"]
    assert float(bench["tokens_per_s"]) > 0 and float(bench["mfu"]) > 0
    assert (table["metric"] == "verdict").sum() == 1


def test_llm_eval_on_a_model_folder_says_in_one_line_what_is_needed(run_dir, tmp_path, cli, capsys):
    """A save_pretrained folder (its config.json is the model's) or a step-N checkpoint is not a
    run folder: one line naming what to pass instead, and nothing is written into the folder."""
    from llm.data import byte_tokenizer
    from llm.model import build_model

    tok = byte_tokenizer()
    plain = tmp_path / "saved"
    build_model("tiny", seed=0, vocab_size=len(tok)).save_pretrained(plain)
    tok.save_pretrained(plain)
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text('{"prompt": "hi", "chosen": " a", "rejected": " b"}\n')
    before = sorted(p.name for p in plain.iterdir())
    c, m = cli.Config, cli.main
    err = one_line_exit_2(c, m, ["--run", str(plain), "--eval-data", str(pairs)], capsys)
    assert "model folder" in err and "diagnose.py" in err and "--reference" in err, err
    assert sorted(p.name for p in plain.iterdir()) == before
    step = fresh_copy(run_dir, tmp_path, "c") / "step-0000002"
    err = one_line_exit_2(c, m, ["--run", str(step), "--eval-data", str(pairs)], capsys)
    assert f"--run {step.parent}" in err and "checkpoint" in err, err
