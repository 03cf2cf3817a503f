"""Request bodies of the HTTP API in OpenAI's shapes (pydantic), and the parts of its answers.

Chat completions, completions and the original project's ``/generate`` route; the shapes and
limits follow OpenAI's API reference (chat ``logprobs`` / ``top_logprobs`` <= 20, completions
``logprobs`` as the legacy ``{tokens, token_logprobs, top_logprobs, text_offset}`` object,
at most 4 stop strings). Anything a request may not set is refused (``extra="forbid"``).
"""

from __future__ import annotations

import hashlib
from typing import Annotated, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field

from .chat import make_record, model_history
from .scoring import TokenScore, token_bytes, token_text

STOP_LIMIT = 4  # stop strings per request, as OpenAI allows
N_LIMIT = 16  # choices per request
TOP_LOGPROBS_LIMIT = 20  # as OpenAI allows for chat completions


class ApiError(Exception):
    def __init__(self, status: int, message: str, code: str | None = None, param: str | None = None):
        super().__init__(message)
        self.status, self.message, self.code, self.param = status, message, code, param


class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class Message(BaseModel):
    model_config = ConfigDict(extra="ignore")  # e.g. "name"
    role: Literal["system", "developer", "user", "assistant"]
    content: Union[str, list[TextPart], None]  # required; null (an assistant's) counts as empty

    def text(self) -> str:
        if self.content is None:
            return ""
        return self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)


class Sampling(BaseModel):
    """Generation settings a request may override (the server's flags are the defaults)."""

    model_config = ConfigDict(extra="forbid")
    temperature: Optional[float] = Field(None, ge=0, le=2, description="0: greedy")
    top_p: Optional[float] = Field(None, gt=0, le=1)
    top_k: Optional[int] = Field(None, ge=0)
    repetition_penalty: Optional[float] = Field(None, gt=0, le=10)
    seed: Optional[int] = None
    stop: Optional[Union[str, list[str]]] = None


class StreamOptions(BaseModel):
    include_usage: bool = False


class OpenAIRequest(Sampling):
    model: Optional[str] = None
    n: int = Field(1, ge=1, le=N_LIMIT, description="choices, each sampled with its own seed (choice_seed)")
    stream: bool = False
    stream_options: Optional[StreamOptions] = None
    # Accepted for client compatibility and ignored:
    user: Optional[str] = None
    presence_penalty: Optional[float] = Field(None, ge=-2, le=2)
    frequency_penalty: Optional[float] = Field(None, ge=-2, le=2)


class ChatRequest(OpenAIRequest):
    messages: list[Message] = Field(min_length=1)
    max_tokens: Optional[int] = Field(None, ge=1)
    max_completion_tokens: Optional[int] = Field(None, ge=1)
    logprobs: bool = False
    top_logprobs: Optional[int] = Field(None, ge=0, le=TOP_LOGPROBS_LIMIT)


TokenId = Annotated[int, Field(ge=0)]


class CompletionRequest(OpenAIRequest):
    prompt: Union[str, list[str], list[TokenId], list[list[TokenId]]]
    max_tokens: Optional[int] = Field(None, ge=0, description="0: no new tokens (with echo: score the prompt)")
    echo: bool = False
    logprobs: Optional[int] = Field(None, ge=0, le=TOP_LOGPROBS_LIMIT)
    best_of: Optional[int] = Field(None, ge=1)


class GenerateRequest(Sampling):
    instruction: str = Field(min_length=1)
    input: str = ""
    history: list[tuple[str, str]] = []
    system: Optional[str] = None
    max_new_tokens: Optional[int] = Field(None, ge=1)
    do_sample: Optional[bool] = None


def chat_record(messages: list[Message]) -> tuple[dict, int]:
    """OpenAI messages -> ``(unified record, turns left out)``.

    System and developer messages become the record's ``system`` text; user/assistant turns
    become ``history`` as every chat surface builds it (:func:`alpaca_cot.chat.model_history`):
    a user message answered by an empty assistant message, or by none (the next message is a
    user's again), is left out with its reply, and counted.

    Raises:
        ApiError: no user message last, or an assistant message that answers nothing.
    """
    system = "\n".join(m.text() for m in messages if m.role in ("system", "developer")) or None
    turns: list[list] = []  # [user, reply]
    for m in (m for m in messages if m.role in ("user", "assistant")):
        if m.role == "user":
            turns.append([m.text(), ""])
        elif not turns or len(turns[-1]) == 3:
            raise ApiError(400, "an assistant message must answer the user message before it "
                                "(two assistant messages in a row, or one before any user message)", param="messages")
        else:
            turns[-1][1] = m.text()
            turns[-1].append(True)  # answered
    if not turns or len(turns[-1]) == 3:
        raise ApiError(400, "the last message (system messages aside) must be the user's", param="messages")
    if not turns[-1][0].strip():
        raise ApiError(400, "the last user message is empty: there is nothing to answer", param="messages")
    history, left_out = model_history([(user, reply) for user, reply, *_ in turns[:-1]])
    return make_record(turns[-1][0], history, system), left_out


def choice_seed(seed: int | None, index: int) -> int | None:
    """The seed of choice ``index`` of a request seeded with ``seed``: the request's own for the first
    choice, a SHA-256-derived one for the others (so seeds of different requests do not overlap)."""
    if seed is None or index == 0:
        return seed
    return int.from_bytes(hashlib.sha256(f"{seed}:{index}".encode()).digest()[:8], "big") >> 1


def stop_list(stop: str | list[str] | None) -> list[str]:
    stops = [stop] if isinstance(stop, str) else list(stop or [])
    if len(stops) > STOP_LIMIT or not all(stops):
        raise ApiError(400, f"stop: at most {STOP_LIMIT} non-empty strings", param="stop")
    return stops


def chat_logprobs(tokenizer, scores: list[TokenScore], top: int) -> dict:
    """The ``logprobs`` object of a chat completion choice: ``{"content": [...], "refusal": None}``."""
    def entry(token: int, logprob: float) -> dict:
        raw = token_bytes(tokenizer, token)
        return {"token": token_text(raw), "logprob": logprob, "bytes": list(raw)}

    return {"content": [{**entry(s.token, s.logprob), "top_logprobs": [entry(t, v) for t, v in s.top[:top]]}
                        for s in scores], "refusal": None}


def completion_logprobs(tokenizer, tokens: list[int], scores: list[TokenScore | None], top: int) -> dict:
    """The legacy ``logprobs`` object of a completion choice, one entry per token of its ``text``.

    ``scores[i]`` scores ``tokens[i]``; ``None`` is a token with no context to score it (the
    first token of an echoed prompt). ``top_logprobs`` hold the ``top`` most likely tokens and
    the chosen one; ``text_offset`` is each token's character offset in the choice's text.
    """
    out: dict = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
    raw_so_far = b""
    for token, score in zip(tokens, scores):
        out["text_offset"].append(len(raw_so_far.decode("utf-8", errors="ignore")))
        raw = token_bytes(tokenizer, token)
        raw_so_far += raw
        out["tokens"].append(token_text(raw))
        if score is None:
            out["token_logprobs"].append(None)
            out["top_logprobs"].append(None)
            continue
        out["token_logprobs"].append(score.logprob)
        ranked = {token_text(token_bytes(tokenizer, t)): v for t, v in score.top[:top]}
        ranked.setdefault(token_text(raw), score.logprob)
        out["top_logprobs"].append(ranked)
    return out
