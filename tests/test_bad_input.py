"""Bad input: every invalid value in docs/reference.md is refused with an error naming the argument
and its range (one line, exit 2, from a command line); corrupt or truncated result files and
checkpoints are detected and named with what to do; the reference doc is in sync."""

from __future__ import annotations

import json
import re

import pandas as pd
import pytest

from tests.bad_inputs import API_CASES, RUN_CASES, invalid_flag_values
from tests.scripts import ROOT, load_script, run_script
from treemdp.runs import cached_tables, read_config, read_table, write_config, write_table
from treemdp.runs.cli import parse_config

CONFIG_SCRIPTS = {
    "ood_mass": "experiments/ood_mass.py",
    "sweep": "experiments/sweep.py",
    "toy_scaling": "experiments/toy_scaling.py",
    "theory_check": "experiments/theory_check.py",
    "llm_train": "experiments/llm_train.py",
    "llm_eval": "experiments/llm_eval.py",
    "diagnose": "experiments/diagnose.py",
}
MODULES = {name: load_script(path) for name, path in CONFIG_SCRIPTS.items()}
FLAG_CASES = [
    (name, flag, value, expected)
    for name, module in MODULES.items()
    for flag, value, expected in invalid_flag_values(module.Config)
]


def test_reference_doc_is_in_sync_with_the_configs_and_the_cases():
    reference = load_script("scripts/make_reference.py")
    assert reference.TARGET.read_text() == reference.render(), (
        "docs/reference.md is out of date: run python scripts/make_reference.py"
    )


def test_every_listed_run_case_names_a_test_that_exists():
    import ast

    for case in RUN_CASES:
        path, name = case.test.split("::")
        tree = ast.parse((ROOT / path).read_text())
        names = {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
        assert name in names, case.test


@pytest.mark.parametrize("case", API_CASES, ids=lambda c: f"{c.function}-{c.argument}")
def test_every_invalid_api_argument_is_named_with_its_range(case):
    with pytest.raises(ValueError, match=case.message):
        case.call()


def _parse(name: str, argv: list[str]):
    module = MODULES[name]
    if name == "sweep":
        return module.parse_args(argv)
    return parse_config(module.Config, argv)


@pytest.mark.parametrize(
    ("script", "flag", "value", "expected"),
    FLAG_CASES,
    ids=[f"{c[0]}{c[1]}={c[2]}" for c in FLAG_CASES],
)
def test_every_invalid_flag_value_exits_2_with_one_line_naming_it(
    script, flag, value, expected, capsys
):
    with pytest.raises(SystemExit) as exit_:
        _parse(script, [flag, value])
    assert exit_.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in lines[0], lines
    # sweep names grid fields without the dashes (the same names work in grid files)
    pattern = re.escape(expected).replace(re.escape(flag), f"(?:{re.escape(flag)}|{flag[2:]})")
    if flag != "--" + flag[2:].replace("-", "_"):
        pattern = pattern.replace(flag[2:], f"(?:{flag[2:]}|{flag[2:].replace('-', '_')})")
    assert re.search(pattern, lines[0]), (lines[0], expected)


def test_make_all_bad_flag_is_one_line(capsys):
    from figures import make_all

    with pytest.raises(SystemExit) as exit_:
        make_all.main(["--only", "bogus"])
    assert exit_.value.code == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "argument --only: invalid choice: 'bogus'" in line


@pytest.mark.slow
@pytest.mark.parametrize(
    ("script", "args", "expected"),
    [
        ("experiments/sweep.py", ["--betas", "inf"], "betas must be a finite number"),
        ("figures/make_all.py", ["--results"], "expected one argument"),
    ],
)
def test_a_user_mistake_in_a_real_process_is_one_line_and_exit_2(script, args, expected):
    # The scripts with their own entry points (the others go through treemdp.runs.cli.run, tested
    # in-process above and in a real process by tests/test_ood_mass.py).
    done = run_script(script, *args)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0], done.stderr


# ------------------------------------------------------------------ corrupt files


def test_truncated_and_altered_tables_are_named_with_what_to_do(tmp_path):
    path = write_table(tmp_path / "metrics.csv", pd.DataFrame({"a": [1.5, 2.5], "b": [1, 2]}))
    good = path.read_bytes()
    path.write_bytes(good[:-4])
    with pytest.raises(ValueError, match=rf"{path} is corrupt \(.* truncated\); delete {path} and"):
        read_table(path)
    path.write_bytes(good.replace(b"1.5", b"1.6"))
    with pytest.raises(ValueError, match=rf"{path} is corrupt \(.*altered\)"):
        read_table(path)
    path.write_bytes(good)
    assert read_table(path)["a"].tolist() == [1.5, 2.5]


def test_a_kill_between_manifest_and_table_still_reads_the_old_table(tmp_path):
    path = write_table(tmp_path / "t.csv", pd.DataFrame({"a": [1]}))
    old = path.read_bytes()
    write_table(path, pd.DataFrame({"a": [2]}))
    path.write_bytes(old)  # as if the rename of the new table never happened
    assert read_table(path)["a"].tolist() == [1]


