"""Batch prediction over a dataset into a resumable JSONL file: one line per input record.

Each line is the input record with the answer under ``"generate"`` (the original project's
key), in input order. Records are generated longest prompt first, ``batch_size`` rows at a
time (a finished row takes the next prompt); as answers arrive, the longest finished prefix of
the dataset is appended as whole lines and synced, with Ctrl-C held back meanwhile. A rerun
with the same output file checks that its lines answer the first records of the data, drops a
torn last line, and continues after them.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import torch

logger = logging.getLogger(__name__)

RESULT_KEY = "generate"
WINDOW_BATCHES = 8  # batch_size * this many prompts sorted together; at most this much is redone after a crash


@dataclass
class PredictReport:
    total: int
    resumed: int = 0        # records already answered by an earlier run
    answered: int = 0       # records answered by this run
    new_tokens: int = 0
    seconds: float = 0.0

    @property
    def tokens_per_second(self) -> float:
        return self.new_tokens / self.seconds if self.seconds else 0.0

    def summary(self) -> str:
        return (f"{self.resumed + self.answered}/{self.total} records answered ({self.resumed} from an earlier run, "
                f"{self.answered} now: {self.new_tokens} tokens in {self.seconds:.1f} s, "
                f"{self.tokens_per_second:.1f} tokens/s)")


def result_path(result_dir: str) -> Path:
    """``--result_dir``: a ``.jsonl``/``.json`` file, else a folder that gets ``predictions.jsonl``."""
    path = Path(result_dir)
    if path.is_dir() or path.suffix not in (".jsonl", ".json"):
        return path / "predictions.jsonl"
    return path


def _request(record: dict) -> tuple:
    """What identifies a request (the answer may differ between runs, the request may not)."""
    return (record.get("instruction"), record.get("input") or "",
            [list(pair) for pair in record.get("history") or []], record.get("system") or "")


def answered_prefix(path: Path, records: list[dict]) -> int:
    """How many leading records ``path`` already answers; a torn last line is cut off first.

    Raises ValueError when a line is not one of ours or answers a different record, so a
    wrong ``--result_dir`` is never appended to or overwritten silently.
    """
    if not path.exists():
        return 0
    with open(path, "rb+") as f:
        data = f.read()
        whole = data.rfind(b"\n") + 1
        if whole < len(data):
            logger.warning("%s: dropping an incomplete last line left by an interrupted run", path)
            f.truncate(whole)
    lines = data[:whole].splitlines()
    for i, line in enumerate(lines):
        hint = "pass another --result_dir, or --overwrite to start again"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: line {i + 1} is not JSON ({e.msg}); {hint}") from e
        if i >= len(records) or not isinstance(row, dict) or RESULT_KEY not in row \
                or _request(row) != _request(records[i]):
            raise ValueError(f"{path}: line {i + 1} does not answer record {i} of --data "
                             f"(a different dataset or order?); {hint}")
    return len(lines)


def _append(fd: int, text: str) -> None:
    """Append whole lines and sync them, with Ctrl-C/SIGTERM held back until they are on disk."""
    blocked = {signal.SIGINT, signal.SIGTERM}
    masked = hasattr(signal, "pthread_sigmask")
    if masked:
        previous = signal.pthread_sigmask(signal.SIG_BLOCK, blocked)
    try:
        data = text.encode("utf-8")
        while data:
            data = data[os.write(fd, data):]
        os.fsync(fd)
    finally:
        if masked:
            signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def predict(generator, records: list[dict], path: str | os.PathLike, gen_kwargs: dict, batch_size: int = 4,
            seed: int | None = None, progress: bool = True, overwrite: bool = False) -> PredictReport:
    """Answer ``records`` into ``path`` (JSONL), continuing after the lines already there."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if overwrite:
        path.unlink(missing_ok=True)
    report = PredictReport(total=len(records), resumed=answered_prefix(path, records))
    todo = list(range(report.resumed, len(records)))
    if not todo:
        return report
    if seed is not None:
        torch.manual_seed(seed)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(records), initial=report.resumed, desc="predicting", unit="record")
    started = time.perf_counter()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
    try:
        window = batch_size * WINDOW_BATCHES
        for start in range(0, len(todo), window):
            report.answered += _predict_window(generator, records, todo[start:start + window], fd, gen_kwargs,
                                               batch_size, report, bar)
            report.seconds = time.perf_counter() - started
    finally:
        os.close(fd)
        if bar is not None:
            bar.close()
    return report


def _predict_window(generator, records, indices, fd, gen_kwargs, batch_size, report, bar) -> int:
    """Generate one window (longest prompts first), appending the finished prefix as answers arrive."""
    prompts = dict(zip(indices, generator.prompt_ids([records[i] for i in indices])))
    order = sorted(indices, key=lambda i: -len(prompts[i]))
    answers: dict[int, str] = {}
    written = 0

    def done(k: int, ids: list[int]) -> None:
        nonlocal written
        answers[order[k]] = generator.decode(ids)
        report.new_tokens += len(ids)
        lines = []
        while written < len(indices) and indices[written] in answers:
            i = indices[written]
            lines.append(json.dumps({**records[i], RESULT_KEY: answers.pop(i)}, ensure_ascii=False) + "\n")
            written += 1
        if lines:
            _append(fd, "".join(lines))
        if bar is not None:
            bar.update(1)

    generator.generate_many([prompts[i] for i in order], gen_kwargs, batch_size, on_result=done)
    return written
