"""Models, tokenizers and preference data as other trainers leave them, for diagnose.py.

* A model folder is any folder ``from_pretrained`` loads: ``save_pretrained`` output, TRL's (any
  Trainer's) ``output_dir/checkpoint-N``, an llm_train checkpoint ``step-NNNNNNN``. A folder that
  holds such folders (a Trainer's ``output_dir``, an llm_train run) stands for all of them.
* Preference data in TRL's format: a JSONL file or a ``datasets`` folder (``save_to_disk``) with
  ``prompt`` / ``chosen`` / ``rejected``, as text (standard form) or as lists of chat messages
  (conversational form, rendered with the tokenizer's chat template as TRL does; without
  ``prompt`` the shared leading messages of chosen and rejected are the prompt).

Every problem a user can fix is a ValueError of one line.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from llm.data import FIELDS, BadRow, load_tokenizer, read_jsonl
from llm.model import PYTHIA_SHAPES, load_model

__all__ = [
    "ModelFolder",
    "check_same_tokenizer",
    "folder_step",
    "has_weights",
    "load_any_model",
    "model_folders",
    "read_preference_rows",
    "to_text_rows",
    "tokenizer_for",
]

WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
_STEP = re.compile(r"(?:step|checkpoint)-(\d+)")


def has_weights(folder: Path) -> bool:
    """Whether ``folder`` holds model weights ``from_pretrained`` reads."""
    return any((folder / f).is_file() for f in WEIGHT_FILES)


def folder_step(folder: Path) -> int | None:
    """The training step of a checkpoint folder: from its name (``checkpoint-N``,
    ``step-NNNNNNN``), else a Trainer's ``trainer_state.json`` ``global_step``, else None."""
    match = _STEP.fullmatch(folder.name)
    if match:
        return int(match.group(1))
    state = folder / "trainer_state.json"
    if state.is_file():
        try:
            return int(json.loads(state.read_text(encoding="utf-8"))["global_step"])
        except (ValueError, KeyError, TypeError):
            return None
    return None


class ModelFolder:
    """One model folder to diagnose: its path, label and step."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.step = folder_step(path)
        self.label = path.name

    def __repr__(self) -> str:
        return f"ModelFolder({self.path})"


def model_folders(paths: Sequence[str | Path], flag: str = "--checkpoints") -> list[ModelFolder]:
    """The model folders named by ``paths``: a folder with weights stands for itself; a folder
    of ``checkpoint-N`` / ``step-N`` folders with weights (a Trainer's output_dir, an llm_train
    run) for those, by step. ValueError (one line) for anything else."""
    found: list[ModelFolder] = []
    for raw in paths:
        path = Path(raw)
        if not path.is_dir():
            raise ValueError(f"{flag}: {path} is not a folder")
        if has_weights(path):
            found.append(ModelFolder(path))
            continue
        inner = [p for p in path.iterdir() if p.is_dir() and _STEP.fullmatch(p.name)]
        inner = sorted((p for p in inner if has_weights(p)), key=lambda p: folder_step(p) or 0)
        if not inner:
            raise ValueError(
                f"{flag}: {path} holds no model weights ({' / '.join(WEIGHT_FILES[:3])}) and no "
                "checkpoint-N or step-N folders with weights; name a folder written by "
                "save_pretrained or a Trainer"
            )
        found.extend(ModelFolder(p) for p in inner)
    return found


def _run_config(path: Path) -> dict[str, Any] | None:
    """An llm_train run's config.json (it names a ``model`` and a ``stage``), else None."""
    try:
        config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if isinstance(config, dict) and "stage" in config and "model" in config:
        return config
    return None


def load_any_model(
    name: str | Path, *, vocab_size: int | None, dtype: torch.dtype, flag: str
) -> nn.Module:
    """A causal LM from a model folder, a hub name (offline: the local cache), or an llm_train
    run folder (its reference: a named Pythia shape is rebuilt from the run's seed)."""
    from llm.eval_run import load_reference

    path = Path(name)
    config = _run_config(path) if path.is_dir() else None
    if config is not None:
        if config.get("source") == "tree":
            raise ValueError(
                f"{flag} {path} is a tree-language run: evaluate it with experiments/llm_eval.py"
            )
        if vocab_size is None:
            raise ValueError(f"{flag} {path}: an llm_train run needs a tokenizer to rebuild it")
        return load_reference(config, vocab_size=vocab_size, dtype=dtype).eval()
    if path.is_dir() and not has_weights(path):
        raise ValueError(
            f"{flag} {path} holds no model weights ({' / '.join(WEIGHT_FILES[:3])}): name a "
            "folder written by save_pretrained or a Trainer, or a hub name"
        )
    if str(name) in PYTHIA_SHAPES:
        raise ValueError(
            f"{flag} {name} is a random shape, not a model; name the run folder that built it"
        )
    try:
        return load_model(str(name), dtype=dtype)
    except OSError as err:
        raise ValueError(f"{flag} {name}: cannot load it ({str(err).splitlines()[0]})") from None


