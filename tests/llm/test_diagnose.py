"""experiments/diagnose.py and llm.diagnose: CHES against its definition, the KL estimators, a
checkpoint against itself (exactly zero), the log-prob changes against a direct computation,
TRL's data formats, and bad inputs in one line."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest
import torch

from llm.data import TruncationConfig, byte_tokenizer, tokenize_rows
from llm.diagnose import ches, ches_scores, kl_estimates, pair_logps
from llm.evaluate import sequence_logps
from llm.hf_folders import read_preference_rows, to_text_rows
from llm.model import build_model
from tests.llm.conftest import TEXT_ROWS
from tests.llm.helpers_llm import perturbed
from tests.llm.test_llm_eval import one_line_exit_2
from tests.scripts import load_script
from treemdp.runs.cli import parse_config

FAST = ["--samples", "6", "--max-new-tokens", "6", "--no-progress"]


@pytest.fixture(scope="module")
def cli():
    return load_script("experiments/diagnose.py")


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """A reference folder, a run folder of two checkpoints (checkpoint-5 a little, checkpoint-10
    more perturbed), and the pairs as JSONL."""
    root = tmp_path_factory.mktemp("diag")
    tok = byte_tokenizer()
    ref = build_model("tiny", seed=0, vocab_size=len(tok))
    ref.save_pretrained(root / "ref")
    tok.save_pretrained(root / "ref")
    for step, scale in ((10, 0.2), (5, 0.05)):
        perturbed(ref, seed=step, scale=scale).save_pretrained(root / "run" / f"checkpoint-{step}")
        tok.save_pretrained(root / "run" / f"checkpoint-{step}")
    data = root / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in TEXT_ROWS))
    return root


def test_ches_hand_computed_values():
    # h+ = (1, 0), h- = (0, 2), |y+| = 1, |y-| = 2: <h+, h-> = 0, ||h+||² = 1, so CHES = -1 and
    # normalised 0/(1·2) - 1/1 = -1. h+ = (2, 0), h- = (1, 1), |y+| = 2, |y-| = 1: <h+, h-> = 2,
    # ||h+||² = 4: CHES = -2, normalised 2/(2·1) - 4/2² = 0.
    hc = torch.tensor([[1.0, 0.0], [2.0, 0.0]], dtype=torch.float64)
    hr = torch.tensor([[0.0, 2.0], [1.0, 1.0]], dtype=torch.float64)
    c, cn = ches(hc, hr, torch.tensor([1, 2]), torch.tensor([2, 1]))
    assert c.tolist() == [-1.0, -2.0] and cn.tolist() == [-1.0, 0.0]
    # metamorphic: identical responses have CHES 0 (the chosen response is not displaced)
    assert ches(hc, hc, torch.tensor([1, 2]), torch.tensor([1, 2]))[0].tolist() == [0.0, 0.0]


def test_ches_scores_equal_the_definition_pair_by_pair(tiny_model, text_examples, tokenizer):
    """Batched and padded, CHES equals its definition computed on each unpadded sequence: the
    final hidden states at the positions that predict each response token, summed."""
    got, got_n = ches_scores(tiny_model, text_examples, pad_id=tokenizer.pad_token_id, batch_size=3)
    for i, e in enumerate(text_examples):
        sums = []
        for y in (e.chosen, e.rejected):
            ids = torch.tensor([[*e.prompt, *y]])
            with torch.no_grad():
                h = tiny_model.base_model(input_ids=ids).last_hidden_state[0].double()
            sums.append(h[len(e.prompt) - 1 : len(e.prompt) + len(y) - 1].sum(0))
        hp, hm = sums
        want = hp @ hm - hp @ hp
        want_n = hp @ hm / (len(e.chosen) * len(e.rejected)) - hp @ hp / len(e.chosen) ** 2
        torch.testing.assert_close(got[i], want, rtol=1e-5, atol=1e-4)
        torch.testing.assert_close(got_n[i], want_n, rtol=1e-5, atol=1e-5)


def test_kl_estimators_hand_computed_and_zero_on_equal_models():
    # log r = log π_ref - log π = (0, ln 2): k1 = (0, -ln 2); k3 = r - 1 - log r = (0, 1 - ln 2)
    lp = torch.tensor([-1.0, -2.0], dtype=torch.float64)
    lr = lp + torch.tensor([0.0, math.log(2)], dtype=torch.float64)
    kl = kl_estimates(lp, lr)
    assert kl["kl_k1"] == pytest.approx(-math.log(2) / 2)
    assert kl["kl_k3"] == pytest.approx((1 - math.log(2)) / 2)
    same = kl_estimates(lp, lp)
    assert same["kl_k1"] == same["kl_k3"] == same["kl_k1_se"] == same["kl_k3_se"] == 0


def test_a_checkpoint_against_itself_gives_exactly_zero(folders, cli, tmp_path, capsys):
    out = tmp_path / "self"
    argv = ["--checkpoints", str(folders / "ref"), "--reference", str(folders / "ref"),
            "--data", str(folders / "pairs.jsonl"), "--out", str(out), *FAST]  # fmt: skip
    cli.main(parse_config(cli.Config, argv))
    row = pd.read_csv(out / "diagnose.csv").iloc[0]
    for col in ("chosen_logp_change", "rejected_logp_change", "both_fall_share", "margin"):
        assert row[col] == 0, col
    # the KL interval is [0, 0]: every sample's log-ratio is exactly 0
    assert row["kl_k1"] == row["kl_k1_se"] == row["kl_k3"] == row["kl_k3_se"] == 0
    assert row["ood_proxy"] == row["ood_proxy_reference"] and row["n_pairs"] == len(TEXT_ROWS)
    pairs = pd.read_csv(out / "pairs.csv")
    assert len(pairs) == len(TEXT_ROWS) and (pairs["chosen_logp_change"] == 0).all()
    assert {"ches", "ches_normalised", "rejected_logp_change"} <= set(pairs.columns)
    assert (out / "diagnose.png").stat().st_size > 0
    assert "no displacement" in (out / "verdict.txt").read_text()
    assert "done: 1 checkpoints diagnosed" in capsys.readouterr().out


def test_changes_equal_a_direct_computation_and_checkpoints_come_by_step(folders, cli, tmp_path):
    """A Trainer's output_dir stands for its checkpoint-N folders, by step; each row's changes
    are the mean over pairs of Σ log π − Σ log π_ref computed directly, one pair at a time."""
    from llm.model import load_model

    out = tmp_path / "run"
    argv = ["--checkpoints", str(folders / "run"), "--reference", str(folders / "ref"),
            "--data", str(folders / "pairs.jsonl"), "--out", str(out), *FAST]  # fmt: skip
    cli.main(parse_config(cli.Config, argv))
    table = pd.read_csv(out / "diagnose.csv")
    assert table["checkpoint"].tolist() == ["checkpoint-5", "checkpoint-10"]
    assert table["step"].tolist() == [5, 10]
    tok = byte_tokenizer()
    examples, _ = tokenize_rows(enumerate(TEXT_ROWS, 1), tok, TruncationConfig())
    prompts = [e.prompt for e in examples]
    ref = load_model(folders / "ref")
    pol = load_model(folders / "run" / "checkpoint-10")

    def logp(m, ys):
        return sequence_logps(m, prompts, ys, pad_id=tok.pad_token_id, batch_size=1)

    chosen = [e.chosen for e in examples]
    want = float((logp(pol, chosen) - logp(ref, chosen)).mean())
    assert table.loc[1, "chosen_logp_change"] == pytest.approx(want, rel=1e-4, abs=1e-4)
    assert table.loc[1, "kl_k1"] > 0 and table.loc[1, "kl_k3"] > 0
    lp = pair_logps(pol, examples, pad_id=tok.pad_token_id)
    assert lp.chosen.dtype == torch.float64 and lp.len_chosen.tolist() == [len(c) for c in chosen]


def test_checkpoints_in_two_threads_give_the_serial_numbers(folders, cli, tmp_path):
    """--jobs 2 diagnoses the two checkpoints at once (threads of one intra-op thread each) and
    writes exactly what --jobs 1 writes, rows in checkpoint order."""
    tables = []
    for jobs in (1, 2):
        out = tmp_path / f"jobs{jobs}"
        argv = ["--checkpoints", str(folders / "run"), "--reference", str(folders / "ref"),
                "--data", str(folders / "pairs.jsonl"), "--out", str(out), "--jobs", str(jobs),
                *FAST]  # fmt: skip
        cli.main(parse_config(cli.Config, argv))
        tables.append([pd.read_csv(out / name) for name in ("diagnose.csv", "pairs.csv")])
    for serial, threaded in zip(*tables, strict=True):
        pd.testing.assert_frame_equal(serial, threaded, check_exact=True)
    assert tables[1][0]["checkpoint"].tolist() == ["checkpoint-5", "checkpoint-10"]


def test_datasets_folder_and_conversational_rows(tmp_path):
    datasets = pytest.importorskip("datasets", reason="the trl extra is not installed")
    tok = byte_tokenizer()
    tok.chat_template = (
        "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}<assistant>{% endif %}"
    )
    chat = [{"prompt": [{"role": "user", "content": "hi"}],
             "chosen": [{"role": "assistant", "content": "hello"}],
             "rejected": [{"role": "assistant", "content": "go"}]}]  # fmt: skip
    implicit = [{"chosen": chat[0]["prompt"] + chat[0]["chosen"],
                 "rejected": chat[0]["prompt"] + chat[0]["rejected"]}]  # fmt: skip
    want = [(1, {"prompt": "<user>hi\n<assistant>", "chosen": "hello\n", "rejected": "go\n"})]
    for rows in (chat, implicit):
        datasets.Dataset.from_list(rows).save_to_disk(tmp_path / "ds")
        got = to_text_rows(read_preference_rows(tmp_path / "ds"), tok)
        assert got == want
        datasets.DatasetDict({"train": datasets.Dataset.from_list(rows)}).save_to_disk(
            tmp_path / "dd"
        )
        assert to_text_rows(read_preference_rows(tmp_path / "dd"), tok) == want
        import shutil

        shutil.rmtree(tmp_path / "ds")
        shutil.rmtree(tmp_path / "dd")
    with pytest.raises(ValueError, match="chat template"):
        to_text_rows([(1, chat[0])], byte_tokenizer())


def test_bad_inputs_exit_2_with_one_line(folders, cli, tmp_path, capsys):
    c, m = cli.Config, cli.main
    base = ["--reference", str(folders / "ref"), "--data", str(folders / "pairs.jsonl"),
            "--out", str(tmp_path / "o"), *FAST]  # fmt: skip
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "config.json").write_text("{}")
    err = one_line_exit_2(c, m, ["--checkpoints", str(empty), *base], capsys)
    assert "no model weights" in err, err
    assert "--checkpoints is required" in one_line_exit_2(c, m, base, capsys)
    # a checkpoint whose tokenizer differs from the reference's
    other = tmp_path / "other"
    tok = byte_tokenizer()
    tok.add_tokens(["<new>"])
    build_model("tiny", seed=0, vocab_size=len(tok)).save_pretrained(other)
    tok.save_pretrained(other)
    capsys.readouterr()  # save_pretrained's progress bar
    err = one_line_exit_2(c, m, ["--checkpoints", str(other), *base], capsys)
    assert "tokenizer differs" in err, err
    # a row missing a column
    bad = tmp_path / "bad.jsonl"
    bad.write_text(
        '{"prompt": "a", "chosen": " b", "rejected": " c"}\n{"prompt": "a", "chosen": " b"}\n'
    )
    argv = ["--checkpoints", str(folders / "ref"), *base, "--data", str(bad)]
    err = one_line_exit_2(c, m, argv, capsys)
    assert "row 2 lacks rejected" in err, err
    # a reward model without a score head (a causal LM's folder)
    argv = ["--checkpoints", str(folders / "ref"), *base, "--judge", "reward-model",
            "--reward-model", str(folders / "ref")]  # fmt: skip
    err = one_line_exit_2(c, m, argv, capsys)
    assert "score.weight" in err, err


def _judged_table(win_rates, se):
    n = len(win_rates)
    return pd.DataFrame({
        "checkpoint": [f"checkpoint-{10 * (i + 1)}" for i in range(n)],
        "step": [10 * (i + 1) for i in range(n)], "n_pairs": 8, "n_samples": 64,
        "chosen_logp_change": 1.0, "rejected_logp_change": -1.0, "chosen_falls_share": 0.0,
        "both_fall_share": 0.0, "margin": 0.2, "accuracy": 1.0, "ches_rank_corr": math.nan,
        "ches_normalised_rank_corr": math.nan, "kl_k1": math.nan,
        "win_rate": win_rates, "win_rate_se": se,
    })  # fmt: skip


def test_the_verdict_names_the_checkpoint_to_keep(cli):
    fell = cli.verdict(_judged_table([0.6, 0.7, 0.55], 0.02))
    assert "keep checkpoint-20 (step 20)" in fell and "OVER-OPTIMIZATION" in fell
    noisy = cli.verdict(_judged_table([0.6, 0.7, 0.55], 0.1))
    assert "keep checkpoint-20" in noisy and "judge more samples" in noisy
    assert "OVER-OPTIMIZATION" not in noisy
    rising = cli.verdict(_judged_table([0.6, 0.7, 0.75], 0.02))
    assert "the last checkpoint has the best judged win rate" in rising
    unjudged = cli.verdict(_judged_table([math.nan] * 3, math.nan))
    assert "no judge" in unjudged and "keep" in unjudged
