"""The checkpoint table the scaling / evolution / length / accuracy figures read; its adapters.

One row per (run, checkpoint), the same columns whatever the source:

    run          a run's key, unique within the table (toy: "<capacity>/<run>", llm: folder name)
    objective    dpo, ipo, slic, rdpo, ...
    beta         β
    size         model size: toy = policy capacity (tabular, mlp4, ...), llm = model name
    size_rank    0, 1, ... from the smallest size to the largest (by parameter count)
    seed         seed
    step         toy: optimiser step; llm: examples seen
    fraction     fraction of the (first) epoch trained, 0 at the start
    final        whether this is the run's last checkpoint
    kl_reverse   KL(π‖π_ref) (nats)
    kl_forward   KL(π_ref‖π) (nats)
    d            √KL(π‖π_ref) (a negative sampled KL estimate is clipped to 0 first)
    d_forward    √KL(π_ref‖π)
    win_rate     gold/judge win rate (toy: against π_ref under the gold reward; llm: judge vs
                 the dataset's reference summaries)
    reward_accuracy  share of preference pairs with positive implicit margin
    loss         the objective's mean loss (toy: on the training pairs; llm: as evaluated)
    length       mean response length under π (toy: actions; llm: as evaluated)
    length_r2    R² of the regression of log π/π_ref on response length (NaN where undefined)
    win_rate_se, kl_reverse_se, kl_forward_se   standard errors (llm); NaN for the exact toy
    config       the run's config hash (``treemdp.runs.identity``): runs are seeds of one setting
                 only when their configurations differ in the seed alone
    variant      what tells this run's setting apart from another of the same size, objective
                 and β (e.g. "lr=0.001"; "" when no two settings share that label): rows of
                 different variants are never pooled (``variants`` splits a table by it)

Adapters: ``from_toy(folder)`` for an experiments/toy_scaling.py run folder and
``from_llm(folders)`` for LLM evaluation run folders (``eval.csv`` + ``config.json``). A ``Data``
bundles a table with the caption line that says where it came from.
"""

from __future__ import annotations

import argparse
import json
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from figures import run_index
from treemdp.runs import identity, read_config, read_table
from treemdp.runs.eval_table import COLUMNS as LLM_EVAL_COLUMNS  # what from_llm needs
from treemdp.runs.eval_table import EVAL_TABLE as LLM_EVAL

COLUMNS = (
    "run",
    "objective",
    "beta",
    "size",
    "size_rank",
    "seed",
    "step",
    "fraction",
    "final",
    "kl_reverse",
    "kl_forward",
    "d",
    "d_forward",
    "win_rate",
    "reward_accuracy",
    "loss",
    "length",
    "length_r2",
    "win_rate_se",
    "kl_reverse_se",
    "kl_forward_se",
    "config",
    "variant",
)
"""Columns of the checkpoint table, in order."""


TOY_EXPERIMENT = "experiments/toy_scaling.py"
"""The experiment that writes the toy's checkpoint table (named in messages)."""
TOY_COLUMNS = (
    "capacity",
    "n_params",
    "run",
    "objective",
    "beta",
    "seed",
    "step",
    "fraction_of_epoch",
    "kl_reverse",
    "kl_forward",
    "win_rate",
    "reward_accuracy",
    "loss",
    "length",
    "length_r2",
)
"""What ``from_toy`` needs from a toy_scaling ``metrics.csv``."""

LLM_CONFIG_KEYS = ("objective", "beta", "model", "seed")
"""What ``from_llm`` needs from an LLM run's ``config.json``."""


@dataclass(frozen=True)
class Data:
    """A checkpoint table and where it came from.

    Attributes:
        table: the checkpoint table (``COLUMNS``).
        kind: "toy" or "llm" (figures go to ``out/<kind>/``).
        source: one caption line naming the run folders and what "size" means.
    """

    table: pd.DataFrame
    kind: str
    source: str