def test_corrupt_config_and_manifest_are_named(tmp_path):
    from dataclasses import dataclass

    @dataclass(frozen=True)
    class Cfg:
        x: int = 1

    write_config(tmp_path, Cfg())
    path = tmp_path / "config.json"
    path.write_text(path.read_text().replace("1", "2"))  # same size, other content
    with pytest.raises(ValueError, match=r"config.json is corrupt .*altered"):
        read_config(tmp_path)
    (tmp_path / "manifest.json").write_text("{")
    with pytest.raises(
        ValueError, match=r"manifest.json is corrupt .*rerun the experiment with --force"
    ):
        read_config(tmp_path)


def test_a_corrupt_finished_table_is_reported_by_the_experiment_not_reused(tmp_path, capsys):
    om = MODULES["ood_mass"]
    args = ["--steps", "4", "--seed", "0", "--sft-steps", "0", "--log-every", "2"]
    args += ["--no-responses", "--out", str(tmp_path)]
    folder = om.main(parse_config(om.Config, args))
    table = folder / "metrics.csv"
    table.write_bytes(table.read_bytes()[:100])
    from treemdp.runs.cli import run

    with pytest.raises(SystemExit) as exit_:
        run(om.Config, om.main, args)
    assert exit_.value.code == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert f"{table} is corrupt" in line and "--force" in line
    run(om.Config, om.main, [*args, "--force"])  # what the message says to do works
    assert len(read_table(table)) == 3 * 3


def test_cached_tables_detect_a_corrupt_secondary_table(tmp_path):
    def compute():
        return {"main": pd.DataFrame({"a": [1]}), "extra": pd.DataFrame({"b": [2]})}

    from dataclasses import dataclass

    @dataclass(frozen=True)
    class Cfg:
        x: int = 1

    cached_tables(tmp_path, Cfg(), ["main", "extra"], compute)
    (tmp_path / "extra.csv").write_text("b\n3\n")
    with pytest.raises(ValueError, match="extra.csv is corrupt"):
        cached_tables(tmp_path, Cfg(), ["main", "extra"], compute)


def test_a_corrupt_sweep_part_is_named(tmp_path):
    sweep = MODULES["sweep"]
    args = ["--objectives", "dpo", "--betas", "0.1", "--seeds", "0-1", "--branching", "2"]
    args += ["--depth", "2", "--steps", "4", "--sft-steps", "0", "--chunk-runs", "1"]
    config = sweep.parse_args([*args, "--log-every", "2", "--no-progress", "--out", str(tmp_path)])
    folder = sweep.main(config)
    (folder / "metrics.csv").unlink()
    part = sorted((folder / "parts").glob("*.pkl"))[0]
    part.write_bytes(part.read_bytes()[:-10])
    with pytest.raises(ValueError, match=rf"{part} is corrupt \(.*truncated\)"):
        sweep.main(config)


# ------------------------------------------------------------------ corrupt checkpoints


@pytest.fixture(scope="module")
def llm_run(tmp_path_factory):
    """A finished tiny llm run with checkpoints at steps 1 and 2."""
    lt = MODULES["llm_train"]
    out = tmp_path_factory.mktemp("llm")
    args = ["--model", "tiny", "--source", "tree", "--tree-pairs", "0>1,5>7", "--batch-size", "2"]
    args += ["--micro-batch-size", "1", "--lr", "1e-3", "--warmup-steps", "0", "--epochs", "2"]
    args += ["--reference-dtype", "fp32", "--checkpoint-every", "2", "--no-progress"]
    args += ["--out", str(out), "--run-name", "run"]
    lt.main(parse_config(lt.Config, args))
    return lt, args, out / "run"


def test_a_truncated_checkpoint_is_named_and_not_resumed_from(llm_run, capsys):
    from treemdp.runs.cli import run

    lt, args, folder = llm_run
    weights = folder / "step-0000002" / "model.safetensors"
    good = weights.read_bytes()
    try:
        weights.write_bytes(good[:-100])
        with pytest.raises(SystemExit) as exit_:
            run(lt.Config, lt.main, [*args, "--resume"])
        assert exit_.value.code == 2
        err = capsys.readouterr().err
        line = err.strip().splitlines()[-1]  # after the "data: N pairs" progress line
        assert "Traceback" not in err and ": error: checkpoint file" in line
        assert f"checkpoint file {weights} is truncated" in line
        assert "point" in line and "latest.json at an earlier checkpoint" in line
        weights.write_bytes(good[:-1] + bytes([good[-1] ^ 1]))
        with pytest.raises(SystemExit):
            run(lt.Config, lt.main, [*args, "--resume"])
        assert "is altered" in capsys.readouterr().err
    finally:
        weights.write_bytes(good)


def test_a_corrupt_latest_pointer_and_log_are_named(llm_run):
    from llm.checkpoint import latest_checkpoint
    from llm.train import read_log

    _, _, folder = llm_run
    pointer, log = folder / "latest.json", folder / "log.csv"
    good_pointer, good_log = pointer.read_text(), log.read_text()
    try:
        pointer.write_text('{"checkpoint": ')
        with pytest.raises(ValueError, match=rf"{pointer} is corrupt"):
            latest_checkpoint(folder)
        log.write_text(good_log.rsplit(",", 3)[0] + "\n")
        with pytest.raises(ValueError, match=rf"{log} line 3 has the wrong number of fields"):
            read_log(folder)
    finally:
        pointer.write_text(good_pointer)
        log.write_text(good_log)
    assert json.loads(pointer.read_text())["step"] == 2
