"""The demo of docs/diagnose.md: TRL's DPOTrainer trains a tiny random GPT-NeoX on the CPU with
llm.callbacks.DiagnosticsCallback, saving checkpoints; then diagnose.py reads them.

    python scripts/trl_diagnose_demo.py OUT      # needs the trl extra; about a minute on 2 cores
    python experiments/diagnose.py --checkpoints OUT/trl --reference OUT/ref \\
        --data OUT/pairs.jsonl --out OUT/diagnose

The data: 64 pairs of short texts, chosen = a word list, rejected = the same words reversed and
shouted (a preference the tiny model can learn and over-learn in 5 epochs at lr 1e-2).
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

import torch
import trl
from datasets import Dataset

from llm.callbacks import DiagnosticsCallback
from llm.data import byte_tokenizer
from llm.model import build_model, progress_bars_off


def rows(n: int, seed: int = 0) -> list[dict[str, str]]:
    rng = random.Random(seed)
    words = ["cat", "dog", "sun", "rain", "tree", "sea", "red", "blue", "fast", "slow"]
    out = []
    for _ in range(n):
        w = rng.sample(words, 3)
        out.append({"prompt": f"List: {' '.join(w)}\nAnswer:", "chosen": " " + " ".join(w),
                    "rejected": " " + " ".join(reversed(w)).upper()})  # fmt: skip
    return out


def main(out: Path) -> None:
    torch.manual_seed(0)
    tok = byte_tokenizer()
    policy = build_model("tiny", seed=0, vocab_size=len(tok))
    reference = build_model("tiny", seed=0, vocab_size=len(tok))
    with progress_bars_off():
        reference.save_pretrained(out / "ref")
        tok.save_pretrained(out / "ref")
    data = rows(64)
    (out / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in data))
    args = trl.DPOConfig(
        output_dir=str(out / "trl"), per_device_train_batch_size=8, per_device_eval_batch_size=16,
        num_train_epochs=5, save_steps=10, eval_strategy="steps", eval_steps=10, logging_steps=10,
        learning_rate=1e-2, beta=0.1, report_to=[], use_cpu=True, disable_tqdm=True,
        save_only_model=True, seed=0,
    )  # fmt: skip
    callback = DiagnosticsCallback.from_rows(reference, data[:32], tok, beta=0.1)
    trainer = trl.DPOTrainer(
        model=policy, ref_model=reference, args=args, train_dataset=Dataset.from_list(data),
        eval_dataset=Dataset.from_list(data[:32]), processing_class=tok, callbacks=[callback],
    )  # fmt: skip
    trainer.train()
    print(f"done: checkpoints in {out / 'trl'}, the callback's table in "
          f"{out / 'trl' / 'diagnostics.csv'}")  # fmt: skip


if __name__ == "__main__":
    main(Path(sys.argv[1]))