def check(table: pd.DataFrame, where: str = "the checkpoint table") -> pd.DataFrame:
    """``table`` with exactly ``COLUMNS`` in order; ValueError naming any missing column
    (``config`` and ``variant`` are filled in when absent: each run its own configuration, one
    variant)."""
    table = table.copy()
    if "config" not in table.columns and "run" in table.columns:
        table["config"] = table["run"].astype(str)
    if "variant" not in table.columns:
        table["variant"] = ""
    missing = [c for c in COLUMNS if c not in table.columns]
    if missing:
        raise ValueError(f"{where} lacks columns {missing} (see figures/checkpoints.py COLUMNS)")
    if table.empty:
        raise ValueError(f"{where} has no rows")
    return table.loc[:, list(COLUMNS)].reset_index(drop=True)


def _finish(frame: pd.DataFrame) -> pd.DataFrame:
    """Add d, d_forward and final; order the rows."""
    frame = frame.copy()
    frame["d"] = np.sqrt(frame["kl_reverse"].clip(lower=0))
    frame["d_forward"] = np.sqrt(frame["kl_forward"].clip(lower=0))
    frame["final"] = frame["step"] == frame.groupby("run")["step"].transform("max")
    frame = frame.sort_values(["size_rank", "objective", "beta", "seed", "run", "step"])
    return check(frame)


def _ranks(sizes: pd.Series, n_params: pd.Series) -> pd.Series:
    """0, 1, ... by parameter count (ties broken by first appearance)."""
    order = (
        pd.DataFrame({"size": sizes, "n": n_params})
        .drop_duplicates("size")
        .reset_index(drop=True)
        .reset_index()
        .sort_values(["n", "index"])
    )
    rank = {s: i for i, s in enumerate(order["size"])}
    return sizes.map(rank).astype(int)


# ---------------------------------------------------------------------------------------------
# Toy: experiments/toy_scaling.py
# ---------------------------------------------------------------------------------------------


def from_toy(folder: str | Path) -> pd.DataFrame:
    """The checkpoint table of a toy_scaling run folder (size = capacity, ranked by n_params).

    Raises:
        ValueError: ``metrics.csv`` is missing or lacks a column (the message says which, and that
            a rerun of experiments/toy_scaling.py writes it).
    """
    path = Path(folder) / "metrics.csv"
    try:
        raw = read_table(path, columns=TOY_COLUMNS)
    except ValueError as e:
        raise ValueError(f"{e}; rerun: python {TOY_EXPERIMENT} --force (same flags)") from None
    frame = pd.DataFrame(
        {
            "run": raw["capacity"].astype(str) + "/" + raw["run"].astype(str),
            "objective": raw["objective"],
            "beta": raw["beta"].astype(float),
            "size": raw["capacity"].astype(str),
            "size_rank": _ranks(raw["capacity"].astype(str), raw["n_params"]),
            "seed": raw["seed"],
            "step": raw["step"],
            "fraction": raw["fraction_of_epoch"].astype(float),
            "kl_reverse": raw["kl_reverse"],
            "kl_forward": raw["kl_forward"],
            "win_rate": raw["win_rate"],
            "reward_accuracy": raw["reward_accuracy"],
            "loss": raw["loss"],
            "length": raw["length"],
            "length_r2": raw["length_r2"],
            "win_rate_se": np.nan,
            "kl_reverse_se": np.nan,
            "kl_forward_se": np.nan,
        }
    )
    frame["config"] = toy_config_hashes(folder, frame)
    frame["variant"] = ""
    return _finish(frame)


def toy_config_hashes(folder: str | Path, frame: pd.DataFrame) -> pd.Series:
    """Each toy run's config hash: the experiment's config.json (without its axes' lists) with
    the run's capacity, objective, β and seed (``treemdp.runs.identity.config_hash``)."""
    try:
        experiment = read_config(folder)
    except ValueError:
        experiment = {"folder": Path(folder).name}
    axes = ("capacities", "objectives", "beta", "betas", "seeds", "seed")
    experiment = {k: v for k, v in experiment.items() if k not in axes}
    keys = frame[["run", "size", "objective", "beta", "seed"]].drop_duplicates("run")
    hashes = {
        r.run: identity.config_hash(
            {
                "experiment": experiment,
                "capacity": r.size,
                "objective": r.objective,
                "beta": float(r.beta),
                "seed": int(r.seed),
            }
        )
        for r in keys.itertuples()
    }
    return frame["run"].map(hashes)


