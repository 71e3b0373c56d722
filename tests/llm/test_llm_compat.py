"""The version range and the run-time checks that keep a version difference from writing wrong
numbers: the KV-cache keyword, the filled-cache check, and generate's self-check."""

from __future__ import annotations

import functools
import inspect
import re
import tomllib
from pathlib import Path

import pytest
import torch
from transformers import GPTNeoXForCausalLM

from llm.compat import (
    SUPPORTED,
    cache_kwargs,
    check_cache_filled,
    last_logits_kwargs,
    unsupported_versions,
)
from llm.data import byte_tokenizer
from llm.model import pythia_config
from llm.sampling import SamplingCheckError, TreeDecoding, generate
from llm.tree_language import TreeLanguage
from treemdp.tree import Tree

ROOT = Path(__file__).resolve().parents[2]


class IgnoresCache(GPTNeoXForCausalLM):
    """transformers 5.17 handed ``cache=``: the keyword is accepted and silently dropped."""

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, cache=None, **kw):
        kw.pop("past_key_values", None)
        kw["use_cache"] = False
        return super().forward(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, **kw
        )


class NoisyDecoding(GPTNeoXForCausalLM):
    """Fills the cache, but its one-token decoding steps compute other logits than the model."""

    @functools.wraps(GPTNeoXForCausalLM.forward)  # the signature of the real forward
    def forward(self, *args, **kw):
        out = super().forward(*args, **kw)
        if kw["input_ids"].shape[1] == 1:
            out.logits = out.logits + 5.0 * torch.randn_like(out.logits)
        return out


class _AllLogitsCache(GPTNeoXForCausalLM):
    def forward(self, input_ids=None, attention_mask=None, position_ids=None, cache=None, **kw):
        return super().forward(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
            cache=cache, use_cache=kw.get("use_cache"),
        )  # fmt: skip


class _AllLogitsPast(GPTNeoXForCausalLM):
    def forward(
        self, input_ids=None, attention_mask=None, position_ids=None, past_key_values=None, **kw
    ):
        return super().forward(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
            past_key_values=past_key_values, use_cache=kw.get("use_cache"),
        )  # fmt: skip


# A forward that does not declare ``logits_to_keep`` (every position's logits), taking the cache
# under the installed transformers' own name (``cache`` from 5.2x, ``past_key_values`` before)
AllLogits = (
    _AllLogitsCache
    if "cache" in inspect.signature(GPTNeoXForCausalLM.forward).parameters
    else _AllLogitsPast
)


def _tiny(cls, vocab_size: int):
    torch.manual_seed(0)
    return cls(pythia_config("tiny", vocab_size=vocab_size)).eval()


def _prompts(tok):
    return [tuple(tok(t)["input_ids"]) for t in ("hello there", "a", "abc def")]


def test_a_forward_that_ignores_the_cache_keyword_is_refused():
    # the old bug: sampling went on with no context and wrote garbage; now it stops at once
    tok = byte_tokenizer()
    model = _tiny(IgnoresCache, len(tok))
    with pytest.raises(RuntimeError, match="ignored the cache"):
        generate(
            model, _prompts(tok), max_new_tokens=4, eos_id=None, pad_id=0,
            generator=torch.Generator().manual_seed(0),
        )  # fmt: skip


def test_generate_recomputes_its_first_batch_and_refuses_a_disagreement():
    tok = byte_tokenizer()
    model = _tiny(NoisyDecoding, len(tok))
    kwargs = dict(max_new_tokens=6, eos_id=None, pad_id=0, generator=torch.Generator())
    with pytest.raises(SamplingCheckError, match="plain forward"):
        generate(model, _prompts(tok), **kwargs)
    # without the self-check the same call returns (wrong) numbers: the check is what stops it
    assert len(generate(model, _prompts(tok), self_check=False, **kwargs).responses) == 3


