"""An OpenAI-compatible HTTP API over a ``Generator`` (FastAPI; ``server.py --api`` serves it with uvicorn).

Routes: ``POST /v1/chat/completions`` (streaming as server-sent events ending in
``data: [DONE]``, or one JSON answer), ``GET /v1/models``, and ``POST /generate`` (an
instruction in, ``{"response": ...}`` out, like the original project's web service).
Requests are validated with pydantic and every error is a 4xx/5xx JSON body in OpenAI's
``{"error": {...}}`` shape. Concurrent requests are generated together, up to
``max_batch_size`` rows on one generating thread (``alpaca_cot/batching.py``); what that
cannot run goes one request at a time, first come first served (an ``asyncio.Lock``), in a
worker thread. Either way the server keeps accepting connections and answers every request.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import time
import uuid
from dataclasses import replace
from typing import Literal, Optional, Union

import anyio
import torch
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import iterate_in_threadpool
from starlette.exceptions import HTTPException

from .batching import supports_refill
from .chat import context_length, make_record

STOP_LIMIT = 4  # stop strings per request, as OpenAI allows


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
    content: Union[str, list[TextPart]]

    def text(self) -> str:
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


class ChatRequest(Sampling):
    model: Optional[str] = None
    messages: list[Message] = Field(min_length=1)
    stream: bool = False
    stream_options: Optional[StreamOptions] = None
    max_tokens: Optional[int] = Field(None, ge=1)
    max_completion_tokens: Optional[int] = Field(None, ge=1)
    n: int = Field(1, ge=1, le=1, description="one choice per request")
    # Accepted for client compatibility and ignored:
    user: Optional[str] = None
    presence_penalty: Optional[float] = Field(None, ge=-2, le=2)
    frequency_penalty: Optional[float] = Field(None, ge=-2, le=2)


class GenerateRequest(Sampling):
    instruction: str = Field(min_length=1)
    input: str = ""
    history: list[tuple[str, str]] = []
    system: Optional[str] = None
    max_new_tokens: Optional[int] = Field(None, ge=1)
    do_sample: Optional[bool] = None


def chat_record(messages: list[Message]) -> dict:
    """OpenAI messages -> a unified record (system text, ``history`` pairs, the last user turn)."""
    system = "\n".join(m.text() for m in messages if m.role in ("system", "developer")) or None
    turns = [m for m in messages if m.role in ("user", "assistant")]
    roles = [m.role for m in turns]
    if not turns or roles[-1] != "user" or any(r != ("user", "assistant")[i % 2] for i, r in enumerate(roles)):
        raise ApiError(400, "messages must alternate user and assistant turns, start and end with a user "
                            "message (system messages aside)", param="messages")
    history = [[turns[i].text(), turns[i + 1].text()] for i in range(0, len(turns) - 1, 2)]
    return make_record(turns[-1].text(), history, system)


def cut_at_stops(pieces, stops: list[str], stats: dict):
    """Pass ``pieces`` through until a stop string appears (it is never sent); closes ``pieces`` there.

    A tail that may be the start of a stop string is held back until it is decided.
    """
    text, sent = "", 0
    try:
        for piece in pieces:
            text += piece
            hits = [text.find(s) for s in stops if s in text]
            if hits:
                if min(hits) > sent:
                    yield text[sent:min(hits)]
                stats["finish_reason"] = "stop"
                return
            held = max((k for s in stops for k in range(1, len(s)) if text.endswith(s[:k])), default=0)
            if len(text) - held > sent:
                yield text[sent:len(text) - held]
                sent = len(text) - held
        if len(text) > sent:
            yield text[sent:]
    finally:
        pieces.close()


class Engine:
    """Runs generation off the event loop: concurrent requests share a batch where the model allows it.

    With ``max_batch_size`` > 1 and a model that refill batching can run, up to that many
    requests are generated together (each joins as a row frees up); other requests (e.g. beam
    search) and other models are served one at a time, first come first served.
    """

    def __init__(self, generator, defaults, max_batch_size: int = 8):
        self.generator = generator
        self.defaults = defaults  # GenerationArguments from the command line
        self.lock = asyncio.Lock()
        self.server = generator.refill_server(max_batch_size)

    def settings(self, req: Sampling, max_new_tokens: int | None, do_sample: bool | None = None):
        """Generation kwargs for a request: the server's flags overridden by the request's values."""
        args = replace(self.defaults, **{k: getattr(req, k) for k in ("top_p", "top_k", "repetition_penalty")
                                         if getattr(req, k) is not None})
        if max_new_tokens:
            args.max_new_tokens = max_new_tokens
        if do_sample is not None:
            args.do_sample, args.greedy = do_sample, not do_sample
        if req.temperature == 0:
            args.greedy = True
        elif req.temperature is not None:
            args.temperature, args.do_sample, args.greedy = req.temperature, True, False
        try:
            args.validate()
        except ValueError as e:
            raise ApiError(400, str(e).replace("--", "")) from e
        stops = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
        if len(stops) > STOP_LIMIT or not all(stops):
            raise ApiError(400, f"stop: at most {STOP_LIMIT} non-empty strings", param="stop")
        return args.generate_kwargs(), stops

    def check_context(self, record: dict, max_new_tokens: int) -> None:
        try:
            prompt = len(self.generator.prompt_ids([record])[0])
        except ValueError as e:
            raise ApiError(400, str(e), param="messages") from e
        limit = context_length(self.generator)
        if limit and prompt + max_new_tokens > limit:
            raise ApiError(400, f"the prompt is {prompt} tokens and {max_new_tokens} new tokens were asked for, but "
                                f"the model's context is {limit} tokens", code="context_length_exceeded")

    async def stream(self, record: dict, kwargs: dict, stops: list[str], seed: int | None, stats: dict):
        """Yield the reply's pieces; waits its turn first. ``stats`` gets token counts and finish_reason."""
        batched = self.server is not None and supports_refill(self.generator.model, kwargs)
        async with contextlib.nullcontext() if batched else self.lock:
            if seed is not None and not batched:
                torch.manual_seed(seed)
            inner: dict = {}
            server = self.server if batched else None
            pieces = cut_at_stops(self.generator.stream(record, kwargs, inner, server=server, seed=seed), stops, stats)
            text = ""
            try:
                async for piece in iterate_in_threadpool(pieces):
                    text += piece
                    yield piece
            finally:
                pieces.close()  # ends generation early when the client went away
            stats.setdefault("finish_reason", inner.get("finish_reason", "stop"))
            prompt = inner.get("prompt_tokens") or len(self.generator.prompt_ids([record])[0])
            # Cut at a stop string, the generator reports no count: count the text sent.
            completion = inner["completion_tokens"] if "completion_tokens" in inner else \
                len(self.generator.tokenizer(text, add_special_tokens=False)["input_ids"])
            stats["usage"] = {"prompt_tokens": prompt, "completion_tokens": completion,
                              "total_tokens": prompt + completion}