def load_toy(folder: str | Path) -> Data:
    """``from_toy`` with its caption line."""
    folder = Path(folder)
    table = from_toy(folder)
    sizes = " < ".join(table.drop_duplicates("size").sort_values("size_rank")["size"])
    source = (
        f"data: toy (Tree MDP), {folder}/metrics.csv (experiments/toy_scaling.py); exact metrics; "
        f"'size' is the policy's capacity ({sizes}, by parameter count); win rate is against "
        "π_ref under the gold reward; accuracy and loss are on the training pairs."
    )
    return Data(table, "toy", source)


# ---------------------------------------------------------------------------------------------
# LLM: evaluation run folders (eval.csv + config.json)
# ---------------------------------------------------------------------------------------------

_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([kmb])\b", re.IGNORECASE)
_SCALE = {"k": 1e3, "m": 1e6, "b": 1e9}


def model_params(config: dict) -> float:
    """A model's parameter count for ordering sizes: config's ``n_params`` if present, else
    parsed from the model name ("pythia-2.8b" → 2.8e9, "70m" → 7e7), else NaN."""
    if config.get("n_params") is not None:
        return float(config["n_params"])
    match = _SIZE.search(str(config["model"]).replace("_", "-"))
    return float(match.group(1)) * _SCALE[match.group(2).lower()] if match else np.nan


def _llm_folders(folders: Iterable[str | Path]) -> list[Path]:
    """Each given folder if it holds eval.csv, else every folder below it that does."""
    found: list[Path] = []
    for folder in map(Path, folders):
        if not folder.is_dir():
            raise ValueError(f"{folder} is not a folder (--llm-runs takes LLM run folders)")
        if (folder / LLM_EVAL).exists():
            found.append(folder)
            continue
        below = sorted(p.parent for p in folder.rglob(LLM_EVAL))
        if not below:
            raise ValueError(
                f"{folder} holds no {LLM_EVAL}: an LLM run folder needs {LLM_EVAL} (columns "
                f"{', '.join(LLM_EVAL_COLUMNS)}) and config.json (keys "
                f"{', '.join(LLM_CONFIG_KEYS)}), written by the LLM evaluation"
            )
        found += below
    return found


