"""Command lines from config dataclasses: flags, ranges, the inverse (flags_for), exit codes."""

from dataclasses import dataclass

import pytest

from treemdp.cli import arg, build_parser, flags_for, parse_config, run
from treemdp.results import config_dict, config_matches


@dataclass(frozen=True)
class Cfg:
    beta: tuple[float, ...] = arg((0.1,), "β values", exclusive_minimum=0)
    depth: int = arg(3, "depth", minimum=1)
    policy: str = arg("loglinear", "family", choices=("loglinear", "tabular"))
    force: bool = arg(False, "recompute")


def test_flags_for_is_the_inverse_of_the_parser():
    settings = {"beta": (0.01, 0.5), "depth": 5, "policy": "tabular", "force": True}
    config = parse_config(Cfg, flags_for(settings))
    assert config == Cfg(**settings)
    assert config_matches(config_dict(config), settings)
    assert not config_matches(config_dict(config), {"depth": 4})
    assert parse_config(Cfg, flags_for({"force": False})).force is False


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--beta", "0"], "--beta must be > 0; got 0.0"),
        (["--depth", "0"], "--depth must be >= 1; got 0"),
        (["--policy", "mlp"], "invalid choice: 'mlp'"),
        (["--depth", "x"], "invalid int value: 'x'"),
    ],
)
def test_bad_flags_exit_2_naming_the_flag(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_:
        parse_config(Cfg, argv)
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err


def test_value_errors_from_main_exit_2_with_one_line(capsys):
    def main(config):
        raise ValueError("--depth 3 is too shallow for this question")

    with pytest.raises(SystemExit) as exit_:
        run(Cfg, main, [])
    assert exit_.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].endswith(
        "error: --depth 3 is too shallow for this question"
    )


def test_help_lists_defaults_and_ranges():
    text = build_parser(Cfg, "").format_help()
    assert "(> 0) [default: (0.1,)]" in text and "(>= 1) [default: 3]" in text
    assert "--force, --no-force" in text
