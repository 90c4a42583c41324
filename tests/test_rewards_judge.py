"""The judge against a local fake chat-completions server (127.0.0.1 only, bounded, stops itself)."""

import dataclasses
import json
import logging
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from omni_grpo.rewards import build_reward_manager
from omni_grpo.rewards.judge import JudgeClient, JudgeConfig, JudgeError, build_prompt, parse_ratings

KEY_ENV = "OMNI_GRPO_TEST_JUDGE_KEY"
SECRET = "sk-test-0123456789-NEVER-LOG-ME"
MAX_REQUESTS = 60
LIFETIME_S = 30.0
_BLOCK = re.compile(r"<reasoning (\d+)>\n(.*?)\n</reasoning \1>", re.DOTALL)


class _Handler(BaseHTTPRequestHandler):
    """POST /<mode>/v1/chat/completions; mode: ok | slow | error | badjson | wrongcount."""

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.seen.append({"path": self.path, "auth": self.headers.get("Authorization"), "body": body})
        mode = self.path.strip("/").split("/")[0]
        if mode == "slow":
            time.sleep(0.6)
        if mode == "error":
            self._reply(500, b'{"error": "boom"}')
            return
        if mode == "badjson":
            self._reply(200, b'{"choices": [ {"message": ')
            return
        blocks = _BLOCK.findall(body["messages"][-1]["content"])
        ratings = [8 if "smile" in text else 2 for _, text in blocks]
        if mode == "wrongcount":
            ratings.append(5)
        content = json.dumps(ratings)
        self._reply(200, json.dumps({"choices": [{"message": {"role": "assistant", "content": content}}]}).encode())

    def _reply(self, status, payload):
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
        except OSError:
            pass  # the client gave up (timeout test)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.daemon_threads = True
    httpd.timeout = 0.05
    httpd.seen = []
    stop = threading.Event()
    deadline = time.monotonic() + LIFETIME_S

    def serve():
        handled = 0
        while not stop.is_set() and handled < MAX_REQUESTS and time.monotonic() < deadline:
            before = len(httpd.seen)
            httpd.handle_request()
            handled += len(httpd.seen) > before
        httpd.server_close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield httpd
    stop.set()
    thread.join(timeout=5)


@pytest.fixture
def key(monkeypatch):
    monkeypatch.setenv(KEY_ENV, SECRET)


def client(server, mode, **overrides):
    port = server.server_address[1]
    settings = dict(
        url=f"http://127.0.0.1:{port}/{mode}/v1/chat/completions",
        model="judge-test",
        api_key_env=KEY_ENV,
        timeout_s=5.0,
        batch_size=1,
    )  # one text per request (the config default is 8)
    settings.update(overrides)
    return JudgeClient(JudgeConfig(**settings))


def test_success_sends_key_and_parses_ratings(server, key):
    judge = client(server, "ok")
    before = len(server.seen)
    assert judge.rate(["She smiles at him.", "A room."]) == [0.8, 0.2]
    sent = server.seen[before:]
    assert len(sent) == 2 and all(s["auth"] == f"Bearer {SECRET}" for s in sent)
    assert sent[0]["body"]["model"] == "judge-test" and sent[0]["body"]["messages"][0]["role"] == "system"
    assert judge.stats == {"requests": 2, "failed_requests": 0, "failed_items": 0, "cache_hits": 0}


def test_batches_hold_batch_size_texts(server, key):
    judge = client(server, "ok", batch_size=3, concurrency=2)
    before = len(server.seen)
    texts = [f"Text {i}: she smiles." if i % 2 else f"Text {i}." for i in range(7)]
    assert judge.rate(texts) == [0.2, 0.8, 0.2, 0.8, 0.2, 0.8, 0.2]
    assert len(server.seen) - before == 3


def test_cache_hit_costs_no_request(server, key):
    judge = client(server, "ok")
    judge.rate(["She smiles."])
    before = len(server.seen)
    assert judge.rate(["She smiles.", "She smiles."]) == [0.8, 0.8]
    assert len(server.seen) == before
    assert judge.stats["cache_hits"] == 2 and judge.stats["requests"] == 1


@pytest.mark.parametrize(
    "mode, reason",
    [("error", "HTTP 500"), ("badjson", "chat-completions JSON"), ("wrongcount", "rating"), ("slow", "timed out")],
)
def test_failures_are_none_counted_and_logged(server, key, caplog, mode, reason):
    judge = client(server, mode, timeout_s=0.2)
    with caplog.at_level(logging.WARNING, logger="omni_grpo.rewards.judge"):
        assert judge.rate(["She smiles.", "A room."]) == [None, None]
    assert judge.stats["failed_requests"] == 2 and judge.stats["failed_items"] == 2
    assert reason in caplog.text
    assert judge.rate(["She smiles."]) == [None]  # failures are not cached
    assert judge.stats["requests"] == 3