def _llm_run(folder: Path) -> pd.DataFrame:
    config_path = folder / "config.json"
    if not config_path.exists():
        raise ValueError(f"{config_path} is missing (needs keys {', '.join(LLM_CONFIG_KEYS)})")
    try:
        config = json.loads(config_path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{config_path} is corrupt ({e})") from None
    missing = [k for k in LLM_CONFIG_KEYS if k not in config]
    if missing:
        raise ValueError(f"{config_path} lacks keys {missing}")
    raw = read_table(folder / LLM_EVAL, columns=LLM_EVAL_COLUMNS)
    return pd.DataFrame(
        {
            "run": folder.name,
            "objective": str(config["objective"]).lower(),
            "beta": float(config["beta"]),
            "size": str(config.get("size", config["model"])),
            "n_params": model_params(config),
            "seed": config["seed"],
            "step": raw["examples_seen"],
            "fraction": raw["fraction_of_epoch"].astype(float),
            **_kl_and_win_rate(raw),
            "reward_accuracy": raw["reward_accuracy"],
            "loss": raw["loss"],
            "length": raw["length_mean"],
            "length_r2": raw["logratio_length_r2"],
        }
    )


EXACT = {"kl_reverse": "exact_kl_reverse", "kl_forward": "exact_kl_forward",
         "win_rate": "exact_win_rate"}  # fmt: skip
"""The sampled columns of eval.csv that a tree-language run also has exactly (every response
scored): the figures draw the exact values where a run has them all."""


def is_exact(raw: pd.DataFrame) -> bool:
    """Whether an eval table carries every ``EXACT`` column, with a value in every row."""
    return all(c in raw and raw[c].notna().all() for c in EXACT.values())


def _kl_and_win_rate(raw: pd.DataFrame) -> dict[str, pd.Series]:
    """KL both ways and the win rate with their SEs: exact (SE 0) when the run has them, else the
    sampled estimates (at a few samples a checkpoint those are mostly noise)."""
    if is_exact(raw):
        values = {name: raw[column] for name, column in EXACT.items()}
        return {**values, **{f"{name}_se": 0.0 * raw[column] for name, column in EXACT.items()}}
    return {name: raw[name] for name in EXACT} | {f"{n}_se": raw[f"{n}_se"] for n in EXACT}


def from_llm(folders: str | Path | Sequence[str | Path]) -> pd.DataFrame:
    """The checkpoint table of LLM evaluation run folders (size = model, ranked by parameters).

    Args:
        folders: run folders (each with ``eval.csv`` and ``config.json``), or folders above them.

    Raises:
        ValueError: a folder lacks eval.csv / config.json, or they lack a column / key (named).
    """
    if isinstance(folders, str | Path):
        folders = [folders]
    runs = _llm_folders(folders)
    names = [p.name for p in runs]
    frames = [_llm_run(p) for p in runs]
    if len(set(names)) != len(names):  # same folder name under different parents: use paths
        for frame, p in zip(frames, runs, strict=True):
            frame["run"] = str(p)
    keys = [str(f["run"].iloc[0]) if len(f) else str(p) for f, p in zip(frames, runs, strict=True)]
    labels = [f[["size", "objective", "beta"]].iloc[0].to_dict() for f in frames]
    settings = llm_settings(runs, keys, labels)
    frame = pd.concat(frames, ignore_index=True)
    frame["config"] = frame["run"].map(settings["config"])
    frame["variant"] = frame["run"].map(settings["variant"])
    frame["seed"] = frame["run"].map(settings["seed"])
    frame["size_rank"] = _ranks(frame["size"], frame["n_params"])
    return _finish(frame.drop(columns="n_params"))


def llm_settings(runs: Sequence[Path], keys: Sequence[str], labels: Sequence[dict]) -> pd.DataFrame:
    """``treemdp.runs.identity.group_settings`` of LLM run folders (index: run key), with a
    ``seed`` per run that is unique within its setting: the run's ``seed`` where that tells its
    setting's runs apart, else their rank by all seed fields (runs that differ in the evaluation
    seed alone are seeds too)."""
    configs = {
        key: {**identity.run_identity(folder), **label}
        for key, folder, label in zip(keys, runs, labels, strict=True)
    }
    table = identity.group_settings(configs)
    table["seed"] = [configs[k].get("seed") for k in table.index]
    for _, g in table.groupby("setting"):
        if g["seed"].duplicated().any():
            order = {text: i for i, text in enumerate(sorted(set(g["seeds"])))}
            table.loc[g.index, "seed"] = g["seeds"].map(order)
    return table


def load_llm(folders: Sequence[str | Path]) -> Data:
    """``from_llm`` with its caption line."""
    table = from_llm(folders)
    sizes = " < ".join(table.drop_duplicates("size").sort_values("size_rank")["size"])
    exact = [is_exact(read_table(p / LLM_EVAL)) for p in _llm_folders(folders)]
    measured = (
        "KL and win rate exact (every response scored)"
        if all(exact)
        else "KL and win rate estimated on sampled responses"
        if not any(exact)
        else f"KL and win rate exact in {sum(exact)} of {len(exact)} runs, else sampled"
    )
    n_settings = table.drop_duplicates("run").groupby(["variant", "size", "objective", "beta"])
    counts = sorted(set(n_settings["run"].nunique()))
    seeds = f"{counts[0]}" if len(counts) == 1 else f"{counts[0]}–{counts[-1]}"
    source = (
        f"data: LLM evaluation runs ({table['run'].nunique()} run folders under "
        f"{', '.join(map(str, folders))}; eval.csv; {seeds} seed{'s' * (seeds != '1')} per "
        f"setting); 'size' is the model ({sizes}); {measured}; "
        "length estimated on sampled responses."
    )
    missing = no_win_rate(table, _llm_folders(folders))
    return Data(table, "llm", source + (f" {missing}" if missing else ""))


def no_win_rate(table: pd.DataFrame, runs: Sequence[Path] = ()) -> str:
    """A sentence saying the table has no win rate (and why, when the runs' eval.json names the
    judge), or "" when some row has one."""
    if table["win_rate"].notna().any():
        return ""
    judges = set()
    for folder in runs:
        try:
            judges.add(str(json.loads((Path(folder) / "eval.json").read_text()).get("judge")))
        except (OSError, ValueError, AttributeError):
            continue
    why = f"the runs were evaluated with judge {'/'.join(sorted(judges))!r}" if judges else ""
    return (
        f"NO WIN RATE: every win rate is NaN ({why or 'no judge scored the responses'}); the "
        "win-rate panels have no points."
    )


def by_variant(data: Data) -> list[Data]:
    """``data`` split into one ``Data`` per ``variant`` (settings that share size, objective and
    β but differ in their configuration are never drawn as one curve): one part as it is when
    the table has a single variant; else each part's ``kind`` is ``<kind>/<variant as a file
    name>`` and its caption line names the variant."""
    variants = list(dict.fromkeys(data.table["variant"]))
    if len(variants) <= 1:
        return [data]
    parts = []
    for variant in variants:
        text = variant.replace(", ", "_")
        slug = "".join(c if c.isalnum() or c in ".-_=" else "-" for c in text)[:80]
        note = (
            f" Setting {variant}: runs whose configurations differ in more than the seed are "
            f"kept apart ({len(variants)} variants of the same sizes, objectives and β; see "
            "the other folders)."
        )
        sub = data.table[data.table["variant"] == variant].reset_index(drop=True)
        parts.append(Data(sub, f"{data.kind}/{slug}", data.source + note))
    return parts


# ---------------------------------------------------------------------------------------------
# The command line every family script shares
# ---------------------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """--toy-run / --llm-runs / --results / --out."""
    parser.add_argument(
        "--toy-run", default=None, help="a toy_scaling run folder [default: the indexed one]"
    )
    parser.add_argument("--llm-runs", nargs="+", default=None, help="LLM evaluation run folders")
    parser.add_argument("--results", default="results", help="results root [default: results]")
    parser.add_argument("--out", default="figures/out", help="output root [default: figures/out]")


def data_from_args(args: argparse.Namespace) -> Data:
    """The LLM runs if given, else the given toy run, else the toy run of the paper's run index
    under --results (experiments/paper_runs.py writes it)."""
    if args.llm_runs:
        return load_llm(args.llm_runs)
    return load_toy(args.toy_run or run_index.run_folders(args.results, "toy")[0])


def command_line(doc: str, draw: Callable[..., list[Path]], **extra: str) -> None:
    """The command line of a figure script: --toy-run / --llm-runs / --results / --out plus
    ``extra`` flags (name → help, string-valued, default None) passed to ``draw`` by keyword;
    a ValueError exits 2 with its message; prints the files written."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawTextHelpFormatter)
    add_arguments(parser)
    for name, help_ in extra.items():
        parser.add_argument("--" + name.replace("_", "-"), default=None, help=help_)
    args = parser.parse_args()
    try:
        files = []
        for data in by_variant(data_from_args(args)):
            files += draw(data, args.out, **{k: getattr(args, k) for k in extra})
    except ValueError as e:
        parser.error(str(e))
    print("\n".join(map(str, files)))
