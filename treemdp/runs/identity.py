"""A run's identity is its whole configuration: config hashes, seed-free hashes and settings.

Two runs are *seeds of one setting* only when their configurations differ in the seed alone (a
seed draws a new problem, new pairs and a new initialisation); runs that differ in anything else
(the learning rate, the data source, the number of checkpoints, ...) are different settings,
even when they share the usual label (size, objective, β). Every table that pools runs (the
checkpoint table of the figures, the claims) keeps a config hash per run and pools only within
a setting.

- ``config_hash(config)``: the hash of a configuration (a JSON-like dict), bookkeeping fields
  (``IGNORED``: the output folder, --force, the device, progress bars, ...) left out;
- ``seed_free(config)`` / ``setting_hash(config)``: the configuration without its seed fields
  (``is_seed_field``: ``seed``, ``seeds``, ``*_seed``, at any depth) and its hash;
- ``run_identity(folder)``: an LLM run folder's whole configuration: its ``config.json``, the
  evaluation settings (``eval.json``), the family experiment it belongs to (``llm_overopt``'s or
  ``llm_confirm``'s ``config.json`` two levels up, the family's axes left out) and the SFT run it
  started from (when ``model`` is such a folder);
- ``group_settings(configs, label=...)``: runs grouped into settings, and for settings that share
  a label but differ otherwise, the fields that tell them apart (``variant``).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

IGNORED = frozenset(
    {
        "out", "force", "progress", "device", "keep_weights", "keep_state", "resume", "run",
        "run_name", "results", "docs", "api_key", "api_cache", "api_concurrency", "api_retries",
        "api_backoff", "api_timeout", "n_params",
    }
)  # fmt: skip
"""Fields that do not change a run's results (where it is written, whether it is forced or shows
progress, which device: a GPU run and a CPU run of one configuration are one configuration)."""

FAMILY_AXES = ("objective", "beta", "size", "model", "lr")
"""A family experiment's fields that list its runs' axes (``objectives``, ``betas``, ``sizes``;
llm_confirm's ``beta`` list): each run records its own value, so the family's list is left out
of the run's identity (a run with β 0.1 is the same whether its family also ran β 0.3)."""

LLM_LABEL = ("size", "objective", "beta")
"""The usual label of an LLM run (what figures and claims group by)."""


def is_seed_field(key: str) -> bool:
    """Whether a config field is a seed: ``seed``, ``seeds`` or ``<something>_seed``."""
    key = str(key)
    return key in ("seed", "seeds") or key.endswith("_seed")


def _canonical(value: Any) -> Any:
    """JSON-stable form: tuples as lists, floats that are integers kept as floats (1.0 ≠ 1 is
    not worth a new setting: both become 1.0 when the field is a float elsewhere), NaN as a
    string."""
    if isinstance(value, Mapping):
        return {str(k): _canonical(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_canonical(v) for v in value]
    if isinstance(value, float) and math.isnan(value):
        return "nan"
    return value


def _without(config: Mapping[str, Any], drop) -> dict[str, Any]:
    """``config`` without the keys ``drop(key)`` selects, at any depth."""
    out = {}
    for key, value in config.items():
        if drop(key):
            continue
        out[key] = _without(value, drop) if isinstance(value, Mapping) else value
    return out


def _digest(config: Mapping[str, Any]) -> str:
    text = json.dumps(_canonical(config), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def config_hash(config: Mapping[str, Any]) -> str:
    """The hash (12 hex digits) of a run's configuration, ``IGNORED`` fields left out."""
    return _digest(_without(config, lambda k: k in IGNORED))


def seed_free(config: Mapping[str, Any]) -> dict[str, Any]:
    """The configuration without ``IGNORED`` fields and without its seed fields, at any depth."""
    return _without(config, lambda k: k in IGNORED or is_seed_field(k))


def setting_hash(config: Mapping[str, Any]) -> str:
    """The hash of ``seed_free(config)``: equal for runs that differ in the seed alone."""
    return _digest(seed_free(config))


def seeds_of(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Every seed field of ``config`` with its dotted path, e.g. {"seed": 0, "eval.seed": 1}."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out |= seeds_of(value, path + ".")
        elif is_seed_field(key) and key not in IGNORED:
            out[path] = value
    return out


def flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} → {"a.b": 1} (lists kept as values)."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, Mapping) and value:
            out |= flatten(value, f"{prefix}{key}.")
        else:
            out[f"{prefix}{key}"] = _canonical(value)
    return out


# ---------------------------------------------------------------------------------------------
# An LLM run folder's whole configuration
# ---------------------------------------------------------------------------------------------


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def _relative(value: Any, anchors: Sequence[Path]) -> Any:
    """A path inside one of ``anchors`` (a family's folder) written relative to it, so a family
    folder's name (which holds its seed's hash) or its place on disk does not enter the hash."""
    if not isinstance(value, str):
        return value
    for anchor in anchors:
        marker = f"/{anchor.name}/"
        if marker in f"/{value}":
            return f"/{value}".split(marker, 1)[1]
    return value


def run_identity(folder: str | Path, *, depth: int = 2) -> dict[str, Any]:
    """An LLM run folder's whole configuration, as one dict.

    ``config.json`` (the training run's), plus under ``"eval"`` its ``eval.json`` (the evaluation
    settings; for a tree-language run the task's fingerprint, which the tree problem's seed
    determines, is kept under ``eval.task_seed`` so that it counts as a seed), plus under
    ``"experiment"`` the ``config.json`` of the family experiment it belongs to (a run folder
    ``<experiment>/llm/<run>``: llm_overopt, llm_confirm), without the fields the run records
    itself and ``FAMILY_AXES`` lists; ``model`` / ``reference`` that name a run folder with a
    config.json (an SFT run) are replaced by that run's identity (``depth`` levels deep). Paths
    inside the family's folder are written relative to it.
    """
    folder = Path(folder)
    config = dict(_read_json(folder / "config.json") or {})
    anchors: list[Path] = []
    experiment = folder.parent.parent
    if folder.parent.name == "llm" and (experiment / "config.json").is_file():
        family = _read_json(experiment / "config.json") or {}
        axes = {*config, *FAMILY_AXES, *(f"{a}s" for a in FAMILY_AXES)}
        config["experiment"] = {k: v for k, v in family.items() if k not in axes}
        anchors.append(experiment)
    for key in ("model", "reference"):
        value = config.get(key)
        if depth > 0 and isinstance(value, str) and value:
            source = Path(value)
            if not source.is_absolute() and not source.exists():
                source = folder / value
            if (source / "config.json").is_file() and source.resolve() != folder.resolve():
                config[key] = {"run": _relative(value, anchors) if anchors else source.name}
                config[key] |= run_identity(source, depth=depth - 1)
    config = {k: _relative(v, anchors) for k, v in config.items()}
    evaluation = _read_json(folder / "eval.json")
    if evaluation is not None:
        evaluation = dict(evaluation)
        if config.get("source", "tree") == "tree" and "task" in evaluation:
            evaluation["task_seed"] = evaluation.pop("task")  # the tree problem's: seed-made
        config["eval"] = evaluation
    return config


# ---------------------------------------------------------------------------------------------
# Settings
# ---------------------------------------------------------------------------------------------


def _value_text(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, str) and "/" in value:
        return Path(value).name or value
    if isinstance(value, list):
        return "[" + ",".join(_value_text(v) for v in value) + "]"
    return str(value)


def group_settings(
    configs: Mapping[str, Mapping[str, Any]], *, label: Sequence[str] = LLM_LABEL
) -> pd.DataFrame:
    """Group runs into settings (equal seed-free hashes) and name what tells apart settings that
    share a label.

    Args:
        configs: run key → its whole configuration (``run_identity``).
        label: the fields of the usual label (figures and claims group by them).

    Returns:
        One row per run (index: run key) with ``config`` (``config_hash``), ``setting``
        (``setting_hash``), ``seeds`` (its seed fields as text), ``n_seeds`` (runs in its
        setting), ``variant`` (the values of ``differing`` fields, e.g. "lr=0.001"; "" when no
        two settings share a label) and ``differing`` (those fields' names, comma-separated, the
        same in every row). Runs with one configuration in two folders (a copy, or a rerun) are
        not two seeds: each is its own setting, told apart by ``folder`` (its run key).
    """
    rows = []
    for run, config in configs.items():
        rows.append(
            {
                "run": run,
                "config": config_hash(config),
                "setting": setting_hash(config),
                "seeds": ", ".join(f"{k}={v}" for k, v in seeds_of(config).items()),
                **{f"_label_{i}": str(config.get(f)) for i, f in enumerate(label)},
            }
        )
    table = pd.DataFrame(rows, columns=["run", "config", "setting", "seeds"]
                         + [f"_label_{i}" for i in range(len(label))])  # fmt: skip
    flat = {run: flatten(seed_free(config)) for run, config in configs.items()}
    twice = table.duplicated("config", keep=False)
    for i in table.index[twice]:  # one configuration in two folders: a copy is not a seed
        run = table.at[i, "run"]
        flat[run]["folder"] = run
        table.at[i, "setting"] = _digest({"setting": table.at[i, "setting"], "folder": run})
    table["n_seeds"] = table.groupby("setting")["run"].transform("size").astype(int)
    differing: list[str] = []
    keys = [f"_label_{i}" for i in range(len(label))]
    for _, group in table.groupby(keys, sort=False) if len(table) else []:
        settings = group.drop_duplicates("setting")["run"].tolist()
        if len(settings) < 2:
            continue
        fields = sorted({k for r in settings for k in flat[r]})
        for field in fields:
            values = {json.dumps(flat[r].get(field, "–"), sort_keys=True) for r in settings}
            if len(values) > 1 and field not in differing:
                differing.append(field)
    differing.sort()
    table["variant"] = [
        ", ".join(f"{f}={_value_text(flat[r][f])}" if f in flat[r] else f"{f}=–" for f in differing)
        for r in table["run"]
    ]
    table["differing"] = ", ".join(differing)
    return table.drop(columns=keys).set_index("run")
