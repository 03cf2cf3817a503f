"""A minimal client for an OpenAI-compatible chat API (``POST {base}/chat/completions``).

Any server speaking that API works as a teacher: a hosted model, a local vLLM, or our own
``server.py --api``. Standard library only (``urllib``), safe to call from several threads.
HTTP 429 and 5xx answers, timeouts and dropped connections are retried with exponential
back-off (honouring ``Retry-After``); any other HTTP error (a wrong key, model or URL) is
raised at once as ``TeacherError``, as is a request still failing after its retries.
"""

from __future__ import annotations

import json
import random
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from http.client import HTTPException
from urllib.parse import urlsplit


class TeacherError(RuntimeError):
    """The teacher cannot be used: a non-retryable HTTP error, or retries exhausted."""

    def __init__(self, message: str, attempts: int = 0):
        super().__init__(message)
        self.attempts = attempts  # HTTP attempts made for the failed request


@dataclass
class Reply:
    """One chat completion: its text (None when the body was not a chat completion) and how
    many HTTP attempts it took (``attempts - 1`` retries)."""

    content: str | None
    attempts: int
    finish_reason: str | None = None


def chat_completions_url(url: str) -> str:
    """``http://host:8000`` -> ``http://host:8000/v1/chat/completions``; a ``.../v1`` base gets
    ``/chat/completions``; a full ``.../chat/completions`` URL is kept as it is."""
    url = url.rstrip("/")
    if url.endswith("/chat/completions"):
        return url
    if urlsplit(url).path in ("", "/"):
        return url + "/v1/chat/completions"
    return url + "/chat/completions"


class ChatClient:
    """``complete(messages)`` against one model of an OpenAI-compatible server."""

    def __init__(self, url: str, model: str, api_key: str | None = None, *, timeout: float = 120.0,
                 max_retries: int = 5, backoff: float = 1.0, max_backoff: float = 60.0,
                 sleep: Callable[[float], None] = time.sleep):
        if urlsplit(url).scheme not in ("http", "https"):
            raise TeacherError(f"--teacher_url {url}: expected an http:// or https:// URL", 0)
        self.url = chat_completions_url(url)
        self.model = model
        self.api_key = api_key
        self.timeout = timeout
        self.max_retries = max_retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.sleep = sleep

    def _delay(self, attempt: int, retry_after: str | None) -> float:
        if retry_after is not None:
            try:
                return min(self.max_backoff, max(0.0, float(retry_after)))
            except ValueError:
                pass  # an HTTP date: fall back to our own schedule
        return min(self.max_backoff, self.backoff * 2 ** attempt) * random.uniform(0.5, 1.0)

    def complete(self, messages: list[dict], **params) -> Reply:
        """Send one chat request (``params``: temperature, top_p, max_tokens, ... None values are
        left out) and return the first choice's message content."""
        body = {"model": self.model, "messages": messages, **{k: v for k, v in params.items() if v is not None}}
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        data = json.dumps(body, ensure_ascii=False).encode("utf-8")
        for attempt in range(self.max_retries + 1):
            retry_after = None
            try:
                request = urllib.request.Request(self.url, data=data, headers=headers, method="POST")
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    raw = response.read()
                return _reply(raw, attempt + 1)
            except urllib.error.HTTPError as e:
                detail = e.read()[:300].decode("utf-8", "replace").strip()
                if e.code != 429 and not 500 <= e.code < 600:
                    raise TeacherError(f"{self.url}: HTTP {e.code} {e.reason}: {detail}", attempt + 1) from e
                problem, retry_after = f"HTTP {e.code} {detail}", e.headers.get("Retry-After")
            except (urllib.error.URLError, TimeoutError, ConnectionError, HTTPException) as e:
                problem = f"{type(e).__name__}: {getattr(e, 'reason', e)}"
            if attempt == self.max_retries:
                raise TeacherError(f"{self.url}: still failing after {attempt + 1} attempts; last: {problem}",
                                   attempt + 1)
            self.sleep(self._delay(attempt, retry_after))
        raise AssertionError("unreachable")


def _reply(raw: bytes, attempts: int) -> Reply:
    try:
        choice = json.loads(raw)["choices"][0]
        content = choice["message"]["content"]
    except (ValueError, KeyError, IndexError, TypeError):
        return Reply(None, attempts)
    return Reply(content if isinstance(content, str) else None, attempts, choice.get("finish_reason"))
