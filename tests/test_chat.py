"""server.py terminal chat: multi-turn history through the template, clear/exit commands,
Ctrl-C stopping a reply; once in-process on a tiny model, once in a pseudo-terminal on the real one."""

import io
import os
import pty
import re
import select
import signal
import sys
import threading
import time
from pathlib import Path

import pytest

from alpaca_cot.chat import ChatSession, fit_history, model_history, run_terminal
from alpaca_cot.infer import load_generator

ROOT = Path(__file__).resolve().parents[1]
GREEDY = {"max_new_tokens": 6, "do_sample": False, "num_beams": 1, "repetition_penalty": 1.0}


@pytest.fixture(scope="module")
def tiny_generator(tiny_llama_dir):
    return load_generator(model_name_or_path=tiny_llama_dir, model_type="llama", template="alpaca")


def test_second_turn_sees_the_first_and_clear_forgets(tiny_generator, monkeypatch):
    seen = []
    real = tiny_generator.stream

    def stream(record, kw, stop=None):  # the tiny random model's reply, made non-empty (empty ones are not kept)
        seen.append(record)
        yield from real(record, kw, stop=stop)
        yield f" (reply {len(seen)})"

    monkeypatch.setattr(tiny_generator, "stream", stream)
    lines = iter(["first message", "second message", "clear", "third message", "help", "exit", "never read"])
    out = io.StringIO()
    session = ChatSession(tiny_generator, GREEDY)
    run_terminal(session, read=lambda prompt: next(lines), out=out)
    first_reply = out.getvalue().split("Assistant: ")[1].split("\n")[0]
    assert [r["instruction"] for r in seen] == ["first message", "second message", "third message"]
    assert seen[0]["history"] == [] and seen[1]["history"] == [["first message", first_reply]]
    assert seen[2]["history"] == []  # cleared
    assert "(conversation cleared)" in out.getvalue() and "Commands:" in out.getvalue()
    assert out.getvalue().rstrip().endswith("bye") and len(session.history) == 1


def test_a_stopped_reply_ends_generation_and_is_not_remembered(tiny_generator):
    stop, stats = threading.Event(), {}
    stop.set()  # as the Ctrl-C handler does
    list(tiny_generator.stream({"instruction": "hello", "input": ""}, {**GREEDY, "max_new_tokens": 50}, stats, stop))
    assert stats["completion_tokens"] <= 1
    session = ChatSession(tiny_generator, {**GREEDY, "max_new_tokens": 50})
    list(session.stream("hello", stop))
    assert session.history == []


def test_one_history_rule_stopped_or_empty_replies_leave_their_turn_out():
    turns = [("a", "A"), ("stopped", "half a rep", False), ("b", "B", True), ("empty", ""), ("blank", " \n"),
             ("c", "C")]
    assert model_history(turns) == ([["a", "A"], ["b", "B"], ["c", "C"]], 3)
    assert model_history([]) == ([], 0)


def test_an_empty_reply_is_not_remembered_and_the_terminal_says_so(tiny_generator, monkeypatch):
    replies = iter([[], ["fine"]])
    monkeypatch.setattr(tiny_generator, "stream", lambda record, kw, stop=None: iter(next(replies)))
    lines, out = iter(["first", "second", "exit"]), io.StringIO()
    session = ChatSession(tiny_generator, GREEDY)
    run_terminal(session, read=lambda prompt: next(lines), out=out)
    assert "(empty reply; not kept in the conversation)" in out.getvalue()
    assert session.history == [["second", "fine"]]


def test_old_turns_are_dropped_to_fit_the_context(tiny_generator, monkeypatch):
    history = [[f"question {i} " * 20, f"answer {i} " * 20] for i in range(6)]
    full = len(tiny_generator.prompt_ids([{"instruction": "now", "input": "", "history": history}])[0])
    monkeypatch.setattr(tiny_generator.model.config, "max_position_embeddings", full)
    kept = fit_history(tiny_generator, "now", history, max_new_tokens=100)
    assert 0 < len(kept) < len(history) and kept == history[-len(kept):]


class Terminal:
    """A child process on a pseudo-terminal, read until expected text appears."""

    def __init__(self, argv):
        self.pid, self.fd = pty.fork()
        if self.pid == 0:  # the child: its stdin/stdout are the terminal, Ctrl-C reaches it as SIGINT
            os.chdir(ROOT)
            os.execve(sys.executable, [sys.executable, *argv], {**os.environ, "HF_HUB_OFFLINE": "1"})
        self.buffer = ""

    def expect(self, text, timeout=300):
        deadline = time.time() + timeout
        while text not in self.buffer:
            ready, _, _ = select.select([self.fd], [], [], max(0.0, deadline - time.time()))
            if not ready:
                raise AssertionError(f"no {text!r} within {timeout}s; got: {self.buffer[-3000:]!r}")
            try:
                chunk = os.read(self.fd, 4096).decode(errors="replace")
            except OSError:  # EIO: the child closed the terminal
                chunk = ""
            if not chunk:
                raise AssertionError(f"the program ended before {text!r}; got: {self.buffer[-3000:]!r}")
            self.buffer += re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", chunk).replace("\r", "")
        before, self.buffer = self.buffer.split(text, 1)
        return before

    def send(self, text):
        os.write(self.fd, text.encode())

    def ask(self, message):
        self.send(message + "\n")
        self.expect("Assistant: ")
        return self.expect("\nUser: ").strip()

    def rest(self):
        """What the program wrote after the last expected text."""
        while select.select([self.fd], [], [], 0.5)[0]:
            try:
                chunk = os.read(self.fd, 4096).decode(errors="replace")
            except OSError:
                break
            if not chunk:
                break
            self.buffer += chunk
        return self.buffer

    def close(self):
        try:
            os.kill(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        os.close(self.fd)


@pytest.mark.slow
def test_terminal_chat_in_a_pseudo_terminal(default_model_dir):
    term = Terminal(["server.py", "--model_name_or_path", default_model_dir, "--template", "chat", "--greedy",
                     "--repetition_penalty", "1.0", "--no_repeat_ngram_size", "0", "--max_new_tokens", "24"])
    try:
        term.expect("User: ")
        term.ask("My name is Alice. Please remember it.")
        assert "Alice" in term.ask("What is my name?")  # the second turn sees the first
        term.send("clear\n")
        term.expect("(conversation cleared)")
        term.expect("User: ")
        assert "Alice" not in term.ask("What is my name?")
        term.send("Write a long story about a dragon who learns to fly.\n")
        term.expect("Assistant: ")
        term.send("\x03")  # Ctrl-C while the reply streams: the reply stops, the chat goes on
        term.expect("(reply stopped")
        term.expect("User: ")
        term.send("exit\n")
        term.expect("bye")
        _, status = os.waitpid(term.pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0, term.rest()
    finally:
        term.close()
