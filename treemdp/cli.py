"""Command lines built from frozen config dataclasses.

Each field becomes a flag (``sft_steps`` → ``--sft-steps``) with its default, its help text and,
where given, its allowed choices or lower bound, all taken from the field's metadata (``arg``).
Tuple fields take one or more values. User mistakes exit with status 2 and one line on stderr
(``prog: error: ...``), never a traceback and never a usage dump: argparse's own errors, range
checks here, and any ValueError that ``main`` raises. A run whose training produced a NaN or an
infinity raises ``RunDivergedError`` and exits with status 3 and one line (what it saved, where).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
import typing
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

__all__ = [
    "DIVERGED_EXIT",
    "OneLineParser",
    "RunDivergedError",
    "arg",
    "build_parser",
    "flag_table",
    "flags_for",
    "parse_config",
    "run",
]

DIVERGED_EXIT = 3
"""Exit status of a run stopped by a NaN or an infinity (``RunDivergedError``)."""


class RunDivergedError(RuntimeError):
    """Training stopped on a non-finite quantity; the message says where and what was saved."""


class OneLineParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line on stderr (``prog: error: ...``), status 2."""

    def error(self, message: str) -> typing.NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (--help lists every flag)\n")


C = TypeVar("C")


def arg(
    default: Any,
    help: str,
    *,
    choices: Sequence[Any] | None = None,
    minimum: float | None = None,
    exclusive_minimum: float | None = None,
) -> Any:
    """A dataclass field carrying its CLI help, allowed choices and lower bound."""
    meta = {"help": help, "choices": choices, "min": minimum, "xmin": exclusive_minimum}
    if isinstance(default, list):
        raise TypeError("use a tuple default for multi-valued flags")
    return dataclasses.field(default=default, metadata=meta)


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _describe(meta: dict[str, Any]) -> str:
    parts = [meta["help"]]
    if meta.get("min") is not None:
        parts.append(f"(>= {meta['min']})")
    if meta.get("xmin") is not None:
        parts.append(f"(> {meta['xmin']})")
    return " ".join(parts) + " [default: %(default)s]"


def build_parser(cls: type, description: str) -> argparse.ArgumentParser:
    """An ArgumentParser with one flag per field of dataclass ``cls``."""
    parser = OneLineParser(
        description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        kind, meta = hints[f.name], dict(f.metadata)
        kwargs: dict[str, Any] = {"default": f.default, "help": _describe(meta)}
        if meta.get("choices") is not None:
            kwargs["choices"] = list(meta["choices"])
        if kind is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif typing.get_origin(kind) is tuple:
            kwargs["type"] = typing.get_args(kind)[0]
            kwargs["nargs"] = "+"
            kwargs["metavar"] = f.name.upper()
        else:
            kwargs["type"] = kind
        parser.add_argument(_flag(f.name), dest=f.name, **kwargs)
    return parser


def _check_ranges(cls: type, values: dict[str, Any]) -> None:
    for f in dataclasses.fields(cls):
        lo, xlo = f.metadata.get("min"), f.metadata.get("xmin")
        vals = values[f.name] if isinstance(values[f.name], tuple) else (values[f.name],)
        for v in vals:
            if isinstance(v, float) and not math.isfinite(v):
                raise ValueError(f"{_flag(f.name)} must be a finite number; got {v}")
            if lo is not None and not v >= lo:
                raise ValueError(f"{_flag(f.name)} must be >= {lo}; got {v}")
            if xlo is not None and not v > xlo:
                raise ValueError(f"{_flag(f.name)} must be > {xlo}; got {v}")


def flags_for(settings: dict[str, Any]) -> list[str]:
    """The command-line flags that set ``settings`` (field name → value) on a script built here:
    the inverse of the parser, e.g. {"beta": (0.1, 0.5), "force": True} → --beta 0.1 0.5 --force."""
    args: list[str] = []
    for key, value in settings.items():
        flag = _flag(key)
        if isinstance(value, bool):
            args.append(flag if value else "--no-" + flag[2:])
        elif isinstance(value, tuple | list):
            args += [flag, *map(str, value)]
        else:
            args += [flag, str(value)]
    return args


def parse_config(cls: type[C], argv: Sequence[str] | None = None, description: str = "") -> C:
    """Parse ``argv`` into an instance of dataclass ``cls`` (exits 2 on a bad flag)."""
    parser = build_parser(cls, description)
    ns = vars(parser.parse_args(argv))
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in ns.items()}
    try:
        _check_ranges(cls, values)
    except ValueError as e:
        parser.error(str(e))
    return cls(**values)


def run(
    cls: type[C], main: Callable[[C], Any], argv: Sequence[str] | None = None, description: str = ""
) -> Any:
    """Parse flags into a config and call ``main(config)``; a ValueError exits 2 with one line."""
    config = parse_config(cls, argv, description)
    try:
        return main(config)
    except ValueError as e:
        prog = build_parser(cls, description).prog
        print(f"{prog}: error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    except RunDivergedError as e:
        prog = build_parser(cls, description).prog
        print(f"{prog}: error: {e}", file=sys.stderr)
        raise SystemExit(DIVERGED_EXIT) from None


def _range(f: dataclasses.Field, kind: Any) -> str:
    meta = f.metadata
    parts = []
    if meta.get("choices") is not None:
        parts.append("one of " + ", ".join(f"`{c}`" for c in meta["choices"]))
    if meta.get("min") is not None:
        parts.append(f">= {meta['min']}")
    if meta.get("xmin") is not None:
        parts.append(f"> {meta['xmin']}")
    if not parts:
        elem = typing.get_args(kind)[0] if typing.get_origin(kind) is tuple else kind
        name = _flag(f.name)
        parts.append(f"`{name}` / `--no-{name[2:]}`" if elem is bool else f"any {elem.__name__}")
    if (typing.get_args(kind)[0] if typing.get_origin(kind) is tuple else kind) is float:
        parts.append("finite")
    return "; ".join(parts)


def flag_table(cls: type) -> str:
    """The flags of dataclass ``cls`` as a Markdown table: flag, type, default, valid range,
    meaning (docs/reference.md is generated from this)."""
    hints = typing.get_type_hints(cls)
    rows = ["| flag | type | default | valid values | meaning |", "|---|---|---|---|---|"]
    for f in dataclasses.fields(cls):
        kind = hints[f.name]
        multi = typing.get_origin(kind) is tuple
        elem = typing.get_args(kind)[0] if multi else kind
        default = " ".join(map(str, f.default)) if multi else f.default
        shown = f"`{default}`" if str(default) != "" else "(empty)"
        cells = [
            f"`{_flag(f.name)}`",
            f"{elem.__name__}{' …' if multi else ''}",
            shown,
            _range(f, kind),
            f.metadata.get("help", ""),
        ]
        rows.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(rows)
