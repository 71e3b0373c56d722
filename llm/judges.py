"""Judges: does a policy response beat a baseline response for the same prompt?

One interface (``Judge.judge(comparisons) -> Verdicts``), three judges:

* ``GoldJudge``: the tree language's exact gold reward (a treemdp problem's ``rewards``); a tie
  scores ½.
* ``RewardModelJudge``: any transformers sequence-classification reward model (hub name or
  folder); the response with the higher scalar score (logit 0) of prompt + response wins.
* ``ApiJudge``: a pairwise LLM judge over an OpenAI-compatible ``/chat/completions`` endpoint, with
  the TL;DR prompt of Rafailov et al. (2023, App. C.2; ``TLDR_TEMPLATE``) by default. Which
  response is shown as "A" is randomised per comparison (seeded), the last ``Preferred:`` line is
  parsed, failed requests are retried with exponential backoff, at most ``concurrency`` requests
  are in flight, and every answer is appended to a JSONL cache keyed by the exact request, so a
  rerun sends nothing. Ties ("Preferred: tie") score ½; unparsable answers and requests that
  still fail after the retries are NaN, counted and left out of the win rate.

A score is 1 when the policy response wins, 0 when the baseline wins, ½ for a tie.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import re
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import torch
from torch import Tensor

from llm.model import loading_report_off, progress_bars_off
from llm.tree_language import TreeLanguage
from treemdp.tree import Tree

__all__ = [
    "TLDR_TEMPLATE",
    "ApiJudge",
    "Comparison",
    "GoldJudge",
    "Judge",
    "RewardModelJudge",
    "Verdicts",
    "check_score_head",
    "parse_preferred",
]

TLDR_TEMPLATE = """Which of the following summaries does a better job of summarizing the most \
important points in the given forum post, without including unimportant or irrelevant details? \
A good summary is both precise and concise.

Post:
{post}

Summary A:
{summary_a}

Summary B:
{summary_b}

