"""Sampling with the KV cache, the exact leaf distribution of the tree language, and the
sampled estimators against their exact values."""

from __future__ import annotations

import math

import pytest
import torch

from llm import sampling
from llm.data import _collate, byte_tokenizer
from llm.evaluate import EvalSettings, EvalTask, TreeTask, evaluate_model, sampled_vs_exact
from llm.evaluate import reference_samples as ref_samples
from llm.judges import GoldJudge
from llm.logprobs import response_logps
from llm.model import build_model
from llm.sampling import TreeDecoding, generate, tree_logprobs
from llm.tree_language import TreeLanguage
from tests.llm.helpers_llm import perturbed
from treemdp.data import normal_rewards
from treemdp.tree import Tree


def test_kv_cache_samples_score_like_a_full_forward():
    # Left-padded prompts of different lengths, EOS stopping: the log-prob accumulated during
    # cached generation equals the log-prob of the finished sequence from one plain forward.
    tok = byte_tokenizer()
    model = build_model("tiny", seed=1, vocab_size=len(tok))
    prompts = [tuple(tok(t)["input_ids"]) for t in ("hello there", "a", "abc def ghi jk")]
    out = generate(
        model, prompts, max_new_tokens=12, eos_id=0, pad_id=0,
        generator=torch.Generator().manual_seed(1), batch_size=2,
    )  # fmt: skip
    assert all(1 <= len(r) <= 12 for r in out.responses)
    b = _collate(list(zip(prompts, out.responses, strict=True)), 0)
    logp, n = response_logps(model, b.input_ids, b.attention_mask, b.response_mask)
    assert n.tolist() == [len(r) for r in out.responses]
    torch.testing.assert_close(out.logp, logp.detach(), rtol=1e-5, atol=1e-4)


def test_exact_leaf_distribution_sums_to_one_and_matches_sampling():
    tree = Tree.complete(3, 2, n_prompts=2)  # a forest: two prompts of 9 leaves each
    tok = TreeLanguage(tree).tokenizer()
    model = build_model("tiny", seed=2, vocab_size=len(tok))
    logp = tree_logprobs(model, tree)
    for k in range(2):
        assert math.isclose(float(logp[tree.leaf_prompt == k].exp().sum()), 1.0, rel_tol=1e-9)
    n = 3000
    prompts = [(1 + i % 2,) for i in range(n)]
    out = generate(
        model, prompts, max_new_tokens=5, eos_id=None, pad_id=0,
        generator=torch.Generator().manual_seed(0), batch_size=1000,
        decoding=TreeDecoding(tree),
    )  # fmt: skip
    leaf = TreeLanguage(tree).leaf_index
    idx = torch.tensor([leaf[(*p, *r)] for p, r in zip(prompts, out.responses, strict=True)])
    # the generation's own log-prob of each sample is the exact table's
    torch.testing.assert_close(out.logp.double(), logp[idx], rtol=0, atol=1e-5)
    freq = torch.bincount(idx, minlength=tree.n_responses).double() / (n / 2)
    p = logp.exp()
    z = (freq - p).abs() / (p * (1 - p) / (n / 2)).sqrt()
    assert float(z.max()) < 4.5


def test_sampled_kl_and_win_rate_lie_within_4_se_of_exact():
    tree = Tree.complete(3, 3)
    tok = TreeLanguage(tree).tokenizer()
    reference = build_model("tiny", seed=0, vocab_size=len(tok))
    policy = perturbed(reference, seed=3, scale=0.3)
    rewards = normal_rewards(tree, torch.Generator().manual_seed(0))
    chosen, rejected = torch.tensor([0, 5]), torch.tensor([1, 7])
    tt = TreeTask(tree, rewards, chosen, rejected)
    examples, _ = TreeLanguage(tree).examples(chosen, rejected)
    task = EvalTask([(1,)] * 256, examples, tok, None, 0, "dpo", 0.1, tree=tt)
    settings = EvalSettings(samples=256, seed=5)
    ref = ref_samples(reference, task, settings)
    row = evaluate_model(policy, reference, ref, task, settings, GoldJudge(tree, rewards), step=1)
    assert row["exact_kl_reverse"] > 0.05  # the check is not vacuous
    for sampled, exact in [
        ("kl_reverse", "exact_kl_reverse"),
        ("kl_forward", "exact_kl_forward"),
        ("win_rate", "exact_win_rate"),
        ("ood_fraction", "exact_mass_ood"),
    ]:
        assert abs(row[sampled] - row[exact]) <= 4 * row[f"{sampled}_se"], sampled
    assert row["sampled_exact_flag"] == "" and row["sampled_exact_z"] <= 4
    # the exact spread of the estimator: its SE at 256 samples is what the samples say, roughly
    assert row["exact_kl_reverse_sd"] / 16 == pytest.approx(row["kl_reverse_se"], rel=0.3)
    assert row["length_mean"] == 3 and math.isnan(row["logratio_length_r2"])  # one length
    # the reference against itself: no KL, accuracy 0 and loss log 2 on the pairs
    same = evaluate_model(reference, reference, ref, task, settings, None, step=0)
    assert same["kl_reverse"] == same["kl_forward"] == 0.0
    assert same["reward_accuracy"] == 0.0 and math.isclose(same["loss"], math.log(2), rel_tol=1e-6)


