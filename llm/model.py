"""Policy and reference models: load by hub name or local folder, or build a Pythia-shaped one.

Real runs load ``EleutherAI/pythia-{1b,2.8b,6.9b}`` (or a local folder, e.g. an SFT checkpoint)
with ``from_pretrained``. Tests and benchmarks build random GPT-NeoX models of a named Pythia
shape (``PYTHIA_SHAPES``); nothing is downloaded when ``HF_HUB_OFFLINE=1``.

dtype policy (the DPO reference code's): the trained policy in float32, the frozen reference in
float16 or bfloat16 (selectable) to halve its memory. Log-probabilities are always computed in
float32 (``llm.logprobs``).
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, GPTNeoXConfig, GPTNeoXForCausalLM, PreTrainedModel

__all__ = [
    "ATTENTION",
    "DTYPES",
    "PYTHIA_SHAPES",
    "PythiaShape",
    "build_model",
    "check_shapes",
    "compile_blocks",
    "load_model",
    "load_policy_and_reference",
    "loading_report_off",
    "n_params",
    "parse_dtype",
    "progress_bars_off",
]

DTYPES: dict[str, torch.dtype] = {
    "fp32": torch.float32,
    "fp16": torch.float16,
    "bf16": torch.bfloat16,
}
"""dtype names accepted on the command line."""


@dataclass(frozen=True)
class PythiaShape:
    """The shape of a GPT-NeoX model (Biderman et al. 2023, Table 1 for the Pythia suite)."""

    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    vocab_size: int = 50304  # Pythia pads its 50,277-token vocabulary to a multiple of 128


PYTHIA_SHAPES: dict[str, PythiaShape] = {
    # "tiny" is for tests: hidden 32, 2 layers; its vocabulary is usually overridden by the data's.
    "tiny": PythiaShape(32, 2, 4, vocab_size=512),
    "14m": PythiaShape(128, 6, 4),
    "31m": PythiaShape(256, 6, 8),
    "70m": PythiaShape(512, 6, 8),
    "160m": PythiaShape(768, 12, 12),
    "410m": PythiaShape(1024, 24, 16),
    "1b": PythiaShape(2048, 16, 8),
    "1.4b": PythiaShape(2048, 24, 16),
    "2.8b": PythiaShape(2560, 32, 32),
    "6.9b": PythiaShape(4096, 32, 32),
    "12b": PythiaShape(5120, 36, 40),
}
"""Named Pythia shapes for ``build_model`` (random weights)."""


def check_shapes(sizes: Sequence[str], flag: str = "--sizes") -> None:
    """ValueError naming ``flag`` unless every size is a key of ``PYTHIA_SHAPES``."""
    unknown = [s for s in sizes if s not in PYTHIA_SHAPES]
    if unknown:
        raise ValueError(
            f"{flag} must be Pythia shapes ({', '.join(PYTHIA_SHAPES)}); got {unknown[0]!r}"
        )


def parse_dtype(name: str) -> torch.dtype:
    """The torch dtype for ``fp32``, ``fp16`` or ``bf16``; ValueError otherwise."""
    try:
        return DTYPES[name]
    except KeyError:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}; got {name!r}") from None


ATTENTION = ("sdpa", "eager", "flex_attention", "flash_attention_2")
"""Attention implementations ``build_model`` accepts (transformers' names; sdpa is its default)."""


def pythia_config(
    size: str, *, vocab_size: int | None = None, attn_implementation: str | None = None
) -> GPTNeoXConfig:
    """A GPT-NeoX config of a named Pythia shape (rotary on 25% of each head, parallel residual,
    untied input and output embeddings, no dropout, as in the Pythia checkpoints);
    ``attn_implementation`` picks the attention kernel (None: transformers' default, sdpa)."""
    if attn_implementation is not None and attn_implementation not in ATTENTION:
        raise ValueError(
            f"attn_implementation must be one of {', '.join(ATTENTION)}; "
            f"got {attn_implementation!r}"
        )
    if size not in PYTHIA_SHAPES:
        raise ValueError(f"size must be one of {', '.join(PYTHIA_SHAPES)}; got {size!r}")
    if vocab_size is not None and vocab_size < 2:
        raise ValueError(f"vocab_size must be >= 2; got {vocab_size}")
    s = PYTHIA_SHAPES[size]
    return GPTNeoXConfig(
        vocab_size=vocab_size or s.vocab_size,
        hidden_size=s.hidden_size,
        num_hidden_layers=s.num_hidden_layers,
        num_attention_heads=s.num_attention_heads,
        intermediate_size=4 * s.hidden_size,
        max_position_embeddings=2048,
        rope_parameters={
            "rope_theta": 10000.0,
            "partial_rotary_factor": 0.25,
            "rope_type": "default",
        },
        use_parallel_residual=True,
        tie_word_embeddings=False,
        attention_dropout=0.0,
        hidden_dropout=0.0,
        bos_token_id=0,
        eos_token_id=0,
        **({"attn_implementation": attn_implementation} if attn_implementation else {}),
    )


def build_model(
    size: str,
    *,
    seed: int = 0,
    vocab_size: int | None = None,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device | None = None,
    attn_implementation: str | None = None,
) -> PreTrainedModel:
    """A randomly initialised GPT-NeoX model of a named Pythia shape, in eval mode.

    Args:
        size: a key of ``PYTHIA_SHAPES`` (``tiny``, ``14m``, ``70m``, ...).
        seed: seeds the initialisation (the global torch RNG is left as it was).
        vocab_size: overrides the shape's vocabulary (e.g. the tree language's few tokens).
        dtype: parameter dtype.
        device: None builds in float32 on the CPU and then casts (the same weights on every
            machine); a device builds there directly, in ``dtype`` (fast for large shapes on a
            GPU: no float32 copy on the host; the weights then come from that device's RNG).
        attn_implementation: attention kernel (``ATTENTION``; None: transformers' default).
    """
    config = pythia_config(size, vocab_size=vocab_size, attn_implementation=attn_implementation)
    if device is None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = GPTNeoXForCausalLM(config)
        return model.to(dtype).eval()
    device = torch.device(device)
    on_gpu = [device] if device.type == "cuda" else []
    old = torch.get_default_dtype()
    with torch.random.fork_rng(devices=on_gpu), device:
        torch.manual_seed(seed)
        torch.set_default_dtype(dtype)
        try:
            model = GPTNeoXForCausalLM(config)
        finally:
            torch.set_default_dtype(old)
    return model.to(dtype).eval()


@contextmanager
def progress_bars_off() -> Iterator[None]:
    """transformers' progress bars ("Loading weights", "Writing model shards") off inside the
    block, as they were after it: per checkpoint they are noise, and they break an outer bar.
    Also a decorator (``@progress_bars_off()``), entered afresh on every call."""
    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if bars:
            hf_logging.enable_progress_bar()


@contextmanager
def loading_report_off() -> Iterator[None]:
    """transformers' warnings (its "LOAD REPORT" table of missing and unexpected weights) off
    inside the block, for a caller that checks ``output_loading_info`` itself and says in one
    line what is wrong."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)


def load_model(name_or_path: str | Path, *, dtype: torch.dtype = torch.float32) -> PreTrainedModel:
    """A causal LM from the hub (``EleutherAI/pythia-1b``) or a local folder, in eval mode.

    With ``HF_HUB_OFFLINE=1`` only the local cache and folders are read. Dropout stays off
    (eval mode) during training too, as in the DPO code for Pythia, which has no dropout.
    """
    path = Path(name_or_path)
    if str(name_or_path).startswith((".", "/")) and not path.is_dir():
        raise ValueError(f"model folder {name_or_path} does not exist")
    model = AutoModelForCausalLM.from_pretrained(str(name_or_path), dtype=dtype)
    loaded = {p.dtype for p in model.parameters()}
    if loaded != {dtype}:  # a dtype keyword that some transformers version ignores
        raise RuntimeError(
            f"{name_or_path} loaded with parameter dtypes {sorted(map(str, loaded))}, not {dtype}"
        )
    return model.eval()


def load_policy_and_reference(
    model: str,
    *,
    policy_dtype: torch.dtype = torch.float32,
    reference_dtype: torch.dtype = torch.float16,
    seed: int = 0,
    vocab_size: int | None = None,
) -> tuple[PreTrainedModel, PreTrainedModel]:
    """The policy (trainable) and a frozen copy as reference, from one source.

    Args:
        model: a Pythia shape name (random weights, ``build_model``), a hub name or a folder.
        policy_dtype: dtype of the trained policy (float32 in the paper).
        reference_dtype: dtype of the frozen reference (float16 in the DPO code; bf16 also works).
        seed: initialisation seed for a named shape.
        vocab_size: vocabulary of a named shape (ignored for loaded models).

    Returns:
        ``(policy, reference)``; the reference has ``requires_grad`` off everywhere.
    """
    if model in PYTHIA_SHAPES:
        policy = build_model(model, seed=seed, vocab_size=vocab_size, dtype=policy_dtype)
    else:
        policy = load_model(model, dtype=policy_dtype)
    reference = copy.deepcopy(policy).to(reference_dtype).eval()
    reference.requires_grad_(False)
    return policy, reference


def compile_blocks(model: torch.nn.Module, **options: object) -> torch.nn.Module:
    """``torch.compile`` each decoder block of ``model`` in place (``nn.Module.compile``: the
    module tree, parameter names and checkpoints stay as they are); ``options`` go to
    ``torch.compile`` (e.g. ``backend="eager"`` in tests). Returns ``model``."""
    kinds = set(getattr(model, "_no_split_modules", None) or ())
    blocks = [m for m in model.modules() if type(m).__name__ in kinds]
    if not blocks:
        raise ValueError(f"no decoder blocks ({kinds or 'no _no_split_modules'}) to compile")
    for block in blocks:
        block.compile(**options)
    return model


def n_params(model: torch.nn.Module, *, non_embedding: bool = False) -> int:
    """Parameter count; ``non_embedding`` leaves out the input embedding (Kaplan et al. 2020)."""
    total = sum(p.numel() for p in model.parameters())
    if non_embedding:
        total -= model.get_input_embeddings().weight.numel()
    return total