def test_missing_key_variable_raises_without_a_request(server, monkeypatch):
    monkeypatch.delenv(KEY_ENV, raising=False)
    before = len(server.seen)
    with pytest.raises(JudgeError, match=KEY_ENV):
        client(server, "ok").rate(["She smiles."])
    assert len(server.seen) == before


def test_unset_key_variable_is_a_counted_reward_error(server, monkeypatch, caplog):
    monkeypatch.delenv(KEY_ENV, raising=False)
    judge = dataclasses.asdict(client(server, "ok").config)
    manager = build_reward_manager(["people_focus"], reward_kwargs={"people_focus": {"judge": judge}})
    completion = "<context>She smiles at him.</context><think>She says hi.</think><answer>B</answer>"
    with caplog.at_level(logging.WARNING, logger="omni_grpo.rewards.manager"):
        out = manager([completion], [{}])
    assert out.metrics["reward/people_focus/errors"] == 1.0 and out.per_sample == [{"people_focus": None}]
    assert KEY_ENV in caplog.text


def test_no_key_configured_sends_no_authorization(server):
    before = len(server.seen)
    assert client(server, "ok", api_key_env=None).rate(["She smiles."]) == [0.8]
    assert server.seen[before]["auth"] is None


def test_key_never_appears_in_logs_reprs_metrics_or_errors(server, key, caplog):
    port = server.server_address[1]
    judge_settings = dict(
        url=f"http://127.0.0.1:{port}/error/v1/chat/completions", model="m", api_key_env=KEY_ENV, timeout_s=0.2
    )
    completion = "<context>She smiles at him.</context><think>She says hi; she is happy.</think><answer>B</answer>"
    manager = build_reward_manager(
        ["people_focus"], reward_kwargs={"people_focus": {"judge": judge_settings}}, max_consecutive_errors=1
    )
    texts = []
    with caplog.at_level(logging.DEBUG):
        out = manager([completion], [{"id": 1}])
        assert out.per_sample == [{"people_focus": None}]
        assert out.metrics["reward/people_focus/none_ratio"] == 1.0
        for mode in ("slow", "badjson"):
            client(server, mode, timeout_s=0.2).rate(["She smiles."])
    config = JudgeConfig(**judge_settings)
    texts += [
        caplog.text,
        repr(config),
        str(config),
        repr(JudgeClient(config)),
        repr(manager),
        str(out.metrics),
        str(out.per_sample),
    ]
    with pytest.raises(ValueError) as bad_env_name:
        JudgeConfig(url="http://127.0.0.1:1/x", model="m", api_key_env=SECRET)
    texts.append(str(bad_env_name.value))
    assert "failed" in caplog.text
    assert all(SECRET not in t for t in texts)


def test_config_validation():
    with pytest.raises(ValueError, match="valid keys"):
        JudgeConfig.from_dict({"url": "http://127.0.0.1:1/x", "model": "m", "api_key": "x"})
    with pytest.raises(ValueError, match="url"):
        JudgeConfig(url="ftp://x", model="m")
    for field in ("batch_size", "concurrency", "max_cache_entries"):
        with pytest.raises(ValueError, match=field):
            JudgeConfig(url="http://127.0.0.1:1/x", model="m", **{field: 0})
    with pytest.raises(ValueError, match="timeout_s"):
        JudgeConfig(url="http://127.0.0.1:1/x", model="m", timeout_s=0)


@pytest.mark.parametrize(
    "content, n, expected",
    [
        ("[7]", 1, [0.7]),
        ("7", 1, [0.7]),
        ("Ratings: [10, 0]", 2, [1.0, 0.0]),
        ("[3, 4]", 1, None),
        ("[11]", 1, None),
        ("great", 1, None),
    ],
)
def test_parse_ratings(content, n, expected):
    raw = json.dumps({"choices": [{"message": {"content": content}}]}).encode()
    if expected is None:
        with pytest.raises(ValueError):
            parse_ratings(raw, n)
    else:
        assert parse_ratings(raw, n) == pytest.approx(expected)


def test_prompt_numbers_each_block():
    prompt = build_prompt(["one", "two"])
    assert [b for _, b in _BLOCK.findall(prompt)] == ["one", "two"] and "2 integer" in prompt