def test_sampled_vs_exact_flags_estimates_beyond_5_se():
    tree = Tree.complete(2, 2, n_prompts=2)
    z = torch.zeros(tree.n_responses, dtype=torch.float64)
    task = EvalTask(
        [(1,), (2,)] * 4, [], None, None, 0, "dpo", 0.1, tree=TreeTask(tree, z, [0], [1])
    )
    row = {
        "n_samples": 10_000,
        "kl_reverse": 1.0, "kl_reverse_se": 0.1, "exact_kl_reverse": 1.45,  # 4.5 SE: fine
        "kl_forward": 0.5, "kl_forward_se": 0.0, "exact_kl_forward": 0.5,  # exact, SE 0: fine
        "ood_fraction": 0.9, "ood_fraction_se": 0.01, "exact_mass_ood": 0.2,  # 70 SE: flagged
        "win_rate": 0.2, "win_rate_se": 0.01, "exact_win_rate": 0.8,  # 60 SE, if compared
    }  # fmt: skip
    out = sampled_vs_exact(row, task, with_win_rate=False)
    assert out["sampled_exact_flag"] == "ood_fraction"
    assert out["sampled_exact_z"] == pytest.approx(70)
    both = sampled_vs_exact(row, task, with_win_rate=True)
    assert both["sampled_exact_flag"] == "ood_fraction,win_rate"
    # SE 0 and a real gap: off; NaN estimate: off
    row.update(kl_forward=0.6, kl_reverse=math.nan)
    out = sampled_vs_exact(row, task, with_win_rate=False)
    assert out["sampled_exact_flag"] == "kl_reverse,kl_forward,ood_fraction"
    # 16 samples all in distribution (sample SE 0) where the exact OOD mass is 0.03: likely
    # (0.97^16 = 0.61), so not flagged; 0.5 exact OOD mass: binomial SE 0.125, 4 SE: not flagged
    # either; with 400 samples the same gap is 20 SE
    row.update(kl_forward=0.5, kl_reverse=1.0, ood_fraction=0.0, ood_fraction_se=0.0)
    for n, exact, flag in [(16, 0.03, ""), (16, 0.5, ""), (400, 0.5, "ood_fraction")]:
        row.update(n_samples=n, exact_mass_ood=exact)
        assert sampled_vs_exact(row, task, with_win_rate=False)["sampled_exact_flag"] == flag
    # a policy with nearly all mass on one response: 64 samples of it (SE 0) estimate its log
    # ratio, 1e-3 from the exact KL; the exact SD (0.05) says that is 0.16 SE, not a miss
    row.update(n_samples=64, exact_mass_ood=0.0, kl_forward=0.5, exact_kl_forward=0.5)
    row.update(kl_reverse=3.0, kl_reverse_se=0.0, exact_kl_reverse=3.001)
    assert sampled_vs_exact(row, task, with_win_rate=False)["sampled_exact_flag"] == "kl_reverse"
    row["exact_kl_reverse_sd"] = 0.05
    out = sampled_vs_exact(row, task, with_win_rate=False)
    assert out["sampled_exact_flag"] == "" and out["sampled_exact_z"] == pytest.approx(0.16)
    # prompts that weight the roots unequally estimate another average: not compared
    skewed = EvalTask([(1,), (1,), (2,)], [], None, None, 0, "dpo", 0.1, tree=task.tree)
    out = sampled_vs_exact(row, skewed, with_win_rate=True)
    assert out["sampled_exact_flag"] == "" and math.isnan(out["sampled_exact_z"])


