"""experiments/ood_mass.py end to end on a tiny config, and its command line."""

import pytest

from tests.scripts import load_script, run_script
from treemdp.metrics import METRICS
from treemdp.runs import read_config, read_table
from treemdp.runs.cli import config_flags, run, with_flags

SCRIPT = "experiments/ood_mass.py"


def load():
    return load_script(SCRIPT)


def test_smoke_writes_the_run_folder_and_reuses_it(tmp_path, capsys):
    om = load()
    settings = dict(beta=(0.1, 0.5), steps=20, log_every=5, seed=(0, 1), sft_steps=10)
    config = with_flags(om.Config(), {**settings, "out": str(tmp_path)})
    folder = om.main(config)
    names = {p.name for p in folder.iterdir()}
    assert names == {"config.json", "manifest.json", "metrics.csv", "responses.csv", "ood_mass.png"}
    table = read_table(
        folder / "metrics.csv", columns=("run", "objective", "beta", "seed", "step", *METRICS)
    )
    assert len(table) == 3 * 2 * 2 * 5  # objectives × β × seeds × logged steps (0, 5, 10, 15, 20)
    assert read_config(folder)["beta"] == [0.1, 0.5]
    assert "results in" in capsys.readouterr().out
    om.main(config)
    assert "reusing finished results" in capsys.readouterr().out
    assert read_table(folder / "metrics.csv").equals(table)


def run_cli(*args):
    return run_script(SCRIPT, *args)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--beta", "0"], "--beta must be > 0"),
        (["--depth", "0"], "--depth must be >= 1"),
        (["--objectives", "ppo"], "invalid choice: 'ppo'"),
        (["--steps", "ten"], "invalid int value"),
        (["--seed", "1", "1"], "--seed values must be distinct"),
    ],
)
def test_cli_mistakes_exit_2_with_one_clear_line(args, message, capsys):
    om = load()
    with pytest.raises(SystemExit) as exit_:
        run(om.Config, om.main, [*args, "--out", "/nonexistent/never-written"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_cli_mistake_in_a_real_process():
    result = run_cli("--beta", "-0.5")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "ood_mass.py: error: --beta must be > 0; got -0.5 (--help lists every flag)"
    ]


def test_help_documents_every_flag_with_its_default():
    out = run_cli("--help").stdout
    om = load()
    for flag in config_flags(om.Config):
        assert "--" + flag.name.replace("_", "-") in out
    assert "[default: (0.1,)]" in out or "[default: 0.1" in out
