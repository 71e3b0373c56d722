"""Command lines from config dataclasses: flags, ranges, the inverse (flags_for), exit codes."""

from dataclasses import dataclass

import pytest

from treemdp.runs import config_dict, config_matches
from treemdp.runs.cli import (
    arg,
    build_parser,
    config_flags,
    flag_values,
    flags_for,
    nested,
    parse_config,
    parse_seeds,
    run,
    with_defaults_replaced,
    with_flags,
)


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


def test_ctrl_c_in_main_exits_130_with_one_line(capsys):
    def main(config):
        raise KeyboardInterrupt

    with pytest.raises(SystemExit) as exit_:
        run(Cfg, main, [])
    assert exit_.value.code == 130
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "interrupted" in line and "run the same command to resume" in line


def test_distinct_floats_get_distinct_names():
    from treemdp.runs import number_name

    assert [number_name(x) for x in (0.1, 1e-3, 3e-5, 2.0, 0.03)] == [
        "0.1", "0.001", "3e-05", "2", "0.03",
    ]  # fmt: skip
    close = [0.001, 0.0010000001, 0.1, 0.1000001, 1 / 3, 0.3333333]
    assert len({number_name(x) for x in close}) == len(close)
    assert all(float(number_name(x)) == x for x in close)  # each name reads back as its value


def test_help_lists_defaults_and_ranges():
    text = build_parser(Cfg, "").format_help()
    assert "(> 0) [default: (0.1,)]" in text and "(>= 1) [default: 3]" in text
    assert "--force, --no-force" in text


@dataclass(frozen=True)
class Inner:
    width: int = arg(16, "hidden units", minimum=1)
    reward: str = arg("normal", "gold reward", choices=("normal", "concave"))
    hidden: float = arg(1.0, "not a flag of Outer")


@dataclass(frozen=True)
class Outer:
    depth: int = arg(3, "depth", minimum=1)
    inner: Inner = nested(Inner(width=4), flags={"toy_width": "width", "reward": "reward"})
    force: bool = arg(False, "recompute")


def test_a_nested_field_becomes_flat_flags_in_its_place():
    assert [f.name for f in config_flags(Outer)] == ["depth", "toy_width", "reward", "force"]
    text = build_parser(Outer, "").format_help()
    assert "--toy-width TOY_WIDTH" in text and "hidden units (>= 1) [default: 4]" in text
    assert "--hidden" not in text and "--inner" not in text
    config = parse_config(Outer, ["--toy-width", "8", "--reward", "concave"])
    assert config == Outer(inner=Inner(width=8, reward="concave"))
    assert flag_values(config) == {"depth": 3, "toy_width": 8, "reward": "concave", "force": False}


def test_a_nested_field_is_flat_in_config_json_and_the_flags_invert():
    settings = {"toy_width": 2, "reward": "concave", "depth": 5}
    config = parse_config(Outer, flags_for(settings))
    assert config == with_flags(Outer(), settings)
    assert config_dict(config) == {"depth": 5, "toy_width": 2, "reward": "concave", "force": False}
    assert config_matches(config_dict(config), settings)


def test_a_preset_replaces_only_the_flags_left_at_their_defaults():
    preset = {"depth": 1, "toy_width": 2, "reward": "concave"}
    given = parse_config(Outer, ["--depth", "7"])  # --depth given: the preset leaves it
    assert with_defaults_replaced(given, preset) == Outer(
        depth=7, inner=Inner(width=2, reward="concave")
    )
    assert with_defaults_replaced(Outer(), preset) == with_flags(Outer(), preset)


def test_nested_flags_are_range_checked_and_unknown_names_refused(capsys):
    with pytest.raises(SystemExit):
        parse_config(Outer, ["--toy-width", "0"])
    assert "--toy-width must be >= 1; got 0" in capsys.readouterr().err
    with pytest.raises(TypeError, match="no flags"):
        with_flags(Outer(), {"width": 3})
    with pytest.raises(TypeError, match="no fields"):
        nested(Inner(), flags=("depth",))


def test_a_nested_flag_can_say_what_it_means_here():
    @dataclass(frozen=True)
    class Renamed:
        inner: Inner = nested(
            Inner(), flags={"support": "width"}, help={"support": "pairs π_ref is fitted to"}
        )

    (flag,) = config_flags(Renamed)
    assert flag.meta["help"] == "pairs π_ref is fitted to" and flag.meta["min"] == 1
    assert "pairs π_ref is fitted to (>= 1)" in build_parser(Renamed, "").format_help()
    assert config_flags(Outer)[1].meta["help"] == "hidden units"  # others keep the field's text
    with pytest.raises(TypeError, match="not nested here"):
        nested(Inner(), flags=("width",), help={"reward": "x"})


def test_parse_seeds_names_the_flag_it_parses():
    assert parse_seeds(["0-2", 7], flag="--seeds") == [0, 1, 2, 7]
    with pytest.raises(ValueError, match=r"^--seeds must be distinct; repeated: \[3\]"):
        parse_seeds(["3", "1-3"], flag="--seeds")
    with pytest.raises(ValueError, match=r"^--seeds: the range '5-2' is empty"):
        parse_seeds(["5-2"], flag="--seeds")
    with pytest.raises(ValueError, match=r"^seeds must hold at least one seed"):
        parse_seeds([])