def test_self_check_passes_on_the_tree_with_decoding_constraints():
    tree = Tree.complete(3, 3, n_prompts=2)
    model = _tiny(GPTNeoXForCausalLM, len(TreeLanguage(tree).tokenizer()))
    out = generate(
        model, [(1,), (2,), (1,)], max_new_tokens=3, eos_id=None, pad_id=0,
        generator=torch.Generator().manual_seed(0), decoding=TreeDecoding(tree),
    )  # fmt: skip
    assert [len(r) for r in out.responses] == [3, 3, 3]


def test_cache_keyword_follows_the_forward_signature():
    class New(torch.nn.Module):
        def forward(self, input_ids, cache=None, use_cache=None): ...

    class Old(torch.nn.Module):
        def forward(self, input_ids, past_key_values=None, use_cache=None): ...

    class Neither(torch.nn.Module):
        def forward(self, input_ids, **kwargs): ...

    assert cache_kwargs(New(), "c") == {"cache": "c", "use_cache": True}
    assert cache_kwargs(Old(), "c") == {"past_key_values": "c", "use_cache": True}
    with pytest.raises(TypeError, match="neither"):
        cache_kwargs(Neither(), "c")
    model = _tiny(GPTNeoXForCausalLM, 16)  # the installed transformers: one of the two names
    assert set(cache_kwargs(model, None)) & {"cache", "past_key_values"}


def test_the_prompt_forward_projects_the_last_position_only():
    """The prompt forward asks for the last position's logits only (``logits_to_keep=1``): with
    a 50k vocabulary the (B, T, V) logits were most of a small model's sampling work. A forward
    without the keyword gets every position's logits, and the samples are the same."""
    tok = byte_tokenizer()
    kwargs = dict(max_new_tokens=5, eos_id=None, pad_id=0, self_check=False)
    runs = []
    for cls in (GPTNeoXForCausalLM, AllLogits):
        model = _tiny(cls, len(tok))
        seen: list[int] = []
        hook = model.get_output_embeddings().register_forward_hook(
            lambda module, args, out, seen=seen: seen.append(args[0].shape[1])
        )
        out = generate(model, _prompts(tok), generator=torch.Generator().manual_seed(3), **kwargs)
        hook.remove()
        runs.append((seen, out))
    (kept, fast), (every, slow) = runs
    assert kept == [1] * 5 and every[0] == max(len(p) for p in _prompts(tok)) > 1
    assert fast.responses == slow.responses
    torch.testing.assert_close(fast.logp, slow.logp, atol=1e-5, rtol=0)
    assert last_logits_kwargs(_tiny(GPTNeoXForCausalLM, 16)) == {"logits_to_keep": 1}
    assert last_logits_kwargs(_tiny(AllLogits, 16)) == {}


def test_check_cache_filled_names_the_lengths():
    class Cache:
        def get_seq_length(self):
            return 0

    check_cache_filled(type("Full", (), {"get_seq_length": lambda self: 7})(), 7)
    with pytest.raises(RuntimeError, match="holds 0 positions after a forward over 7"):
        check_cache_filled(Cache(), 7)


def test_supported_range_is_what_pyproject_declares_and_the_constraints_pin():
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = deps["dependencies"] + deps["optional-dependencies"]["llm"]
    pins = {}
    for name in ("constraints.txt", "constraints-lowest.txt"):
        text = (ROOT / name).read_text()
        pins[name] = dict(re.findall(r"^([\w-]+)==([\w.+]+)$", text, re.MULTILINE))
    for lib, (low, high) in SUPPORTED.items():
        (high_minor,) = [int(x) for x in high.split(".")[1:]]
        assert f"{lib}>={low},<{high.split('.')[0]}.{high_minor + 1}" in declared, lib
        assert pins["constraints-lowest.txt"][lib].startswith(low + "."), lib
        assert pins["constraints.txt"][lib].startswith(high + "."), lib


def test_unsupported_versions_are_named():
    ok = {"torch": "2.11.0+cu130", "transformers": "5.24.0"}
    assert unsupported_versions(ok) == []
    bad = unsupported_versions({"torch": "2.10.1", "transformers": "5.25.0.dev0"})
    assert len(bad) == 2 and "torch 2.10.1" in bad[0] and "transformers 5.25.0.dev0" in bad[1]
