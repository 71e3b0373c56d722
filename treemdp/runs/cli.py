"""Command lines built from frozen config dataclasses.

Each field becomes a flag (``sft_steps`` → ``--sft-steps``) with its default, its help text and,
where given, its allowed choices or lower bound, all taken from the field's metadata (``arg``).
Tuple fields take one or more values. A field made with ``nested`` holds a frozen dataclass (such
as ``treemdp.problem.ProblemSpec``) whose chosen fields are flags of the enclosing config, flat,
where the field stands: ``config_flags`` lists the flags, ``flag_values`` reads them (what
``config.json`` and the run-folder hash see), ``with_flags`` sets them. User mistakes exit with
status 2 and one line on stderr (``prog: error: ...``), never a traceback and never a usage dump:
argparse's own errors, range checks here (integers also within int64), any ValueError that
``main`` raises, and an OSError a user fixes by choosing another path (permission denied,
read-only, a file where a folder must be: ``os_error_line``; other OS errors keep their
traceback). A run whose training produced a NaN or an infinity raises ``RunDivergedError`` and
exits with status 3 and one line (what it saved, where). Ctrl-C exits with status 130 and one
line (a rerun resumes from what was saved).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import dataclasses
import errno
import math
import sys
import typing
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, TypeVar

__all__ = [
    "DIVERGED_EXIT",
    "INT64",
    "INTERRUPTED_EXIT",
    "SEED_MAX",
    "Flag",
    "OneLineParser",
    "RunDivergedError",
    "arg",
    "build_parser",
    "check_device",
    "check_distinct",
    "config_flags",
    "flag_table",
    "flag_values",
    "flags_for",
    "nested",
    "one_line_errors",
    "os_error_line",
    "parse_config",
    "parse_seeds",
    "run",
    "with_defaults_replaced",
    "with_flags",
]

DIVERGED_EXIT = 3
"""Exit status of a run stopped by a NaN or an infinity (``RunDivergedError``)."""
INTERRUPTED_EXIT = 130
"""Exit status of a run stopped by Ctrl-C (128 + SIGINT, as a shell reports it)."""
INT64 = 2**63
"""Integer flags must lie in [-INT64, INT64): the range torch and numpy accept."""
SEED_MAX = 2**32 - 1
"""The largest seed a CLI accepts (seeds are offset by epochs and run indices, and numpy's
generators take 32-bit seeds)."""
_PATH_ERRORS = {
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
    errno.EROFS: "read-only file system",
    errno.ENOTDIR: "a file is in the way (not a folder)",
    errno.EEXIST: "a file is in the way (not a folder)",
    errno.EISDIR: "is a folder, not a file",
}


class RunDivergedError(RuntimeError):
    """Training stopped on a non-finite quantity; the message says where and what was saved."""


def os_error_line(error: OSError) -> str | None:
    """One line for an OSError a user can fix by choosing another path (permission denied,
    read-only, a file where a folder is needed): what and where, and what to do. None for other
    OS errors (disk full, I/O errors), which keep their traceback."""
    what = _PATH_ERRORS.get(error.errno)
    if what is None:
        return None
    where = error.filename if error.filename is not None else "a path"
    return (
        f"cannot write {where}: {what}; choose a writable --out (or fix the permissions), "
        "then run the command again"
    )


def check_device(name: str) -> Any:
    """``torch.device(name)`` for a ``--device`` value, after checking that this torch can use
    it; ValueError naming the flag otherwise (``tpu``, ``cuda`` on a CPU-only torch, ...)."""
    import torch

    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise ValueError(
            f"--device {name!r} is not a device torch knows; use cpu, cuda, cuda:N or auto"
        ) from None
    if device.type == "cuda":
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if n == 0:
            raise ValueError(
                f"--device {name}: this torch sees no CUDA device (a CPU-only build, or no GPU "
                "visible); use --device cpu"
            )
        if device.index is not None and device.index >= n:
            raise ValueError(f"--device {name}: only {n} CUDA device(s) (cuda:0..cuda:{n - 1})")
    elif device.type not in ("cpu", "mps") or (
        device.type == "mps" and not torch.backends.mps.is_available()
    ):
        raise ValueError(f"--device {name}: not available here; use cpu, cuda or auto")
    return device


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
    maximum: float | None = None,
) -> Any:
    """A dataclass field carrying its CLI help, allowed choices and bounds."""
    meta = {
        "help": help,
        "choices": choices,
        "min": minimum,
        "xmin": exclusive_minimum,
        "max": maximum,
    }
    if isinstance(default, list):
        raise TypeError("use a tuple default for multi-valued flags")
    return dataclasses.field(default=default, metadata=meta)


def nested(
    default: Any,
    *,
    flags: Sequence[str] | Mapping[str, str],
    help: Mapping[str, str] | None = None,
) -> Any:
    """A config field holding the frozen dataclass ``default`` (e.g. a ``ProblemSpec``) whose
    fields ``flags`` are flags of the enclosing config, in that order, where this field stands.

    ``flags`` names the nested fields, or maps a flag's name to the nested field it sets
    (``{"toy_sft_steps": "sft_steps"}``). Help, choices and bounds come from the nested field's
    ``arg``; the default from ``default``; ``help`` replaces the help text of the flags it names
    (where the experiment gives the field another meaning, e.g. ``--support`` for
    ``ProblemSpec.pairs``). Fields not named keep ``default``'s values (constants of the
    experiment, not part of its config).
    """
    names = tuple(flags.items()) if isinstance(flags, Mapping) else tuple((n, n) for n in flags)
    known = {f.name for f in dataclasses.fields(default)}
    unknown = [inner for _, inner in names if inner not in known]
    if unknown:
        raise TypeError(f"{type(default).__name__} has no fields {unknown}")
    texts = dict(help or {})
    stray = sorted(set(texts) - {flag for flag, _ in names})
    if stray:
        raise TypeError(f"help names flags that are not nested here: {stray}")
    return dataclasses.field(default=default, metadata={"nested": names, "help": texts})


@dataclasses.dataclass(frozen=True)
class Flag:
    """One flag of a config class.

    Attributes:
        name: the flag's field name (``sft_steps`` → ``--sft-steps``), a key of ``config.json``.
        path: the attributes that lead to its value, e.g. ``("problem", "sft_steps")``.
        kind: the value's type hint (``int``, ``tuple[float, ...]``, ...).
        default: the default value.
        meta: the ``arg`` metadata (help, choices, bounds).
    """

    name: str
    path: tuple[str, ...]
    kind: Any
    default: Any
    meta: Mapping[str, Any]


def config_flags(cls: type) -> list[Flag]:
    """The flags of config dataclass ``cls`` in order, a ``nested`` field's flags in its place."""
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        names = f.metadata.get("nested")
        if names is None:
            out.append(Flag(f.name, (f.name,), hints[f.name], f.default, f.metadata))
            continue
        inner = {g.name: g for g in dataclasses.fields(f.default)}
        inner_hints = typing.get_type_hints(type(f.default))
        texts = f.metadata.get("help", {})
        for flag, field_name in names:
            default = getattr(f.default, field_name)
            meta = inner[field_name].metadata
            if flag in texts:
                meta = {**meta, "help": texts[flag]}
            out.append(Flag(flag, (f.name, field_name), inner_hints[field_name], default, meta))
    return out


