"""llm: the treemdp objectives on GPT-NeoX / Pythia language models through transformers.

Modules:
    compat     the supported torch/transformers range; the one place that bridges their APIs
    model      load or build policy and reference models (dtype policy, Pythia-shaped configs)
    logprobs   response-token log-probabilities through one concatenated forward
    data       preference data (TL;DR via ``datasets``, local JSONL), truncation, bad-row handling,
               padding into batches
    tree_language  a treemdp problem as token sequences (one token per action)
    train      SFT and DAA training loops (gradient accumulation, torch.distributed, checkpoints)
    checkpoint atomic checkpoints and resume
    sampling   batched sampling with the KV cache; the tree language decoded on the tree, exactly
    judges     gold, reward-model and API (OpenAI-compatible) judges behind one interface
    evaluate   one model against the reference: KL, lengths, held-out accuracy/loss, win rate
    eval_run   every checkpoint of a run → eval.csv, resumable
    confirm    the toy-vs-LLM bridge's runs: SFT on π_ref's samples, a DAA run scored exactly
    confirm_report  what the confirm grid (``experiments/confirm_grid.py``) prints from its tables

The package never imports ``experiments``; ``experiments/llm_train.py``, ``llm_eval.py`` and
``llm_confirm.py`` are its command lines.
"""

from llm.compat import warn_if_unsupported

warn_if_unsupported()
