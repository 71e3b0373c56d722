"""Tidy tables and configs on disk: CSV with full float precision, ``config.json``, both checked
against the folder's ``manifest.json``."""

from __future__ import annotations

import dataclasses
import io
import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from treemdp.runs.cli import flag_values
from treemdp.runs.files import verify_file, write_checked

__all__ = [
    "config_dict",
    "config_matches",
    "read_config",
    "read_table",
    "write_config",
    "write_table",
]


def config_dict(config: Any) -> dict[str, Any]:
    """A dataclass config as a JSON-ready dict of its flags (tuples become lists; the flags of a
    ``nested`` field such as a ``ProblemSpec`` appear flat, under their flag names)."""
    if not dataclasses.is_dataclass(config):
        raise TypeError("config must be a dataclass instance")
    return json.loads(json.dumps(flag_values(config)))


def config_matches(config: Mapping[str, Any], settings: Mapping[str, Any]) -> bool:
    """Whether a run's config.json values include every value in ``settings`` (tuples compare
    as the lists JSON gives back)."""
    return all(
        config.get(k) == (list(v) if isinstance(v, tuple) else v) for k, v in settings.items()
    )


def write_config(folder: str | Path, config: Any) -> Path:
    """Write ``folder/config.json`` atomically (checksummed in ``manifest.json``)."""
    text = json.dumps(config_dict(config), indent=2, sort_keys=True) + "\n"
    return write_checked(Path(folder) / "config.json", text.encode())


def read_config(folder: str | Path) -> dict[str, Any]:
    """Read ``folder/config.json``; ValueError naming the file if it is missing or corrupt."""
    path = Path(folder) / "config.json"
    try:
        return json.loads(verify_file(path))
    except ValueError as e:
        if not path.exists():
            raise ValueError(
                f"{path} is missing: the run folder is incomplete; rerun the experiment"
            ) from None
        if isinstance(e, json.JSONDecodeError | UnicodeDecodeError):
            raise ValueError(
                f"{path} is corrupt ({e}); delete it and rerun (or rerun with --force)"
            ) from None
        raise


_SPECIAL = re.compile(r'[,"\r\n]|^\s|\s$|^$')


def _fast_csv(frame: pd.DataFrame) -> str | None:
    """The CSV text of a plain tidy table (numbers, bools, simple strings), or None.

    Floats are written as ``repr`` (the shortest text that parses back to the same float64,
    so full precision), NaN as an empty field, as pandas does; about twice as fast as
    ``to_csv(float_format="%.17g")``, which formats each value in Python. Frames with anything
    that would need quoting (commas, quotes, newlines, missing strings) return None.
    """
    cols: list[list[str]] = []
    for name in frame.columns:
        if _SPECIAL.search(str(name)):
            return None
        values = frame[name].to_numpy()
        kind = values.dtype.kind
        if kind == "f":
            cols.append(["" if v != v else repr(v) for v in values.tolist()])
        elif kind in "iub":
            cols.append(list(map(str, values.tolist())))
        elif kind in "OUT" and all(isinstance(v, str) for v in values.tolist()):
            texts = values.tolist()
            if any(_SPECIAL.search(t) for t in set(texts)):
                return None
            cols.append(texts)
        else:
            return None
    header = ",".join(map(str, frame.columns))
    return "\n".join([header, *map(",".join, zip(*cols, strict=True))]) + "\n"


def write_table(path: str | Path, frame: pd.DataFrame) -> Path:
    """Write a tidy table as CSV atomically (full float precision: every float64 reads back
    bit for bit).

    The text depends on the values only, not on how the frame was built: object columns that
    hold numbers are made numeric first (rows computed now mix ints and floats where rows read
    back from a CSV are float64), and both writers print a float as its ``repr``. So a table
    rebuilt from rows read back after an interruption is byte-identical to one built in one go.
    """
    frame = frame.infer_objects()
    text = _fast_csv(frame)
    if text is None:
        text = frame.to_csv(index=False, float_format=_float_repr, lineterminator="\n")
    return write_checked(path, text.encode())


def _float_repr(value: float) -> str:
    return repr(float(value))


def read_table(path: str | Path, *, columns: tuple[str, ...] = ()) -> pd.DataFrame:
    """Read a tidy CSV table, checked against the folder's ``manifest.json``; ValueError naming
    the file (missing, truncated, altered, unparsable) or the missing columns."""
    path = Path(path)
    data = verify_file(path)
    try:
        frame = pd.read_csv(io.BytesIO(data))
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise ValueError(f"{path} is corrupt ({e}); delete it and rerun") from None
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(f"{path} lacks columns {missing}; it was written by another version")
    return frame
