"""The supported library versions, and the one place where the llm package meets an API that
differs between them.

transformers renamed the forward's KV-cache parameter: 5.17 takes ``past_key_values``, 5.24 takes
``cache`` (and still accepts ``past_key_values`` with a deprecation warning). A keyword the forward
does not declare falls into its ``**kwargs`` and is ignored *without an error*: passing ``cache=``
to 5.17 silently decoded every token after the first with no context. So the keyword is chosen
from the model's own signature (``cache_kwargs``), and ``generate`` checks that the cache it passed
was filled (``check_cache_filled``) and recomputes its first batch with a plain forward.

``SUPPORTED`` is the range that the test suite runs on (``constraints-lowest.txt`` and
``constraints.txt``); ``pyproject.toml`` declares the same bounds (a test keeps them equal).
"""

from __future__ import annotations

import inspect
import warnings
from typing import Any

import torch
import transformers
from torch import nn

__all__ = [
    "SUPPORTED",
    "cache_kwargs",
    "check_cache_filled",
    "last_logits_kwargs",
    "unsupported_versions",
    "version_report",
    "warn_if_unsupported",
]

SUPPORTED: dict[str, tuple[str, str]] = {
    "torch": ("2.11", "2.13"),
    "transformers": ("5.17", "5.24"),
}
"""Tested (lowest, highest) minor versions of each library, both ends included."""


def _minor(version: str) -> tuple[int, int]:
    """(major, minor) of a version string such as ``2.11.0+cu130`` or ``5.17.0.dev0``."""
    parts = version.split("+")[0].split(".")
    return int(parts[0]), int("".join(c for c in parts[1] if c.isdigit()) or 0)


def unsupported_versions(installed: dict[str, str] | None = None) -> list[str]:
    """Libraries whose installed version lies outside ``SUPPORTED``, one sentence each.

    Args:
        installed: name → version; default: the versions imported in this process.
    """
    installed = installed or {"torch": torch.__version__, "transformers": transformers.__version__}
    out = []
    for name, (low, high) in SUPPORTED.items():
        have = _minor(installed[name])
        if not _minor(low) <= have <= _minor(high):
            out.append(
                f"{name} {installed[name]} is outside the tested range {low}–{high}.x; "
                "numbers may be wrong: run the llm tests (tests/llm) on it first"
            )
    return out


def warn_if_unsupported() -> None:
    """A warning per library outside the tested range (called when the package is imported)."""
    for message in unsupported_versions():
        warnings.warn(message, RuntimeWarning, stacklevel=3)


def version_report() -> dict[str, str]:
    """Python, torch, transformers, CUDA and GPU, for result tables."""
    import platform

    cuda = torch.cuda.is_available()
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "cuda": str(torch.version.cuda) if cuda else "none",
        "gpu": torch.cuda.get_device_name(0) if cuda else "none",
    }


def _forward_parameters(model: nn.Module) -> set[str]:
    # inspect.signature follows functools.wraps (transformers' deprecate_kwarg wraps forward)
    return set(inspect.signature(model.forward).parameters)


def cache_kwargs(model: nn.Module, cache: Any) -> dict[str, Any]:
    """The keyword arguments that hand ``cache`` to this model's forward, with ``use_cache``.

    Raises:
        TypeError: the forward declares neither ``cache`` nor ``past_key_values``.
    """
    params = _forward_parameters(model)
    for name in ("cache", "past_key_values"):
        if name in params:
            return {name: cache, "use_cache": True}
    raise TypeError(
        f"{type(model).__name__}.forward takes neither `cache` nor `past_key_values`; "
        f"transformers {transformers.__version__} is not supported by llm.sampling"
    )


def last_logits_kwargs(model: nn.Module) -> dict[str, Any]:
    """The keyword that makes this model's forward project only the last position to logits
    (``logits_to_keep=1``), or nothing when its forward does not declare it.

    A prompt forward that only needs the next token's distribution otherwise computes a
    (B, T, V) logits tensor: with a 50k vocabulary and a small model, most of the forward's work.
    """
    return {"logits_to_keep": 1} if "logits_to_keep" in _forward_parameters(model) else {}


def check_cache_filled(cache: Any, expected_length: int) -> None:
    """Raise unless the forward wrote ``expected_length`` positions into the cache it was given.

    A cache keyword that the forward ignored leaves the cache empty: every later decoding step
    would then see one token and no context, and every sampled number would be wrong.
    """
    have = int(cache.get_seq_length())
    if have != expected_length:
        raise RuntimeError(
            f"the KV cache holds {have} positions after a forward over {expected_length}: the "
            f"model's forward ignored the cache (transformers {transformers.__version__}); "
            "refusing to sample with no context"
        )