def flag_values(config: Any) -> dict[str, Any]:
    """Flag name → value of a config instance (flat: a ``nested`` field's flags by name)."""
    values = {}
    for flag in config_flags(type(config)):
        value = config
        for attribute in flag.path:
            value = getattr(value, attribute)
        values[flag.name] = value
    return values


def with_flags(config: C, values: Mapping[str, Any]) -> C:
    """A copy of ``config`` with flags ``values`` (flag name → value) set, nested ones included.

    Raises:
        TypeError: a name that is not a flag of the config.
    """
    paths = {flag.name: flag.path for flag in config_flags(type(config))}
    unknown = sorted(set(values) - set(paths))
    if unknown:
        raise TypeError(f"{type(config).__name__} has no flags {unknown}")
    top: dict[str, Any] = {}
    inner: dict[str, dict[str, Any]] = {}
    for name, value in values.items():
        path = paths[name]
        if len(path) == 1:
            top[path[0]] = value
        else:
            inner.setdefault(path[0], {})[path[1]] = value
    for field_name, changes in inner.items():
        top[field_name] = dataclasses.replace(getattr(config, field_name), **changes)
    return dataclasses.replace(config, **top)


def parse_seeds(specs: Sequence[str | int], *, flag: str = "seeds") -> list[int]:
    """Expand seed specs (``7``, ``"7"``, ``"0-19"``: inclusive) in order: the one parser of
    sweep.py's ``--seeds`` and of every command's seed sweep (``treemdp.runs.backends``).

    Raises ValueError naming ``flag`` and the spec for a malformed or empty range, a seed outside
    [0, SEED_MAX], no seed at all, and repeated seeds.
    """
    seeds: list[int] = []
    for spec in specs:
        text = str(spec).strip()
        lo, sep, hi = text.partition("-") if not text.startswith("-") else (text, "", "")
        try:
            a, b = (int(lo), int(hi)) if sep else (int(text), int(text))
        except ValueError:
            raise ValueError(
                f"{flag}: {spec!r} is neither an integer nor a range such as 0-19"
            ) from None
        if a < 0:
            raise ValueError(f"{flag} must be >= 0; got {spec!r}")
        if b < a:
            raise ValueError(f"{flag}: the range {spec!r} is empty (its end is below its start)")
        if b > SEED_MAX:
            raise ValueError(f"{flag} must be <= {SEED_MAX}; got {spec!r}")
        seeds.extend(range(a, b + 1))
    if not seeds:
        raise ValueError(f"{flag} must hold at least one seed")
    counts = collections.Counter(seeds)  # linear: a million seeds are checked in a blink
    repeated = sorted(s for s, n in counts.items() if n > 1)
    if repeated:
        raise ValueError(f"{flag} must be distinct; repeated: {repeated[:10]}")
    return seeds