def _error_body(status: int, message: str, code: str | None = None, param: str | None = None) -> dict:
    kind = "invalid_request_error" if status < 500 else "server_error"
    if status == 401:
        kind = "authentication_error"
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def _validation_message(errors: list[dict]) -> str:
    parts = []
    for e in errors[:5]:
        where = ".".join(str(x) for x in e.get("loc", ()) if x != "body")
        if e.get("type") == "json_invalid":
            parts.append(f"invalid JSON body: {e.get('ctx', {}).get('error', e.get('msg'))}")
        elif e.get("type") == "extra_forbidden":
            parts.append(f"unsupported parameter {where!r}")
        else:
            parts.append(f"{where or 'body'}: {e.get('msg')}")
    return "; ".join(parts)


def create_app(generator, defaults, model_id: str, api_key: str | None = None, max_batch_size: int = 8):
    """The FastAPI app serving ``generator``; ``defaults`` are the GenerationArguments of the flags."""
    engine = Engine(generator, defaults, max_batch_size)
    created = int(time.time())

    def check_key(request: Request) -> None:
        if api_key is None:
            return
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not secrets.compare_digest(token.strip().encode(), api_key.encode()):
            raise ApiError(401, "missing or invalid API key: send the header 'Authorization: Bearer KEY'",
                           code="invalid_api_key")

    app = FastAPI(title="Alpaca-CoT API", dependencies=[Depends(check_key)])

    @app.exception_handler(ApiError)
    async def _api_error(request, e: ApiError):
        headers = {"WWW-Authenticate": "Bearer"} if e.status == 401 else None
        return JSONResponse(_error_body(e.status, e.message, e.code, e.param), e.status, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request, e: RequestValidationError):
        return JSONResponse(_error_body(400, _validation_message(e.errors())), 400)

    @app.exception_handler(HTTPException)
    async def _http(request, e: HTTPException):
        return JSONResponse(_error_body(e.status_code, str(e.detail)), e.status_code)

    @app.exception_handler(Exception)
    async def _crash(request, e: Exception):
        return JSONResponse(_error_body(500, f"generation failed: {type(e).__name__}: {e}"), 500)

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": model_id, "object": "model", "created": created,
                                            "owned_by": "alpaca-cot"}]}

    @app.post("/v1/chat/completions")
    async def chat_completions(req: ChatRequest):
        record = chat_record(req.messages)
        kwargs, stops = engine.settings(req, req.max_completion_tokens or req.max_tokens)
        engine.check_context(record, kwargs["max_new_tokens"])
        stats: dict = {}
        head = {"id": f"chatcmpl-{uuid.uuid4().hex}", "created": int(time.time()), "model": model_id}
        pieces = engine.stream(record, kwargs, stops, req.seed, stats)
        if not req.stream:
            text = "".join([piece async for piece in pieces])
            return {**head, "object": "chat.completion", "usage": stats["usage"],
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                                 "finish_reason": stats["finish_reason"]}]}
        usage = bool(req.stream_options and req.stream_options.include_usage)

        def chunk(delta: dict, finish: str | None = None) -> str:
            body = {**head, "object": "chat.completion.chunk",
                    "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
            return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"

        async def events():
            yield chunk({"role": "assistant", "content": ""})
            try:
                async for piece in pieces:
                    yield chunk({"content": piece})
                yield chunk({}, stats["finish_reason"])
                if usage:
                    body = {**head, "object": "chat.completion.chunk", "choices": [], "usage": stats["usage"]}
                    yield f"data: {json.dumps(body)}\n\n"
            except Exception as e:  # noqa: BLE001 - the status line is sent already: report in the stream
                yield f"data: {json.dumps(_error_body(500, f'generation failed: {e}'))}\n\n"
            finally:
                with anyio.CancelScope(shield=True):  # a dropped client cancels us: still free the lock
                    await pieces.aclose()
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    @app.post("/generate")
    async def generate(req: GenerateRequest):
        record = make_record(req.instruction, [list(p) for p in req.history], req.system)
        record["input"] = req.input
        kwargs, stops = engine.settings(req, req.max_new_tokens, req.do_sample)
        engine.check_context(record, kwargs["max_new_tokens"])
        stats: dict = {}
        text = "".join([piece async for piece in engine.stream(record, kwargs, stops, req.seed, stats)])
        return {"response": text, "model": model_id, "finish_reason": stats["finish_reason"], "usage": stats["usage"]}

    return app
