"""An OpenAI-compatible HTTP API over a ``Generator`` (FastAPI; ``server.py --api`` serves it with uvicorn).

Routes: ``POST /v1/chat/completions`` (the request's messages rendered by the model's template),
``POST /v1/completions`` (a raw prompt: text or token ids, no template), both streaming as
server-sent events ending in ``data: [DONE]`` or answering in one JSON body, with ``n`` choices
and log-probabilities; ``GET /v1/models``; and ``POST /generate`` (an instruction in,
``{"response": ...}`` out, like the original project's web service). Request shapes are in
``api_schema.py``; every error is a 4xx/5xx JSON body in OpenAI's ``{"error": {...}}`` shape.

Concurrent requests (and the choices of one request) are generated together, up to
``max_batch_size`` rows on one generating thread (``alpaca_cot/batching.py``); what that cannot
run goes one at a time, first come first served (an ``asyncio.Lock``), in a worker thread.

Log-probabilities are those of the model as served (adapter on, no sampling settings applied),
computed after generation by one forward pass over the prompt and the reply
(``alpaca_cot/scoring.py``). With ``stream`` they come in each choice's last chunk.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import time
import uuid
from dataclasses import replace

import anyio
import torch
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.concurrency import iterate_in_threadpool
from starlette.exceptions import HTTPException

from .api_schema import (ApiError, ChatRequest, CompletionRequest, GenerateRequest, Sampling, chat_logprobs,
                         chat_record, choice_seed, completion_logprobs, stop_list)
from .batching import supports_refill
from .chat import context_length, make_record, model_history
from .scoring import token_logprobs

logger = logging.getLogger(__name__)


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
                stats["cut"] = True
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
    """Runs generation and scoring off the event loop: concurrent requests share a batch where the model allows it.

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
        return args.generate_kwargs(), stop_list(req.stop)

    def prompt_of(self, record: dict) -> list[int]:
        """The record's prompt token ids, rendered by the model's template."""
        try:
            return self.generator.prompt_ids([record])[0]
        except ValueError as e:
            raise ApiError(400, str(e), param="messages") from e

    def check_context(self, prompt_tokens: int, max_new_tokens: int) -> None:
        limit = context_length(self.generator)
        if limit and prompt_tokens + max_new_tokens > limit:
            raise ApiError(400, f"the prompt is {prompt_tokens} tokens and {max_new_tokens} new tokens were asked "
                                f"for, but the model's context is {limit} tokens", code="context_length_exceeded")

    async def stream(self, prompt: list[int], kwargs: dict, stops: list[str], seed: int | None, stats: dict,
                     use_template: bool = True):
        """Yield a reply's pieces; waits its turn first.

        ``stats`` gets ``finish_reason``, ``text`` (the reply as sent) and ``token_ids`` (the reply's
        tokens; re-tokenized from the text when a request stop string cut it). Without the template
        (completions) a reply that ended with the end-of-sequence token keeps it in ``token_ids``, as
        OpenAI-style servers do: a client scoring ``echo`` + ``max_tokens: 1`` (lm-eval) drops the
        last token as the generated one, which would otherwise be the prompt's own last token.
        """
        batched = self.server is not None and supports_refill(self.generator.model, kwargs)
        async with contextlib.nullcontext() if batched else self.lock:
            if seed is not None and not batched:
                torch.manual_seed(seed)
            inner: dict = {}
            server = self.server if batched else None
            pieces = cut_at_stops(self.generator.stream(None, kwargs, inner, server=server, seed=seed, prompt=prompt,
                                                        use_template=use_template), stops, stats)
            text = ""
            try:
                async for piece in iterate_in_threadpool(pieces):
                    text += piece
                    yield piece
            finally:
                pieces.close()  # ends generation early when the client went away
            stats.setdefault("finish_reason", inner.get("finish_reason", "stop"))
            stats["text"] = text
            if "token_ids" in inner and not stats.get("cut"):
                stats["token_ids"] = self._kept_tokens(inner["token_ids"], text, use_template)
            else:
                stats["token_ids"] = self.generator.tokenizer(text, add_special_tokens=False)["input_ids"]
            eos = self.generator.tokenizer.eos_token_id
            if not use_template and stats["finish_reason"] == "stop" and not stats.get("cut") and eos is not None:
                stats["token_ids"].append(eos)  # no stop strings without the template: it stopped at EOS

    def _kept_tokens(self, ids: list[int], text: str, use_template: bool) -> list[int]:
        """The first tokens of ``ids`` that make up ``text`` (the template's stop string and what
        followed it, or trailing blanks, are not part of the reply)."""
        decode = self.generator.tokenizer.decode
        for k in range(len(ids) + 1):
            shown = decode(ids[:k], skip_special_tokens=True)
            shown = self.generator.decode_text(shown) if use_template else shown
            if len(shown) >= len(text) and shown.startswith(text):
                return ids[:k]
        return ids

    async def score(self, ids: list[int], start: int, top: int):
        """:func:`alpaca_cot.scoring.token_logprobs` in a worker thread (one at a time with unbatched generation)."""
        async with contextlib.nullcontext() if self.server is not None else self.lock:
            return await anyio.to_thread.run_sync(lambda: token_logprobs(self.generator.model, ids, start, top))