def with_defaults_replaced(config: C, values: Mapping[str, Any]) -> C:
    """``with_flags`` for the flags of ``values`` that ``config`` leaves at their defaults (a
    ``--quick`` preset that a flag given on the command line still overrides)."""
    defaults = {flag.name: flag.default for flag in config_flags(type(config))}
    current = flag_values(config)
    return with_flags(config, {k: v for k, v in values.items() if current[k] == defaults[k]})


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _bounds(meta: dict[str, Any]) -> list[str]:
    """The numeric bounds of a flag's metadata: ">= 0", "> 0", "<= 9"."""
    marks = (("min", ">="), ("xmin", ">"), ("max", "<="))
    return [f"{mark} {meta[key]}" for key, mark in marks if meta.get(key) is not None]


def _describe(meta: dict[str, Any]) -> str:
    parts = [meta["help"], *(f"({bound})" for bound in _bounds(meta))]
    return " ".join(parts) + " [default: %(default)s]"


def build_parser(cls: type, description: str) -> argparse.ArgumentParser:
    """An ArgumentParser with one flag per field of dataclass ``cls``."""
    parser = OneLineParser(
        description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    for flag in config_flags(cls):
        kind, meta = flag.kind, dict(flag.meta)
        kwargs: dict[str, Any] = {"default": flag.default, "help": _describe(meta)}
        if meta.get("choices") is not None:
            kwargs["choices"] = list(meta["choices"])
        if kind is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif typing.get_origin(kind) is tuple:
            kwargs["type"] = typing.get_args(kind)[0]
            kwargs["nargs"] = "+"
            kwargs["metavar"] = flag.name.upper()
        else:
            kwargs["type"] = kind
        parser.add_argument(_flag(flag.name), dest=flag.name, **kwargs)
    return parser


def _check_ranges(cls: type, values: dict[str, Any]) -> None:
    for flag in config_flags(cls):
        lo, xlo, hi = flag.meta.get("min"), flag.meta.get("xmin"), flag.meta.get("max")
        name, value = _flag(flag.name), values[flag.name]
        for v in value if isinstance(value, tuple) else (value,):
            if isinstance(v, float) and not math.isfinite(v):
                raise ValueError(f"{name} must be a finite number; got {v}")
            if lo is not None and not v >= lo:
                raise ValueError(f"{name} must be >= {lo}; got {v}")
            if xlo is not None and not v > xlo:
                raise ValueError(f"{name} must be > {xlo}; got {v}")
            if hi is not None and not v <= hi:
                raise ValueError(f"{name} must be <= {hi}; got {v}")
            if isinstance(v, int) and not isinstance(v, bool) and not -INT64 <= v < INT64:
                # torch and numpy take 64-bit integers; a larger one fails far from its flag
                raise ValueError(f"{name} must lie in [-2**63, 2**63 - 1]; got {v}")


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


def check_distinct(config: Any, names: Sequence[str]) -> None:
    """ValueError naming the flag unless each tuple field of ``names`` holds at least one value
    and no value twice."""
    for name in names:
        values = getattr(config, name)
        if not values or len(set(values)) != len(values):
            raise ValueError(f"{_flag(name)} values must be distinct (at least one)")


def parse_config(cls: type[C], argv: Sequence[str] | None = None, description: str = "") -> C:
    """Parse ``argv`` into an instance of dataclass ``cls`` (exits 2 on a bad flag)."""
    parser = build_parser(cls, description)
    ns = vars(parser.parse_args(argv))
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in ns.items()}
    try:
        _check_ranges(cls, values)
    except ValueError as e:
        parser.error(str(e))
    return with_flags(cls(), values)


