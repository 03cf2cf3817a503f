"""Multi-turn chat over a ``Generator``, and the terminal loop of ``server.py``.

The conversation is kept as unified-record ``history`` pairs ``[[user, assistant], ...]``, so
every turn is rendered by the model's own template exactly as multi-turn training data is.
When a conversation outgrows the model's context, the oldest turns are dropped.

One rule for every chat surface (this terminal chat, the web page ``webui.py``, the HTTP API
``api.py``), applied by :func:`model_history`: a turn goes back to the model only when its
reply finished and is not empty. A reply stopped by the user (Ctrl-C, the page's Stop button)
or an empty one is left out together with the message it answered, and the surface says so.
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


def model_history(turns) -> tuple[list[list[str]], int]:
    """The history a chat surface sends to the model, and how many turns it left out.

    Args:
        turns: the conversation so far, oldest first; each turn is ``(user, reply)`` or
            ``(user, reply, finished)`` where ``finished`` is False for a reply that was stopped
            before its end (a pair counts as finished).

    Returns:
        ``(pairs, left_out)``: ``[[user, reply], ...]`` of the finished turns with a non-empty
        reply (whitespace only counts as empty), and the number of other turns.
    """
    pairs, left_out = [], 0
    for turn in turns:
        user, reply, finished = (*turn, True)[:3]
        if finished and (reply or "").strip():
            pairs.append([user, reply])
        else:
            left_out += 1
    return pairs, left_out


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
        self.last_kept = True  # whether the last reply went into the history

    def clear(self) -> None:
        self.history = []

    def record(self, message: str) -> dict:
        budget = self.gen_kwargs.get("max_new_tokens", 0)
        self.history = fit_history(self.generator, message, self.history, budget, self.system)
        return make_record(message, self.history, self.system)

    def stream(self, message: str, stop: threading.Event | None = None) -> Iterator[str]:
        """Reply piece by piece. The turn is remembered as :func:`model_history` says: not when the
        reply was cut short (``stop`` set, ``close()``) or came out empty."""
        pieces: list[str] = []
        for piece in self.generator.stream(self.record(message), self.gen_kwargs, stop=stop):
            pieces.append(piece)
            yield piece
        finished = stop is None or not stop.is_set()
        kept = model_history([(message, "".join(pieces), finished)])[0]
        self.history += kept
        self.last_kept = bool(kept)


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
        note = ("\n(reply stopped; not kept in the conversation)" if stop.is_set() else
                "(empty reply; not kept in the conversation)" if not session.last_kept else "")
        print(note, file=out, flush=True)


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
