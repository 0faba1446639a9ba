"""The LLM judge against a fake OpenAI-compatible server on 127.0.0.1 (real request format, fake verdicts)."""

from __future__ import annotations

import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from prefopt.eval import judge as J


class FakeChatServer:
    """Answers POST /v1/chat/completions like an OpenAI server. Its verdict: the summary containing
    "GOOD" is preferred. A post containing "MALFORMED" gets an answer with no verdict, "BROKEN" an
    HTTP 500. Every request is recorded."""

    def __init__(self):
        self.requests: list[dict] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if self.path != "/v1/chat/completions":
                    outer.requests.append({"path": self.path})
                    self.send_error(404)
                    return
                outer.requests.append(
                    {"path": self.path, "headers": dict(self.headers), "body": json.loads(body)}
                )
                prompt = json.loads(body)["messages"][0]["content"]
                if "BROKEN" in prompt:
                    self.send_response(500)
                    self.end_headers()
                    return
                a = re.search(r"Summary A:\n(.*?)\n\nSummary B:", prompt, re.S).group(1)
                verdict = "A" if "GOOD" in a else "B"
                answer = (
                    "I am not sure."
                    if "MALFORMED" in prompt
                    else f"Comparison: Summary {verdict} covers the key facts.\nPreferred: {verdict}"
                )
                reply = {
                    "id": "x",
                    "object": "chat.completion",
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": answer}}],
                }
                data = json.dumps(reply).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture()
def server():
    with FakeChatServer() as s:
        yield s


def test_prompt_is_the_published_one():
    p = J.build_prompt("my post", "first", "second")
    assert p.startswith(
        "Which of the following summaries does a better job of summarizing the most important points in the "
        "given forum post, without including unimportant or irrelevant details? A good summary is both "
        "precise and concise.\n\nPost:\nmy post\n\nSummary A:\nfirst\n\nSummary B:\nsecond\n\n"
    )
    assert p.endswith('Comparison: <one-sentence comparison and explanation>\nPreferred: <"A" or "B">')


@pytest.mark.parametrize(
    ("answer", "verdict"),
    [
        ("Comparison: A is shorter.\nPreferred: A", "A"),
        ('Comparison: x\nPreferred: "B"', "B"),
        ("comparison: x\npreferred:  b.", "B"),
        ("Comparison: the word Preferred: A appears\nPreferred: B", "B"),  # the last verdict line wins
        ("Preferred: <A>", "A"),
        ("Comparison: both fine.", None),
        ("Preferred: C", None),
        ("Preferred: AB", None),
        ("", None),
        (None, None),
    ],
)
def test_parse_verdict(answer, verdict):
    assert J.parse_verdict(answer) == verdict


def test_request_format_and_order_randomisation_undone(server, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    monkeypatch.setenv("PREFOPT_JUDGE_MODEL", "judge-model-x")
    judge = J.make_judge(server.url)
    n = 24
    posts = [f"post number {i}" for i in range(n)]
    good = [f"GOOD summary {i}" for i in range(n)]
    bad = [f"weak summary {i}" for i in range(n)]
    res = J.judge_pairwise(judge, posts, good, bad, seed=3)
    # the fake always prefers GOOD, wherever it was shown: every verdict maps back to "a wins"
    assert res.outcomes == [1.0] * n and res.failures == 0 and res.win_rate == 1.0
    assert 0 < sum(res.a_shown_first) < n  # both orders were used
    assert J.judge_pairwise(judge, posts, bad, good, seed=3).outcomes == [0.0] * n
    # the request is a standard chat-completions call
    req = server.requests[0]
    assert req["path"] == "/v1/chat/completions"
    assert req["headers"]["Authorization"] == "Bearer sk-test"
    assert req["headers"]["Content-Type"] == "application/json"
    body = req["body"]
    assert body["model"] == "judge-model-x" and body["temperature"] == 0.0
    assert [m["role"] for m in body["messages"]] == ["user"]
    # each prompt shows the summaries in the recorded order
    prompts = {r["body"]["messages"][0]["content"] for r in server.requests[:n]}
    for i, first in enumerate(res.a_shown_first):
        a, b = (good[i], bad[i]) if first else (bad[i], good[i])
        assert J.build_prompt(posts[i], a, b) in prompts


def test_order_is_seeded(server):
    judge = J.OpenAIJudge(server.url, api_key="")
    posts, a, b = ["p"] * 16, ["GOOD"] * 16, ["x"] * 16
    first = J.judge_pairwise(judge, posts, a, b, seed=1).a_shown_first
    assert J.judge_pairwise(judge, posts, a, b, seed=1).a_shown_first == first
    assert J.judge_pairwise(judge, posts, a, b, seed=2).a_shown_first != first
    assert "Authorization" not in server.requests[0]["headers"]  # no key, no header


def test_malformed_answers_and_server_errors_count_as_ties(server):
    judge = J.OpenAIJudge(server.url, api_key="", retries=1, backoff=0.01)
    posts = ["fine post", "MALFORMED post", "BROKEN post", "another fine post", "fine again"]
    a = ["GOOD one"] * 5
    b = ["other"] * 5
    res = J.judge_pairwise(judge, posts, a, b, seed=0, max_workers=1)
    assert res.outcomes == [1.0, 0.5, 0.5, 1.0, 1.0]
    assert res.failures == 2 and len(res.errors) == 2
    assert "HTTP 500" in res.errors[1] and "no verdict" in res.errors[0]
    assert sum("BROKEN" in r["body"]["messages"][0]["content"] for r in server.requests) == 2  # one retry


def test_unreachable_judge_raises_once_instead_of_timing_out_per_item():
    import socket

    with socket.socket() as s:  # a port with nothing listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    judge = J.OpenAIJudge(f"http://127.0.0.1:{port}/v1", api_key="", retries=0)
    with pytest.raises(J.JudgeError, match="first 2 requests"):
        J.judge_pairwise(judge, ["p"] * 50, ["a"] * 50, ["b"] * 50, max_workers=2)


def test_client_errors_are_not_retried(server):
    judge = J.OpenAIJudge(server.url + "/wrong", api_key="", retries=3, backoff=10.0)
    with pytest.raises(J.JudgeError, match="HTTP 404"):
        judge("prompt")  # fails at once: three 10 s backoffs would show up as a very slow test
    assert len(server.requests) == 1


def test_make_judge_rejects_a_bad_spec(tmp_path):
    with pytest.raises(J.JudgeError, match="neither an http"):
        J.make_judge(str(tmp_path / "nothing-here"))
