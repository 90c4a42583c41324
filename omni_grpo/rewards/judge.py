"""Optional LLM judge for the people-focus reward: an OpenAI-compatible chat-completions endpoint.

Off by default; turned on by the config's ``judge:`` section (``judge.enabled=true``, ``judge.url``, ``judge.model``;
one ``config.JudgeConfig``, whose defaults apply everywhere), or ``reward_kwargs: {people_focus: {judge: {url: …,
model: …}}}``.

- Request: ``POST url`` with ``{"model", "messages", "temperature", "max_tokens"}``; each request
  holds up to ``batch_size`` reasoning texts as ``<reasoning k>…</reasoning k>`` blocks and asks for
  a JSON list of integer ratings 0–10, one per block, in order. The reply's
  ``choices[0].message.content`` must hold that list (a bare number is accepted for one block).
- Concurrency: the batches of one call run at the same time, at most ``concurrency`` in flight
  (asyncio driving a thread pool of blocking ``urllib`` requests; stdlib only).
- Key: ``api_key_env`` is the NAME of an environment variable, read at call time and sent as
  ``Authorization: Bearer …``. The key is never stored on an object, logged, put in a metric or an
  exception message; configs only hold the variable's name. An unset variable raises ``JudgeError``.
- Failures (timeout after ``timeout_s``, connection error, HTTP status >= 400, malformed JSON, a reply
  without the right number of ratings in 0–10) log a warning and give ``None`` for every text of that
  request — never 0 — and are counted in ``JudgeClient.stats``.
- Cache: successful ratings are kept in memory keyed by the reasoning text (the prompt is fixed per
  client), at most ``max_cache_entries``, oldest evicted first; a hit costs no request.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import logging
import os
import re
import threading
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

from omni_grpo.config.schema import JudgeConfig

logger = logging.getLogger(__name__)

RUBRIC = (
    "You grade the reasoning a model wrote about a video clip of people interacting. Rate each reasoning "
    "from 0 to 10 for how well it is grounded in the people in the clip: what they do (face, expression, "
    "gaze, gesture, posture), how they sound (tone, pitch, volume, laughter, pauses), what they say and "
    "to whom, and what this shows about their emotions, intentions and relationships. Reasoning that "
    "could have been written without watching the clip, or that is a list of keywords, gets 0 to 2."
)

_REPLY_LIST = re.compile(r"\[[^\[\]]*\]")
_REPLY_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


class JudgeError(RuntimeError):
    """The judge cannot run at all (for example its key variable is unset)."""


class JudgeClient:
    """Rates reasoning texts in [0, 1] with the judge; None where the judge failed."""

    def __init__(self, config: JudgeConfig) -> None:
        self.config = config
        self._cache: dict[str, float] = {}
        self._lock = threading.Lock()
        self.stats = {"requests": 0, "failed_requests": 0, "failed_items": 0, "cache_hits": 0}

    def __repr__(self) -> str:
        return f"JudgeClient({self.config!r})"

    def rate(self, texts: list[str]) -> list[float | None]:
        """Ratings in [0, 1] (judge's 0–10 divided by 10), aligned with ``texts``; None on failure."""
        todo = [t for t in dict.fromkeys(texts) if t not in self._cache]
        fresh: dict[str, float | None] = {}
        if todo:
            headers = self._headers()
            size = self.config.batch_size
            batches = [todo[i : i + size] for i in range(0, len(todo), size)]
            for batch, ratings in zip(batches, _run(self._rate_batches(batches, headers))):
                fresh.update(zip(batch, ratings))
        out: list[float | None] = []
        for text in texts:
            if text in fresh:
                out.append(fresh[text])
            else:
                with self._lock:
                    self.stats["cache_hits"] += 1
                    out.append(self._cache.get(text))
        for text, rating in fresh.items():
            if rating is not None:
                self._remember(text, rating)
        return out

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        name = self.config.api_key_env
        if name:  # empty: no key is sent
            key = os.environ.get(name)
            if not key:
                raise JudgeError(f"judge: environment variable {name} (named by api_key_env) is not set or empty")
            headers["Authorization"] = "Bearer " + key
        return headers

    async def _rate_batches(self, batches: list[list[str]], headers: dict[str, str]) -> list[list[float | None]]:
        loop = asyncio.get_running_loop()
        with ThreadPoolExecutor(max_workers=min(self.config.concurrency, len(batches))) as pool:
            jobs = [loop.run_in_executor(pool, self._request, batch, headers) for batch in batches]
            return list(await asyncio.gather(*jobs))

    def _request(self, batch: list[str], headers: dict[str, str]) -> list[float | None]:
        with self._lock:
            self.stats["requests"] += 1
        body = json.dumps(
            {
                "model": self.config.model,
                "messages": [{"role": "system", "content": RUBRIC}, {"role": "user", "content": build_prompt(batch)}],
                "temperature": self.config.temperature,
                "max_tokens": 16 + 8 * len(batch),
            }
        ).encode("utf-8")
        request = urllib.request.Request(self.config.url, data=body, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.config.timeout_s) as response:
                raw = response.read()
            return parse_ratings(raw, len(batch))
        except (OSError, ValueError, http.client.HTTPException) as exc:
            with self._lock:
                self.stats["failed_requests"] += 1
                self.stats["failed_items"] += len(batch)
            logger.warning(
                "people_focus judge (model %s) failed: %s; %d text(s) scored None",
                self.config.model,
                _describe(exc, headers),
                len(batch),
            )
            return [None] * len(batch)

    def _remember(self, text: str, rating: float) -> None:
        with self._lock:
            self._cache[text] = rating
            while len(self._cache) > self.config.max_cache_entries:
                self._cache.pop(next(iter(self._cache)))


def build_prompt(texts: list[str]) -> str:
    """The user message for one request: the reply format, then one block per reasoning text."""
    blocks = "\n\n".join(f"<reasoning {k}>\n{text}\n</reasoning {k}>" for k, text in enumerate(texts, 1))
    return (
        f"Rate each of the {len(texts)} reasoning block(s) below. Reply with only a JSON list of "
        f"{len(texts)} integer(s) from 0 to 10, one per block, in order.\n\n{blocks}"
    )


def parse_ratings(raw: bytes, n: int) -> list[float]:
    """Ratings in [0, 1] from a chat-completions reply body; ValueError if malformed."""
    try:
        content = json.loads(raw)["choices"][0]["message"]["content"]
    except (ValueError, KeyError, IndexError, TypeError) as exc:
        raise ValueError(f"reply is not a chat-completions JSON object ({type(exc).__name__})") from None
    if not isinstance(content, str):
        raise ValueError("reply content is not text")
    found = _REPLY_LIST.search(content)
    if found:
        try:
            values = json.loads(found.group(0))
        except ValueError:
            raise ValueError("reply list is not valid JSON") from None
    elif n == 1 and _REPLY_NUMBER.fullmatch(content.strip()):
        values = [float(content.strip())]
    else:
        raise ValueError(f"reply holds no list of {n} rating(s)")
    if not isinstance(values, list) or len(values) != n:
        raise ValueError(f"reply holds {len(values) if isinstance(values, list) else 'no'} rating(s), expected {n}")
    ratings = []
    for value in values:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 10:
            raise ValueError("a rating is not a number in 0..10")
        ratings.append(float(value) / 10.0)
    return ratings


def _describe(exc: BaseException, headers: dict[str, str]) -> str:
    """A one-line reason that never repeats a response body or a header value."""
    if isinstance(exc, urllib.error.HTTPError):
        text = f"HTTP {exc.code}"
    elif isinstance(exc, TimeoutError) or "timed out" in str(exc):
        text = "timed out"
    elif isinstance(exc, urllib.error.URLError):
        text = f"connection error ({type(exc.reason).__name__})"
    else:
        text = f"{type(exc).__name__}: {exc}"
    secret = headers.get("Authorization", "").removeprefix("Bearer ")
    return text.replace(secret, "***") if secret else text


def _run(coro):
    """Run a coroutine to completion, also when called from inside a running event loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coro).result()
