"""The real client: TRL's DPOTrainer trains a tiny GPT-NeoX on the CPU with DiagnosticsCallback,
saving checkpoints; experiments/diagnose.py then reads its output_dir. The callback's numbers,
TRL's own logged log-probs and diagnose.py's must agree."""

from __future__ import annotations

import json

import pandas as pd
import pytest

trl = pytest.importorskip("trl", reason="TRL is the trl extra: pip install -e '.[trl]'")

from datasets import Dataset  # noqa: E402  (after the skip: datasets comes with the trl extra)

from llm.callbacks import DIAGNOSTICS_TABLE, DiagnosticsCallback  # noqa: E402
from llm.data import byte_tokenizer  # noqa: E402
from llm.model import build_model  # noqa: E402
from tests.llm.conftest import TEXT_ROWS  # noqa: E402
from tests.scripts import load_script  # noqa: E402
from treemdp.runs.cli import parse_config  # noqa: E402


@pytest.mark.slow
def test_trl_dpo_trainer_with_the_callback_then_diagnose(tmp_path):
    tok = byte_tokenizer()
    policy = build_model("tiny", seed=0, vocab_size=len(tok))
    reference = build_model("tiny", seed=0, vocab_size=len(tok))
    reference.save_pretrained(tmp_path / "ref")
    tok.save_pretrained(tmp_path / "ref")
    data = Dataset.from_list(TEXT_ROWS)
    callback = DiagnosticsCallback.from_rows(reference, TEXT_ROWS, tok, beta=0.1)
    args = trl.DPOConfig(
        output_dir=str(tmp_path / "out"), per_device_train_batch_size=4,
        per_device_eval_batch_size=8, max_steps=4, save_steps=2, eval_strategy="steps",
        eval_steps=2, logging_steps=2, learning_rate=1e-2, beta=0.1, report_to=[],
        use_cpu=True, disable_tqdm=True, save_only_model=True, seed=0,
    )  # fmt: skip
    trainer = trl.DPOTrainer(
        model=policy, ref_model=reference, args=args, train_dataset=data, eval_dataset=data,
        processing_class=tok, callbacks=[callback],
    )  # fmt: skip
    trainer.train()

    logged = pd.read_csv(tmp_path / "out" / DIAGNOSTICS_TABLE)
    assert logged["step"].tolist() == [2, 4]
    state = json.loads((tmp_path / "out" / "checkpoint-4" / "trainer_state.json").read_text())
    ours = [h for h in state["log_history"] if "diagnose/chosen_logp_change" in h]
    theirs = [h for h in state["log_history"] if "eval_logps/chosen" in h]
    assert [h["step"] for h in ours] == [2, 4] and len(theirs) == 2
    # TRL's eval log-prob of the chosen responses (mean over the 8 pairs, in one batch) is the
    # reference's plus our change: the same tokens (byte tokenizer, EOS appended) and model, up
    # to float32 rounding in TRL's differently laid-out batch (2e-3 of 42 nats measured).
    ref_chosen = callback._ref.chosen.mean().item()
    for h, t in zip(ours, theirs, strict=True):
        want = t["eval_logps/chosen"]
        assert ref_chosen + h["diagnose/chosen_logp_change"] == pytest.approx(want, rel=1e-4)
        assert h["diagnose/accuracy"] == pytest.approx(t["eval_rewards/accuracies"])

    cli = load_script("experiments/diagnose.py")
    out = tmp_path / "diag"
    argv = ["--checkpoints", str(tmp_path / "out"), "--reference", str(tmp_path / "ref"),
            "--data", str(tmp_path / "pairs.jsonl"), "--out", str(out), "--samples", "4",
            "--max-new-tokens", "4", "--no-progress"]  # fmt: skip
    (tmp_path / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in TEXT_ROWS))
    cli.main(parse_config(cli.Config, argv))
    table = pd.read_csv(out / "diagnose.csv")
    assert table["checkpoint"].tolist() == ["checkpoint-2", "checkpoint-4"]
    # diagnose.py from the saved checkpoints = the callback at the same steps, in memory
    for col in ("chosen_logp_change", "rejected_logp_change", "margin", "accuracy"):
        pd.testing.assert_series_equal(
            table[col], logged[col], check_names=False, rtol=1e-4, atol=1e-4
        )