FIRST provide a one-sentence comparison of the two summaries, explaining which you prefer and \
why. SECOND, on a new line, state only "A" or "B" to indicate your choice. Your response should \
use the format:
Comparison: <one-sentence comparison and explanation>
Preferred: <"A" or "B">"""
"""The GPT-4 TL;DR judge prompt of the DPO paper (Rafailov et al. 2023, Appendix C.2), the closest
published prompt to the one the over-optimization paper used (PAPER.md §3)."""

PLACEHOLDERS = ("{post}", "{summary_a}", "{summary_b}")


@dataclass(frozen=True)
class Comparison:
    """A policy response against a baseline response for one prompt.

    Attributes:
        prompt: prompt text.
        response: the policy's response text.
        baseline: the baseline's response text (a reference sample or the dataset's summary).
        prompt_ids: prompt token ids (the gold judge reads tokens).
        response_ids: response token ids.
        baseline_ids: baseline token ids.
    """

    prompt: str
    response: str
    baseline: str
    prompt_ids: tuple[int, ...] = ()
    response_ids: tuple[int, ...] = ()
    baseline_ids: tuple[int, ...] = ()


@dataclass(frozen=True)
class Verdicts:
    """What a judge said about n comparisons.

    Attributes:
        scores: 1 policy wins, 0 baseline wins, ½ tie, NaN unparsable or failed. Shape (n,),
            float64.
        ties: answers that were ties.
        unparsable: answers without a usable verdict.
        errors: comparisons whose requests failed after every retry (API judge).
    """

    scores: Tensor
    ties: int = 0
    unparsable: int = 0
    errors: int = 0

    def win_rate(self) -> tuple[float, float, int]:
        """``(mean, standard error, n)`` over the comparisons with a verdict (NaN when none;
        the SE is the sample standard deviation / √n, NaN for n < 2)."""
        s = self.scores[~torch.isnan(self.scores)]
        n = s.numel()
        if n == 0:
            return math.nan, math.nan, 0
        se = float(s.std(unbiased=True)) / math.sqrt(n) if n > 1 else math.nan
        return float(s.mean()), se, n


class Judge(Protocol):
    """Scores policy responses against baselines."""

    name: str

    def judge(self, comparisons: Sequence[Comparison]) -> Verdicts: ...


def _score(a: float, b: float) -> float:
    return 1.0 if a > b else 0.0 if a < b else 0.5


# ------------------------------------------------------------------------------------ gold
@dataclass(frozen=True, eq=False)
class GoldJudge:
    """The exact gold reward of a tree-language problem (ties ½).

    Attributes:
        tree: the tree.
        rewards: gold reward of every response. Shape (L,).
    """

    tree: Tree
    rewards: Tensor
    name: str = "gold"
    _language: TreeLanguage = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if tuple(self.rewards.shape) != (self.tree.n_responses,):
            raise ValueError(
                f"rewards must have shape ({self.tree.n_responses},); "
                f"got {tuple(self.rewards.shape)}"
            )
        object.__setattr__(self, "_language", TreeLanguage(self.tree))

    def leaf(self, prompt_ids: tuple[int, ...], response_ids: tuple[int, ...]) -> int:
        """The leaf index of a token sequence, or −1 when it is not a response of the tree."""
        return self._language.decode((*prompt_ids, *response_ids))

    def judge(self, comparisons: Sequence[Comparison]) -> Verdicts:
        scores, ties, bad = [], 0, 0
        for c in comparisons:
            y, y0 = self.leaf(c.prompt_ids, c.response_ids), self.leaf(c.prompt_ids, c.baseline_ids)
            if y < 0 or y0 < 0:
                scores.append(math.nan)
                bad += 1
                continue
            s = _score(float(self.rewards[y]), float(self.rewards[y0]))
            ties += s == 0.5
            scores.append(s)
        return Verdicts(torch.tensor(scores, dtype=torch.float64), ties, bad)


# ---------------------------------------------------------------------------- reward model
def check_score_head(model: str, missing: Iterable[str]) -> None:
    """ValueError (one line) when loading ``model`` as a sequence classifier left weights of its
    head uninitialised (``missing``: the loading report's missing keys): a causal LM's folder
    loads with a random ``score`` head, and its "rewards" would be noise."""
    missing = sorted(missing)
    if missing:
        shown = ", ".join(missing[:3]) + (" ..." if len(missing) > 3 else "")
        raise ValueError(
            f"reward model {model!r} lacks trained weights for {shown} (a causal LM, not a "
            "sequence-classification reward model with one label?): pass a trained reward model"
        )


class RewardModelJudge:
    """A sequence-classification reward model: score(prompt + response) = logit 0.

    Args:
        model: hub name or folder of an ``AutoModelForSequenceClassification`` with one label,
            and its tokenizer.
        device: where the model runs.
        batch_size: texts per forward.
        max_length: texts are truncated to this many tokens (keeping their end, which holds the
            response).
    """

    def __init__(
        self, model: str, *, device: str = "cpu", batch_size: int = 16, max_length: int = 1024
    ) -> None:
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1; got {batch_size}")
        if model.startswith((".", "/")) and not Path(model).is_dir():
            raise ValueError(f"reward model folder {model} does not exist")
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(model)
            with progress_bars_off(), loading_report_off():
                self.model, info = AutoModelForSequenceClassification.from_pretrained(
                    model, output_loading_info=True
                )
        except OSError as err:
            raise ValueError(f"cannot load reward model {model!r}: {err}") from None
        check_score_head(model, info.get("missing_keys", ()))
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.tokenizer.padding_side = "right"
        self.tokenizer.truncation_side = "left"
        self.model.config.pad_token_id = self.tokenizer.pad_token_id
        self.model.to(device).eval()
        self.device, self.batch_size, self.max_length = device, batch_size, max_length
        self.name = f"reward-model:{Path(model).name}"

    @torch.no_grad()
    def scores(self, texts: Sequence[str]) -> Tensor:
        """The reward of each text. Shape (n,), float64.

        Each distinct text is scored once, so identical texts get identical scores, and texts
        are batched only with texts of the same token length: no padding ever enters a
        forward, and a score depends on the batch composition only through the float
        rounding of the batched matmuls.
        """
        unique = list(dict.fromkeys(texts))
        ids = self.tokenizer(unique, truncation=True, max_length=self.max_length)["input_ids"]
        if any(len(t) == 0 for t in ids):
            raise ValueError("the reward model cannot score an empty text")
        by_length: dict[int, list[int]] = {}
        for i, t in enumerate(ids):
            by_length.setdefault(len(t), []).append(i)
        values = torch.empty(len(unique), dtype=torch.float64)
        for group in by_length.values():
            for s in range(0, len(group), self.batch_size):
                part = group[s : s + self.batch_size]
                batch = torch.tensor([ids[i] for i in part], device=self.device)
                logits = self.model(input_ids=batch, attention_mask=torch.ones_like(batch)).logits
                values[part] = logits[:, 0].double().cpu()
        index = {t: i for i, t in enumerate(unique)}
        return values[[index[t] for t in texts]]

    def judge(self, comparisons: Sequence[Comparison]) -> Verdicts:
        n = len(comparisons)
        texts = [c.prompt + c.response for c in comparisons]
        both = self.scores(texts + [c.prompt + c.baseline for c in comparisons])
        a, b = both[:n], both[n:]
        scores = torch.tensor([_score(x, y) for x, y in zip(a.tolist(), b.tolist(), strict=True)])
        return Verdicts(scores.double(), ties=int((scores == 0.5).sum()))


# ------------------------------------------------------------------------------------- api
_PREFERRED = re.compile(
    r"^[\s*#>_-]*preferred[\s*_]*:[\s*_]*[\"'(\[<]*\s*(a|b|tie|neither|both|equal)\b",
    re.IGNORECASE | re.MULTILINE,
)


def parse_preferred(answer: str) -> str | None:
    """``"A"``, ``"B"``, ``"tie"`` from the last ``Preferred:`` line of an answer, else None."""
    found = _PREFERRED.findall(answer or "")
    if not found:
        return None
    v = found[-1].lower()
    return v.upper() if v in ("a", "b") else "tie"


class _RetryableError(Exception):
    pass


@dataclass
class ApiJudge:
    """A pairwise LLM judge over an OpenAI-compatible chat-completions endpoint.

    Attributes:
        base_url: e.g. ``https://api.openai.com/v1``; requests go to
            ``{base_url}/chat/completions``.
        api_key: sent as a Bearer token (empty: no Authorization header).
        model: the judge model name.
        template: prompt with ``{post}``, ``{summary_a}``, ``{summary_b}`` (plain replacement,
            so braces in posts are safe).
        seed: seeds which comparisons show the policy response as "B".
        concurrency: requests in flight at most.
        retries: further attempts after a failed request (HTTP 429/5xx, timeout, connection
            error, malformed JSON), with backoff ``backoff · 2^k`` seconds.
        backoff: first backoff in seconds.
        timeout: seconds per request.
        cache: JSONL file of answers (``{"key", "answer"}`` per line); None disables it.
        max_tokens: answer length limit sent with each request.
    """

    base_url: str
    api_key: str = ""
    model: str = "gpt-4-turbo-2024-04-09"
    template: str = TLDR_TEMPLATE
    seed: int = 0
    concurrency: int = 8
    retries: int = 5
    backoff: float = 1.0
    timeout: float = 60.0
    cache: Path | None = None
    max_tokens: int = 256
    name: str = "api"
    requests_sent: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        missing = [p for p in PLACEHOLDERS if p not in self.template]
        if missing:
            raise ValueError(
                f"judge template must contain {', '.join(PLACEHOLDERS)}; lacks {missing}"
            )
        if self.concurrency < 1:
            raise ValueError(f"concurrency must be >= 1; got {self.concurrency}")
        if self.retries < 0:
            raise ValueError(f"retries must be >= 0; got {self.retries}")
        if not self.base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url must start with http:// or https://; got {self.base_url!r}")
        self.name = f"api:{self.model}"
        self._lock = threading.Lock()
        self._answers: dict[str, str] = {}
        if self.cache is not None:
            self.cache = Path(self.cache)
            if self.cache.is_file():
                for line in self.cache.read_text(encoding="utf-8").splitlines():
                    try:  # a line cut by a kill is skipped, and asked again
                        item = json.loads(line)
                        self._answers[item["key"]] = item["answer"]
                    except (json.JSONDecodeError, KeyError, TypeError):
                        continue

    def render(self, c: Comparison, swap: bool) -> str:
        """The judge prompt; with ``swap`` the policy response is shown as Summary B."""
        a, b = (c.baseline, c.response) if swap else (c.response, c.baseline)
        out = self.template.replace("{post}", c.prompt.strip())
        return out.replace("{summary_a}", a.strip()).replace("{summary_b}", b.strip())

    def _key(self, prompt: str) -> str:
        return hashlib.sha256(json.dumps([self.model, prompt]).encode()).hexdigest()

    def _post(self, prompt: str) -> str:
        body = json.dumps(
            {
                "model": self.model,
                "messages": [{"role": "user", "content": prompt}],
                "temperature": 0,
                "max_tokens": self.max_tokens,
            }
        ).encode()
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        url = self.base_url.rstrip("/") + "/chat/completions"
        req = urllib.request.Request(url, data=body, headers=headers, method="POST")
        with self._lock:
            self.requests_sent += 1
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                data = json.loads(resp.read().decode("utf-8"))
            return str(data["choices"][0]["message"]["content"] or "")
        except urllib.error.HTTPError as err:
            if err.code == 429 or err.code >= 500:
                raise _RetryableError(f"HTTP {err.code}") from None
            detail = err.read().decode("utf-8", "replace")[:200].replace("\n", " ")
            raise ValueError(
                f"api judge: HTTP {err.code} from {url}: {detail} "
                "(check --api-base-url, --api-key / OPENAI_API_KEY, --api-model)"
            ) from None
        except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as err:
            raise _RetryableError(str(err)) from None
        except (json.JSONDecodeError, KeyError, IndexError, TypeError) as err:
            raise _RetryableError(f"malformed response: {err}") from None

    def _ask(self, prompt: str) -> str | None:
        """The answer for ``prompt`` from the cache or the endpoint; None after every retry."""
        key = self._key(prompt)
        with self._lock:
            if key in self._answers:
                return self._answers[key]
        for attempt in range(self.retries + 1):
            try:
                answer = self._post(prompt)
                break
            except _RetryableError:
                if attempt == self.retries:
                    return None
                time.sleep(self.backoff * 2**attempt)
        with self._lock:
            self._answers[key] = answer
            if self.cache is not None:
                self.cache.parent.mkdir(parents=True, exist_ok=True)
                with self.cache.open("a", encoding="utf-8") as f:
                    f.write(json.dumps({"key": key, "answer": answer}) + "\n")
        return answer

    def judge(self, comparisons: Sequence[Comparison]) -> Verdicts:
        rng = random.Random(self.seed)
        swaps = [rng.random() < 0.5 for _ in comparisons]
        prompts = [self.render(c, s) for c, s in zip(comparisons, swaps, strict=True)]
        with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
            answers = list(pool.map(self._ask, prompts))
        scores: list[float] = []
        ties = bad = errors = 0
        for answer, swap in zip(answers, swaps, strict=True):
            if answer is None:
                errors += 1
                scores.append(math.nan)
                continue
            verdict = parse_preferred(answer)
            if verdict is None:
                bad += 1
                scores.append(math.nan)
            elif verdict == "tie":
                ties += 1
                scores.append(0.5)
            else:  # the policy response is "A" unless swapped
                scores.append(1.0 if (verdict == "A") != swap else 0.0)
        return Verdicts(torch.tensor(scores, dtype=torch.float64), ties, bad, errors)