def _plain_sampler(model, prompts, *, max_new_tokens, eos_id, generator):
    """Oracle: sample one batch of equal-length prompts with a full forward per token, no cache
    (what SFT sampling was before it went through ``generate``)."""
    ids = torch.tensor(prompts)
    new = []
    for _ in range(max_new_tokens):
        logits = model(input_ids=ids).logits[:, -1].float()
        tok = torch.multinomial(torch.softmax(logits, -1), 1, generator=generator)[:, 0]
        new.append(tok)
        ids = torch.cat([ids, tok[:, None]], dim=1)
        if eos_id is not None and bool(torch.stack(new, 1).eq(eos_id).any(1).all()):
            break
    rows = torch.stack(new, dim=1).tolist()
    return [tuple(r[: r.index(eos_id) + 1] if eos_id in r else r) for r in rows]


@pytest.mark.parametrize("with_eos", [True, False])
def test_sft_samples_are_the_plain_samplers_draws_grouped_by_prompt_length(with_eos):
    # Prompts of one length are sampled together, in batches, one generator throughout: the very
    # draws of a cache-less sampler over the same groups (the data SFT runs were trained on).
    from llm.data import Example
    from llm.sampling import sample_sft_examples

    tok = byte_tokenizer()
    model = build_model("tiny", seed=1, vocab_size=len(tok))
    texts = ["hello there", "a", "abc def ghi jk", "xy", "hello you!", "b", "q", "zz top"] * 3
    examples = [Example(tuple(tok(t)["input_ids"]), (5,), (6,), i + 1) for i, t in enumerate(texts)]
    settings = dict(max_new_tokens=8, seed=3, batch_size=4)
    eos_id = None
    if with_eos:  # a token the first sample draws third, so EOS truncation is not vacuous
        no_eos = sample_sft_examples(model, examples, eos_id=None, pad_id=0, **settings)
        eos_id = no_eos[0].chosen[2]
    out = sample_sft_examples(model, examples, eos_id=eos_id, pad_id=0, **settings)
    gen = torch.Generator().manual_seed(3)
    expected = {}
    for n in dict.fromkeys(len(e.prompt) for e in examples):
        group = [i for i, e in enumerate(examples) if len(e.prompt) == n]
        for s in range(0, len(group), 4):
            part = group[s : s + 4]
            draws = _plain_sampler(
                model, [examples[i].prompt for i in part], max_new_tokens=8, eos_id=eos_id,
                generator=gen,
            )  # fmt: skip
            expected.update(zip(part, draws, strict=True))
    assert [e.chosen for e in out] == [expected[i] for i in range(len(examples))]
    assert [(e.prompt, e.rejected, e.row) for e in out] == [
        (e.prompt, e.rejected, e.row) for e in examples
    ]
    assert len(out[0].chosen) == (3 if with_eos else 8)


def test_fast_draws_are_torch_multinomials_and_fall_back_when_they_differ(monkeypatch):
    """``_multinomial`` draws the very tokens of torch.multinomial from the same generator, and
    leaves it in the same state; where its exponentials differ from torch's (a stand-in for
    another torch version), it says so on the first draw and uses torch.multinomial."""
    monkeypatch.setattr(sampling, "_FAST_DRAW", {})
    gen = torch.Generator().manual_seed(0)
    probs = torch.softmax(3 * torch.randn(6, 2000, generator=gen, dtype=torch.float32), -1)
    probs[0] = 0.0
    probs[0, 7] = 1.0  # a certain row
    mine, theirs = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    for _ in range(4):
        got = sampling._multinomial(probs, mine)
        want = torch.multinomial(probs, 1, generator=theirs)[:, 0]
        assert torch.equal(got, want) and int(got[0]) == 7
    assert torch.equal(mine.get_state(), theirs.get_state())
    assert list(sampling._FAST_DRAW.items()) == [(((6, 2000), torch.float32, "cpu", "cpu"), True)]

    monkeypatch.setattr(sampling, "_FAST_DRAW", {})
    monkeypatch.setattr(sampling, "_exponential", lambda like, g: torch.ones_like(like))
    mine, theirs = torch.Generator().manual_seed(2), torch.Generator().manual_seed(2)
    for _ in range(3):
        got = sampling._multinomial(probs, mine)
        assert torch.equal(got, torch.multinomial(probs, 1, generator=theirs)[:, 0])
    assert list(sampling._FAST_DRAW.values()) == [False]
    with pytest.raises(RuntimeError, match="probability tensor"):
        sampling._multinomial(torch.full((2, 3), float("nan"), dtype=torch.float32), mine)
