"""Judges: the API judge against a mock OpenAI-compatible server on 127.0.0.1 (order
randomisation, retries, cache, concurrency limit, unparsable answers), the reward-model judge on a
tiny random GPTNeoXForSequenceClassification, and the gold judge."""

from __future__ import annotations

import json
import math
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch
from transformers import GPTNeoXForSequenceClassification

from llm.data import byte_tokenizer
from llm.judges import ApiJudge, Comparison, GoldJudge, RewardModelJudge, parse_preferred
from llm.model import pythia_config
from llm.tree_language import TreeLanguage
from treemdp.tree import Tree

SUMMARIES = re.compile(r"Summary A:\n(.*)\n\nSummary B:\n(.*)\n\nFIRST", re.DOTALL)


class MockServer:
    """An OpenAI-compatible chat-completions server; the path's first part picks the behaviour:
    ``longer`` (prefers the longer summary), ``always-a``, ``flaky`` (HTTP 500 on the first
    request of every prompt, then ``longer``), ``down`` (always 500), ``garbage`` (no verdict),
    ``tie``, ``slow`` (``longer`` after 20 ms, tracking requests in flight), ``denied`` (401)."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str]] = []
        self.seen: set[str] = set()
        self.in_flight = self.max_in_flight = 0
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            wbufsize = -1  # headers and body in one send: no Nagle/delayed-ACK stall per request

            def log_message(self, *args):  # quiet
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                prompt = body["messages"][0]["content"]
                mode = self.path.strip("/").split("/")[0]
                with server.lock:
                    server.requests.append((mode, prompt))
                    first = (mode, prompt) not in server.seen
                    server.seen.add((mode, prompt))
                    server.in_flight += 1
                    server.max_in_flight = max(server.max_in_flight, server.in_flight)
                try:
                    if mode == "slow":
                        time.sleep(0.02)
                    if mode == "down" or (mode == "flaky" and first):
                        return self._send(500, b"overloaded")
                    if mode == "denied":
                        return self._send(401, b'{"error": "bad key"}')
                    a, b = SUMMARIES.search(prompt).groups()
                    answer = {
                        "always-a": "Comparison: A.\nPreferred: A",
                        "garbage": "I like both of them, really.",
                        "tie": "Comparison: same.\nPreferred: tie",
                    }.get(
                        mode,
                        f"Comparison: longer wins.\nPreferred: {'A' if len(a) > len(b) else 'B'}",
                    )
                    out = {"choices": [{"message": {"role": "assistant", "content": answer}}]}
                    self._send(200, json.dumps(out).encode())
                finally:
                    with server.lock:
                        server.in_flight -= 1

            def _send(self, code, data):
                self.send_response(code)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        class Server(ThreadingHTTPServer):
            request_queue_size = 64  # the default backlog of 5 drops concurrent connects
            daemon_threads = True

        self.httpd = Server(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.02,), daemon=True)
        self.thread.start()

    def url(self, mode: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/{mode}/v1"

    def count(self, mode: str) -> int:
        return sum(m == mode for m, _ in self.requests)

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture()
def server():
    s = MockServer()
    yield s
    s.close()


def comparisons(n: int, policy_longer: bool = True) -> list[Comparison]:
    out = []
    for i in range(n):
        long, short = f"a long summary number {i} with many words", f"short {i}"
        y, y0 = (long, short) if policy_longer else (short, long)
        out.append(Comparison(f"POST: post {i}\nTL;DR:", " " + y, " " + y0))
    return out


def judge(server, mode, **kw) -> ApiJudge:
    return ApiJudge(base_url=server.url(mode), backoff=0.001, timeout=10, **kw)


def test_order_randomisation_a_length_judge_gives_the_same_win_rate_in_either_order(server):
    for seed in (0, 1):
        v = judge(server, "longer", seed=seed).judge(comparisons(40))
        assert v.win_rate()[:2] == (1.0, 0.0) and v.unparsable == v.errors == 0
        assert judge(server, "longer", seed=seed).judge(comparisons(40, False)).win_rate()[0] == 0
    # the policy response was shown as "A" in some requests and as "B" in others
    first_seed = [p for m, p in server.requests[:40]]
    as_a = sum("Summary A:\na long" in p for p in first_seed)
    assert 5 < as_a < 35
    # a judge that always answers "A" is position-biased; randomisation turns that into ~½
    w = judge(server, "always-a").judge(comparisons(40)).win_rate()[0]
    assert w == pytest.approx(as_a / 40)


def test_failed_requests_are_retried_and_answers_are_cached(server, tmp_path):
    cache = tmp_path / "cache.jsonl"
    first = judge(server, "flaky", cache=cache).judge(comparisons(12))
    assert first.win_rate()[0] == 1.0 and first.errors == 0
    assert server.count("flaky") == 24  # one 500 and one retry per comparison
    again = judge(server, "flaky", cache=cache)
    second = again.judge(comparisons(12))
    assert again.requests_sent == 0 and server.count("flaky") == 24  # a rerun costs nothing
    assert torch.equal(first.scores, second.scores)
    assert len(cache.read_text().splitlines()) == 12


def test_requests_that_keep_failing_are_errors_and_not_cached(server, tmp_path):
    cache = tmp_path / "cache.jsonl"
    v = judge(server, "down", retries=2, cache=cache).judge(comparisons(3))
    assert v.errors == 3 and server.count("down") == 9 and math.isnan(v.win_rate()[0])
    assert not cache.exists()


def test_unparsable_answers_and_ties_are_counted(server):
    v = judge(server, "garbage").judge(comparisons(5))
    assert v.unparsable == 5 and v.win_rate()[2] == 0 and math.isnan(v.win_rate()[0])
    t = judge(server, "tie").judge(comparisons(4))
    assert t.ties == 4 and t.win_rate()[:2] == (0.5, 0.0)


def test_concurrency_limit_holds(server):
    judge(server, "slow", concurrency=3).judge(comparisons(24))
    assert server.count("slow") == 24 and 1 <= server.max_in_flight <= 3


def test_a_refused_key_is_a_user_error(server):
    with pytest.raises(ValueError, match="HTTP 401"):
        judge(server, "denied", api_key="wrong").judge(comparisons(2))


def test_template_must_hold_its_placeholders():
    with pytest.raises(ValueError, match="summary_b"):
        ApiJudge(base_url="http://127.0.0.1:9", template="{post} {summary_a}")


@pytest.mark.parametrize(
    ("answer", "verdict"),
    [
        ("Comparison: x\nPreferred: A", "A"),
        ('Comparison: x\nPreferred: "B"', "B"),
        ("**Preferred:** b", "B"),
        ("Preferred: A\nwait, no.\nPreferred: B", "B"),  # the last line counts
        ("Preferred: Tie", "tie"),
        ("Comparison: A is better", None),
        ("", None),
    ],
)
def test_parse_preferred(answer, verdict):
    assert parse_preferred(answer) == verdict


def test_reward_model_judge_scores_prompt_plus_response(tmp_path):
    tok = byte_tokenizer()
    config = pythia_config("tiny", vocab_size=len(tok))
    config.num_labels = 1
    config.pad_token_id = tok.pad_token_id
    torch.manual_seed(0)
    GPTNeoXForSequenceClassification(config).save_pretrained(tmp_path / "rm")
    tok.save_pretrained(tmp_path / "rm")
    rm = RewardModelJudge(str(tmp_path / "rm"), batch_size=3)
    cs = [*comparisons(5), Comparison("same", " text", " text")]
    v = rm.judge(cs)
    a = rm.scores([c.prompt + c.response for c in cs])
    b = rm.scores([c.prompt + c.baseline for c in cs])
    want = [1.0 if x > y else 0.0 if x < y else 0.5 for x, y in zip(a, b, strict=True)]
    assert v.scores.tolist() == want and v.scores[-1] == 0.5 and v.ties >= 1
    # identical texts tie exactly, whatever the batch size and whatever else shares the batch
    texts = [c.prompt + c.response for c in cs] + [c.prompt + c.baseline for c in cs]
    for batch_size in (1, 2, 5, 64):
        rm.batch_size = batch_size
        for extra in ([], ["x" * 40, "yy"], ["same text", "a much longer text than the others"]):
            got = rm.scores([*extra, "same text", *texts, "same text"])
            assert got[len(extra)] == got[-1], (batch_size, extra)
            # batching and batch composition change a text's score only by float rounding
            torch.testing.assert_close(
                got[len(extra) + 1 : -1], torch.cat([a, b]), rtol=1e-4, atol=1e-5
            )
        assert rm.judge([Comparison("p", " q", " q")] * 3).ties == 3
    with pytest.raises(ValueError, match="empty text"):
        rm.scores([""])
    with pytest.raises(ValueError, match="does not exist"):
        RewardModelJudge(str(tmp_path / "missing"))


def test_gold_judge_compares_gold_rewards_with_ties_half():
    tree = Tree.complete(2, 2)
    rewards = torch.tensor([0.0, 1.0, 1.0, -1.0], dtype=torch.float64)
    leaf = {v: k for k, v in TreeLanguage(tree).leaf_index.items()}
    g = GoldJudge(tree, rewards)
    cs = [
        Comparison("", "", "", (1,), leaf[1][1:], leaf[0][1:]),  # 1 > 0: win
        Comparison("", "", "", (1,), leaf[3][1:], leaf[0][1:]),  # -1 < 0: loss
        Comparison("", "", "", (1,), leaf[1][1:], leaf[2][1:]),  # tie
        Comparison("", "", "", (1,), (3,), leaf[2][1:]),  # not a leaf
    ]
    v = g.judge(cs)
    assert v.scores[:3].tolist() == [1.0, 0.0, 0.5] and v.ties == 1 and v.unparsable == 1
    assert v.win_rate()[0] == pytest.approx(0.5)


def test_reward_model_without_a_score_head_is_refused(tmp_path):
    """A causal LM's folder loads as a sequence classifier with a randomly initialised score
    head ("score.weight MISSING"): its win rates would be noise, so it is refused."""
    from llm.model import build_model

    tok = byte_tokenizer()
    build_model("tiny", seed=0, vocab_size=len(tok)).save_pretrained(tmp_path / "lm")
    tok.save_pretrained(tmp_path / "lm")
    with pytest.raises(ValueError, match=r"score\.weight") as err:
        RewardModelJudge(str(tmp_path / "lm"))
    assert "\n" not in str(err.value) and "reward model" in str(err.value)