def run(
    cls: type[C], main: Callable[[C], Any], argv: Sequence[str] | None = None, description: str = ""
) -> Any:
    """Parse flags into a config and call ``main(config)``; a ValueError exits 2 with one line
    (``one_line_errors``)."""
    config = parse_config(cls, argv, description)
    with one_line_errors(build_parser(cls, description).prog):
        return main(config)


@contextlib.contextmanager
def one_line_errors(prog: str) -> Iterator[None]:
    """What every command line does with what its work raises: one line on stderr, prefixed
    ``prog: ``, and an exit status. A ValueError, or an OSError ``os_error_line`` explains
    (disk full, ...), exits 2; a ``RunDivergedError`` ``DIVERGED_EXIT``; Ctrl-C
    (KeyboardInterrupt) ``INTERRUPTED_EXIT``. Anything else keeps its traceback."""
    try:
        yield
    except ValueError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    except OSError as e:
        message = os_error_line(e)
        if message is None:
            raise
        print(f"{prog}: error: {message}", file=sys.stderr)
        raise SystemExit(2) from None
    except RunDivergedError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        raise SystemExit(DIVERGED_EXIT) from None
    except KeyboardInterrupt:  # Ctrl-C: one line, the shell's status for SIGINT
        print(
            f"{prog}: interrupted; what was finished is saved: run the same command to resume",
            file=sys.stderr,
        )
        raise SystemExit(INTERRUPTED_EXIT) from None


def _range(flag: Flag) -> str:
    meta, kind = flag.meta, flag.kind
    parts = []
    if meta.get("choices") is not None:
        parts.append("one of " + ", ".join(f"`{c}`" for c in meta["choices"]))
    parts += _bounds(meta)
    if not parts:
        elem = typing.get_args(kind)[0] if typing.get_origin(kind) is tuple else kind
        name = _flag(flag.name)
        parts.append(f"`{name}` / `--no-{name[2:]}`" if elem is bool else f"any {elem.__name__}")
    if (typing.get_args(kind)[0] if typing.get_origin(kind) is tuple else kind) is float:
        parts.append("finite")
    return "; ".join(parts)


def flag_table(cls: type) -> str:
    """The flags of dataclass ``cls`` as a Markdown table: flag, type, default, valid range,
    meaning (docs/reference.md is generated from this)."""
    rows = ["| flag | type | default | valid values | meaning |", "|---|---|---|---|---|"]
    for flag in config_flags(cls):
        multi = typing.get_origin(flag.kind) is tuple
        elem = typing.get_args(flag.kind)[0] if multi else flag.kind
        default = " ".join(map(str, flag.default)) if multi else flag.default
        shown = f"`{default}`" if str(default) != "" else "(empty)"
        cells = [
            f"`{_flag(flag.name)}`",
            f"{elem.__name__}{' …' if multi else ''}",
            shown,
            _range(flag),
            flag.meta.get("help", ""),
        ]
        rows.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(rows)
