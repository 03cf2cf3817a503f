"""Multi-turn chat over a ``Generator``, and the terminal loop of ``server.py``.

The conversation is kept as unified-record ``history`` pairs ``[[user, assistant], ...]``, so
every turn is rendered by the model's own template exactly as multi-turn training data is.
When a conversation outgrows the model's context, the oldest turns are dropped.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from typing import Callable, Iterator, TextIO

HELP = ("Commands: 'clear' (or /clear) forgets the conversation, 'exit' (or /exit, quit, Ctrl-D) leaves, "
        "'help' shows this. Ctrl-C stops a reply.")
CLEAR = {"clear", "/clear", "/reset"}
EXIT = {"exit", "/exit", "quit", "/quit"}
HELP_WORDS = {"help", "/help"}


def context_length(generator) -> int | None:
    config = getattr(generator.model, "config", None)
    return getattr(config, "max_position_embeddings", None)


def make_record(message: str, history: list[list[str]], system: str | None = None) -> dict:
    record = {"instruction": message, "input": "", "history": [list(pair) for pair in history]}
    if system:
        record["system"] = system
    return record


def fit_history(generator, message: str, history: list[list[str]], max_new_tokens: int,
                system: str | None = None) -> list[list[str]]:
    """The most recent turns of ``history`` whose prompt leaves room for ``max_new_tokens``."""
    limit = context_length(generator)
    if not limit:
        return history
    kept = list(history)
    while kept and len(generator.prompt_ids([make_record(message, kept, system)])[0]) + max_new_tokens > limit:
        kept.pop(0)
    return kept


class ChatSession:
    """One conversation: ``stream(message)`` yields the reply and, once complete, remembers the turn."""

    def __init__(self, generator, gen_kwargs: dict, system: str | None = None):
        self.generator = generator
        self.gen_kwargs = gen_kwargs
        self.system = system
        self.history: list[list[str]] = []

    def clear(self) -> None:
        self.history = []

    def record(self, message: str) -> dict:
        budget = self.gen_kwargs.get("max_new_tokens", 0)
        self.history = fit_history(self.generator, message, self.history, budget, self.system)
        return make_record(message, self.history, self.system)

    def stream(self, message: str, stop: threading.Event | None = None) -> Iterator[str]:
        """Reply piece by piece; a reply cut short (``stop`` set, ``close()``) is not remembered."""
        pieces: list[str] = []
        for piece in self.generator.stream(self.record(message), self.gen_kwargs, stop=stop):
            pieces.append(piece)
            yield piece
        if stop is None or not stop.is_set():
            self.history.append([message, "".join(pieces)])


def run_terminal(session: ChatSession, read: Callable[[str], str] = input, out: TextIO = sys.stdout) -> None:
    """Read messages until exit; stream each reply. Ctrl-C stops a reply, or leaves at the prompt."""
    print(f"Chatting with {session.generator.name}. {HELP}", file=out, flush=True)
    while True:
        try:
            message = read("\nUser: ").strip()
        except (EOFError, KeyboardInterrupt):
            print("\nbye", file=out, flush=True)
            return
        if not message:
            continue
        if message.lower() in EXIT:
            print("bye", file=out, flush=True)
            return
        if message.lower() in CLEAR:
            session.clear()
            print("(conversation cleared)", file=out, flush=True)
            continue
        if message.lower() in HELP_WORDS:
            print(HELP, file=out, flush=True)
            continue
        stop = threading.Event()
        with _ctrl_c_sets(stop):
            print("Assistant: ", end="", file=out, flush=True)
            for piece in session.stream(message, stop):
                print(piece, end="", file=out, flush=True)
        print("\n(reply stopped; not kept in the conversation)" if stop.is_set() else "", file=out, flush=True)


@contextlib.contextmanager
def _ctrl_c_sets(event: threading.Event):
    """While streaming, Ctrl-C sets ``event`` (generation stops at the next token) instead of
    raising KeyboardInterrupt at an arbitrary point (inside a thread start, a tokenizer call, ...)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, lambda signum, frame: event.set())
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