async def merged(streams: list):
    """Yield ``(index, piece)`` from several async iterators as pieces come, then ``(index, None)``
    when stream ``index`` ends. An error in one stream ends them all and is raised."""
    queue: asyncio.Queue = asyncio.Queue()

    async def pump(index, stream):
        try:
            async for piece in stream:
                await queue.put((index, piece, None))
            await queue.put((index, None, None))
        except Exception as e:  # noqa: BLE001 - handed to the consumer
            await queue.put((index, None, e))
        finally:
            with anyio.CancelScope(shield=True):
                await stream.aclose()

    tasks = [asyncio.create_task(pump(i, s)) for i, s in enumerate(streams)]
    ended = 0
    try:
        while ended < len(tasks):
            index, piece, error = await queue.get()
            if error is not None:
                raise error
            ended += piece is None
            yield index, piece
    finally:
        for task in tasks:
            task.cancel()
        with anyio.CancelScope(shield=True):
            await asyncio.gather(*tasks, return_exceptions=True)


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


def _sse(body: dict) -> str:
    return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"


def _sse_response(events) -> StreamingResponse:
    async def guarded():
        try:
            async for event in events:
                yield event
        except Exception as e:  # noqa: BLE001 - the status line is sent already: report in the stream
            yield _sse(_error_body(500, f"generation failed: {type(e).__name__}: {e}"))
        yield "data: [DONE]\n\n"

    return StreamingResponse(guarded(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


def _usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def create_app(generator, defaults, model_id: str, api_key: str | None = None, max_batch_size: int = 8):
    """The FastAPI app serving ``generator``; ``defaults`` are the GenerationArguments of the flags."""
    engine = Engine(generator, defaults, max_batch_size)
    tokenizer = generator.tokenizer
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

    def head(kind: str) -> dict:
        return {"id": f"{kind}-{uuid.uuid4().hex}", "created": int(time.time()), "model": model_id}

    @app.post("/v1/chat/completions")
    async def chat_completions(req: ChatRequest):
        record, left_out = chat_record(req.messages)
        if left_out:
            logger.warning("chat request: %d turn(s) with an empty or missing assistant reply left out of the "
                           "history", left_out)
        if req.top_logprobs is not None and not req.logprobs:
            raise ApiError(400, "top_logprobs needs logprobs: true", param="top_logprobs")
        top = req.top_logprobs or 0
        kwargs, stops = engine.settings(req, req.max_completion_tokens or req.max_tokens)
        prompt = engine.prompt_of(record)
        engine.check_context(len(prompt), kwargs["max_new_tokens"])
        stats = [{} for _ in range(req.n)]
        streams = [engine.stream(prompt, kwargs, stops, choice_seed(req.seed, j), stats[j]) for j in range(req.n)]
        base = {**head("chatcmpl"), "object": "chat.completion"}

        async def logprobs_of(j: int):
            if not req.logprobs:
                return None
            scores = await engine.score(prompt + stats[j]["token_ids"], len(prompt), top)
            return chat_logprobs(tokenizer, scores, top)

        def usage() -> dict:
            return _usage(len(prompt), sum(len(s["token_ids"]) for s in stats))

        if not req.stream:
            async for _ in merged(streams):
                pass
            choices = [{"index": j, "message": {"role": "assistant", "content": stats[j]["text"]},
                        "logprobs": await logprobs_of(j), "finish_reason": stats[j]["finish_reason"]}
                       for j in range(req.n)]
            return {**base, "choices": choices, "usage": usage()}
        chunk_head = {**base, "object": "chat.completion.chunk"}

        def chunk(j: int, delta: dict, finish: str | None = None, logprobs: dict | None = None) -> str:
            choice = {"index": j, "delta": delta, "logprobs": logprobs, "finish_reason": finish}
            return _sse({**chunk_head, "choices": [choice]})

        async def events():
            for j in range(req.n):
                yield chunk(j, {"role": "assistant", "content": ""})
            async for j, piece in merged(streams):
                if piece is not None:
                    yield chunk(j, {"content": piece})
                    continue
                logprobs = await logprobs_of(j)
                if logprobs is not None:
                    yield chunk(j, {"content": ""}, logprobs=logprobs)
                yield chunk(j, {}, stats[j]["finish_reason"])
            if req.stream_options and req.stream_options.include_usage:
                yield _sse({**chunk_head, "choices": [], "usage": usage()})

        return _sse_response(events())

    def completion_prompts(prompt) -> list[tuple[list[int], str]]:
        """``(token ids, text)`` per prompt of a completions request (text prompts: the tokenizer's
        own special tokens added, as in training data; token prompts as given)."""
        if isinstance(prompt, str):
            prompt = [prompt]
        if not prompt:
            raise ApiError(400, "prompt: an empty list", param="prompt")
        vocab = generator.model.get_input_embeddings().num_embeddings
        out = []
        for p in prompt if prompt and not isinstance(prompt[0], int) else [prompt]:
            if isinstance(p, str):
                ids, text = tokenizer(p)["input_ids"], p
            else:
                ids, text = list(p), tokenizer.decode(list(p))
            if not ids:
                raise ApiError(400, "prompt: empty (the model needs at least one token to continue)", param="prompt")
            if max(ids) >= vocab:
                raise ApiError(400, f"prompt: token id {max(ids)} is outside the model's vocabulary of {vocab}",
                               param="prompt")
            out.append((ids, text))
        return out

    @app.post("/v1/completions")
    async def completions(req: CompletionRequest):
        if req.best_of not in (None, req.n):
            raise ApiError(400, "best_of must equal n: the server does not rank choices", param="best_of")
        prompts = completion_prompts(req.prompt)
        new_tokens = defaults.max_new_tokens if req.max_tokens is None else req.max_tokens
        kwargs, stops = engine.settings(req, new_tokens or None)
        for ids, _ in prompts:
            engine.check_context(len(ids), new_tokens)
        top = req.logprobs or 0
        jobs = [(ids, text, j) for ids, text in prompts for j in range(req.n)]  # choice index = prompt * n + j
        stats = [{} for _ in jobs]

        async def nothing():
            return
            yield

        def stream_of(i: int):
            ids, _, j = jobs[i]
            if new_tokens == 0:
                stats[i].update(text="", token_ids=[], finish_reason="length")
                return nothing()
            return engine.stream(ids, kwargs, stops, choice_seed(req.seed, j), stats[i], use_template=False)

        streams = [stream_of(i) for i in range(len(jobs))]

        async def logprobs_of(i: int):
            if req.logprobs is None:
                return None
            ids, _, _ = jobs[i]
            full = ids + stats[i]["token_ids"]
            start = 1 if req.echo else len(ids)
            scores = await engine.score(full, start, top) if start < len(full) else []
            if req.echo:
                return completion_logprobs(tokenizer, full, [None] + scores, top)
            return completion_logprobs(tokenizer, stats[i]["token_ids"], scores, top)

        def usage() -> dict:
            return _usage(sum(len(ids) for ids, _ in prompts), sum(len(s["token_ids"]) for s in stats))

        base = {**head("cmpl"), "object": "text_completion"}
        if not req.stream:
            async for _ in merged(streams):
                pass
            choices = [{"index": i, "text": (jobs[i][1] if req.echo else "") + stats[i]["text"],
                        "logprobs": await logprobs_of(i), "finish_reason": stats[i]["finish_reason"]}
                       for i in range(len(jobs))]
            return {**base, "choices": choices, "usage": usage()}

        def chunk(i: int, text: str, finish: str | None = None, logprobs: dict | None = None) -> str:
            return _sse({**base, "choices": [{"index": i, "text": text, "logprobs": logprobs,
                                              "finish_reason": finish}]})

        async def events():
            if req.echo:
                for i, (_, text, _) in enumerate(jobs):
                    yield chunk(i, text)
            async for i, piece in merged(streams):
                if piece is not None:
                    yield chunk(i, piece)
                else:
                    yield chunk(i, "", stats[i]["finish_reason"], await logprobs_of(i))
            if req.stream_options and req.stream_options.include_usage:
                yield _sse({**base, "choices": [], "usage": usage()})

        return _sse_response(events())

    @app.post("/generate")
    async def generate(req: GenerateRequest):
        history, left_out = model_history([list(p) for p in req.history])
        if left_out:
            logger.warning("/generate: %d history turn(s) with an empty reply left out", left_out)
        record = make_record(req.instruction, history, req.system)
        record["input"] = req.input
        kwargs, stops = engine.settings(req, req.max_new_tokens, req.do_sample)
        prompt = engine.prompt_of(record)
        engine.check_context(len(prompt), kwargs["max_new_tokens"])
        stats: dict = {}
        text = "".join([piece async for piece in engine.stream(prompt, kwargs, stops, req.seed, stats)])
        return {"response": text, "model": model_id, "finish_reason": stats["finish_reason"],
                "usage": _usage(len(prompt), len(stats["token_ids"]))}

    return app