def tokenizer_for(path: str | Path) -> Any | None:
    """The tokenizer saved with a model folder (or an llm_train run's: its ``tokenizer``, else
    the byte tokenizer of a named shape), a hub name's, or None when there is none."""
    p = Path(path)
    config = _run_config(p) if p.is_dir() else None
    if config is not None:
        model = config.get("model", "")
        name = config.get("tokenizer") or ("byte" if model in PYTHIA_SHAPES else model)
        return load_tokenizer(name)
    if p.is_dir():
        if not any((p / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json")):
            return None
        return load_tokenizer(p)
    try:
        return load_tokenizer(str(path))
    except OSError:
        return None


def check_same_tokenizer(a: Any, b: Any, *, what: str) -> None:
    """ValueError (one line) unless tokenizers ``a`` (the reference's) and ``b`` (``what``'s)
    map the same strings to the same ids and end on the same EOS."""
    if a is None or b is None:
        return
    va, vb = a.get_vocab(), b.get_vocab()
    if va != vb or a.eos_token_id != b.eos_token_id:
        only = sorted(set(vb) ^ set(va))[:3]
        detail = f"{len(va)} vs {len(vb)} tokens" + (f", e.g. {only}" if only else "")
        raise ValueError(
            f"{what}'s tokenizer differs from the reference's ({detail}, EOS {a.eos_token_id} vs "
            f"{b.eos_token_id}): log-prob changes need one tokenizer"
        )


def read_preference_rows(path: str | Path, *, split: str = "") -> list[tuple[int, Any]]:
    """Numbered rows of a JSONL file or a ``datasets`` folder (``save_to_disk``; a DatasetDict
    gives ``split``, else ``test``, else its only split). ValueError (one line) when a column of
    TRL's preference format is missing."""
    p = Path(path)
    if not p.exists():
        raise ValueError(f"--data {p} does not exist")
    rows = read_jsonl(p) if p.is_file() else _read_datasets_folder(p, split)
    for n, row in rows:
        if isinstance(row, BadRow):
            raise ValueError(f"--data {p} row {n}: {row.reason}")
        if not isinstance(row, dict):
            raise ValueError(f"--data {p} row {n}: expected an object with {', '.join(FIELDS)}")
        need = FIELDS if "prompt" in row or not _is_chat(row.get("chosen")) else FIELDS[1:]
        missing = [f for f in need if f not in row or row[f] is None]
        if missing:
            raise ValueError(
                f"--data {p} row {n} lacks {', '.join(missing)} (TRL's preference format: "
                "prompt, chosen, rejected)"
            )
    if not rows:
        raise ValueError(f"--data {p} holds no rows")
    return rows


def _read_datasets_folder(p: Path, split: str) -> list[tuple[int, Any]]:
    try:
        import datasets
    except ImportError:
        raise ValueError(
            f"--data {p} is a folder: reading a datasets folder needs the trl extra "
            "(pip install -c constraints.txt -e '.[trl]'), or pass a JSONL file"
        ) from None
    try:
        ds = datasets.load_from_disk(str(p))
    except (FileNotFoundError, ValueError) as err:
        raise ValueError(
            f"--data {p} is neither a JSONL file nor a datasets folder ({err})".splitlines()[0]
        ) from None
    if isinstance(ds, datasets.DatasetDict):
        name = split or ("test" if "test" in ds else next(iter(ds)) if len(ds) == 1 else "")
        if name not in ds:
            raise ValueError(f"--data {p} has splits {list(ds)}: pick one with --split")
        ds = ds[name]
    return [(i + 1, dict(r)) for i, r in enumerate(ds)]


def _is_chat(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(m, dict) and "role" in m for m in value)


def to_text_rows(rows: list[tuple[int, Any]], tokenizer: Any) -> list[tuple[int, Any]]:
    """Rows in TRL's standard form (text): conversational rows are rendered with the
    tokenizer's chat template (prompt with the generation prompt; each response as the text the
    template adds after it), as TRL's ``maybe_apply_chat_template`` does."""
    out = []
    for n, row in rows:
        if not _is_chat(row.get("chosen")):
            out.append((n, row))
            continue
        if not getattr(tokenizer, "chat_template", None):
            raise ValueError(
                f"--data row {n} is conversational (lists of messages) but the tokenizer has no "
                "chat template; give text rows or a tokenizer with a chat template"
            )
        chosen, rejected = row["chosen"], row["rejected"]
        prompt = row.get("prompt")
        if prompt is None:  # implicit prompt: the messages both conversations share
            k = 0
            while k < min(len(chosen), len(rejected)) and chosen[k] == rejected[k]:
                k += 1
            prompt, chosen, rejected = chosen[:k], chosen[k:], rejected[k:]
        if isinstance(prompt, str):
            prompt = [{"role": "user", "content": prompt}]

        def render(messages: list, **kw: Any) -> str:
            return tokenizer.apply_chat_template(messages, tokenize=False, **kw)

        p = render(prompt, add_generation_prompt=True)
        texts = {"prompt": p}
        for name, answer in (("chosen", chosen), ("rejected", rejected)):
            full = render(prompt + answer)
            texts[name] = full[len(p) :] if full.startswith(p) else full
        out.append((n, texts))
    return out
