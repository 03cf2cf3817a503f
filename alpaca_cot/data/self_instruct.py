"""Self-instruct: grow instruction data from seed tasks with any OpenAI-compatible teacher.

Each request shows the teacher a few sampled seed tasks (and, once there are some, tasks it
generated before, as self-instruct does) and asks for a JSON list of new ``{"instruction",
"input", "output"}`` tasks; ``self_instruct_tasks`` builds the prompts, parses the replies and
filters the tasks, ``teacher`` talks to the API (retries, back-off), ``rouge`` finds near
duplicates. Several requests run at once; replies are handled one at a time, in the calling
thread.

The output file is the state: it is rewritten atomically as records are kept, and a rerun
with the same output loads it, counts its records toward ``num_instructions`` and
deduplicates against them, so it continues without repeating anything.
"""

from __future__ import annotations

import json
import math
import os
import random
import time
from collections import Counter
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path

from ..metadata import atomic_write_text
from .loading import read_json_records
from .schema import DataError, record_problem
from .self_instruct_tasks import (  # noqa: F401  (re-exported: the public names live here too)
    BLOCKED_WORDS, FILTERS, PROMPTS, TaskFilter, blocked_word_pattern, build_prompt, length, load_seed_tasks,
    parse_tasks)
from .teacher import ChatClient, Reply, TeacherError

SOURCE = "self_instruct"


@dataclass
class SelfInstructConfig:
    seed_tasks: str
    teacher_url: str
    teacher_model: str
    output: str
    num_instructions: int = 100
    teacher_api_key: str | None = None
    lang: str = "en"
    tasks_per_request: int = 10         # tasks asked for in one request
    num_seed_examples: int = 3          # seed tasks shown per request
    num_generated_examples: int = 2     # earlier generated tasks shown per request (once there are some)
    num_workers: int = 4                # requests in flight at once
    max_requests: int = 0               # requests this run may start (retries not counted); 0: no limit
    max_retries: int = 5                # per request, on HTTP 429/5xx, timeouts, dropped connections
    retry_backoff: float = 1.0          # first back-off in seconds, doubling per retry (Retry-After wins)
    request_timeout: float = 120.0
    temperature: float | None = 1.0
    top_p: float | None = 1.0
    max_tokens: int = 3072              # 0: do not send
    similarity_threshold: float = 0.7   # ROUGE-L at or above which a new instruction is a near duplicate
    min_instruction_len: int = 3        # in words / CJK characters
    max_instruction_len: int = 150
    max_input_len: int = 1000
    max_output_len: int = 2000
    blocked_words: list[str] | None = None  # None: the defaults of ``lang``
    save_interval: float = 10.0         # seconds between rewrites of the output (always at the end)
    stall_limit: int = 50               # replies in a row that add nothing end the run
    seed: int = 42

    def check(self) -> None:
        if self.lang not in PROMPTS:
            raise ValueError(f"--lang {self.lang}: expected one of {', '.join(PROMPTS)}")
        for name in ("num_instructions", "tasks_per_request", "num_workers", "num_seed_examples", "stall_limit"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name} must be at least 1")
        for name in ("num_generated_examples", "max_requests", "max_retries", "max_tokens"):
            if getattr(self, name) < 0:
                raise ValueError(f"--{name} must not be negative")
        if not 0 < self.similarity_threshold <= 1:
            raise ValueError("--similarity_threshold must be in (0, 1]")


@dataclass
class SelfInstructStats:
    existing: int = 0           # records already in the output when the run started
    kept: int = 0               # records added by this run
    requests: int = 0           # requests started (each may take several HTTP attempts)
    attempts: int = 0           # HTTP attempts of the requests that finished
    retries: int = 0            # of those attempts, the repeated ones (after 429/5xx/timeouts)
    failed: int = 0             # requests that ended in a TeacherError
    unparseable: int = 0        # replies with no JSON task list in them
    truncated: int = 0          # replies cut off by the token limit (finish_reason "length")
    tasks: int = 0              # task objects found in replies
    filtered: Counter = field(default_factory=Counter)
    stopped: str = ""

    def progress(self) -> str:
        reasons = ", ".join(f"{r} {self.filtered[r]}" for r in FILTERS if self.filtered[r])
        return (f"requests {self.requests}, filtered {sum(self.filtered.values())}"
                + (f" ({reasons})" if reasons else "") + f", unparseable {self.unparseable}")

    def summary(self, output: str, target: int) -> str:
        reasons = ", ".join(f"{r} {self.filtered[r]}" for r in FILTERS)
        return "\n".join([
            f"kept {self.kept} new instructions; {output} holds {self.existing + self.kept} (target {target})",
            f"stopped: {self.stopped}",
            f"requests {self.requests} ({self.attempts} HTTP attempts, {self.retries} retries, "
            f"{self.failed} failed)",
            f"tasks in replies {self.tasks}; filtered {sum(self.filtered.values())}: {reasons}",
            f"unparseable replies {self.unparseable}; replies cut off by --max_tokens {self.truncated}",
        ])

    def as_dict(self) -> dict:
        return {**{k: v for k, v in vars(self).items() if k != "filtered"},
                "filtered": {r: self.filtered[r] for r in FILTERS}}


# ---------------------------------------------------------------- the run


def read_output(path: str | os.PathLike) -> list[dict]:
    """The records already in the output file (none when it does not exist), as written."""
    if not Path(path).exists():
        return []
    records = []
    for where, value in read_json_records(path):
        problem = record_problem(value)
        if problem:
            raise DataError(f"{path}: {where}: {problem} (not an output of this tool? choose another --output)")
        records.append(value)
    return records


def write_output(path: str | os.PathLike, records: list[dict]) -> None:
    """Atomically write records: JSONL for ``*.jsonl``, else a JSON list with one record per line."""
    lines = [json.dumps(r, ensure_ascii=False) for r in records]
    text = "".join(line + "\n" for line in lines) if str(path).endswith(".jsonl") else \
        "[\n" + ",\n".join(lines) + "\n]\n" if lines else "[]\n"
    atomic_write_text(path, text)


def generate(config: SelfInstructConfig, *, client: ChatClient | None = None, progress: bool = True,
             ) -> SelfInstructStats:
    """Run self-instruct until ``num_instructions`` records are in the output, the request budget
    is spent, or ``stall_limit`` replies in a row added nothing; returns the counts. A request
    that fails for good raises ``TeacherError`` once the requests in flight are in and what was
    kept is saved (the counts are on the exception as ``stats``)."""
    from tqdm.auto import tqdm

    config.check()
    seeds = load_seed_tasks(config.seed_tasks)
    records = read_output(config.output)
    stats = SelfInstructStats(existing=len(records))
    task_filter = TaskFilter(config, [s["instruction"] for s in seeds] + [r["instruction"] for r in records])
    client = client or ChatClient(config.teacher_url, config.teacher_model, config.teacher_api_key,
                                  timeout=config.request_timeout, max_retries=config.max_retries,
                                  backoff=config.retry_backoff)
    rng = random.Random(f"{config.seed}:{len(records)}")  # a resumed run samples other examples
    params = {"temperature": config.temperature, "top_p": config.top_p, "max_tokens": config.max_tokens or None}
    executor = ThreadPoolExecutor(config.num_workers, thread_name_prefix="self-instruct")

    def request() -> Future:
        examples = rng.sample(seeds, min(config.num_seed_examples, len(seeds)))
        examples += rng.sample(records, min(config.num_generated_examples, len(records)))
        rng.shuffle(examples)
        prompt = build_prompt(examples, config.tasks_per_request, config.lang)
        stats.requests += 1
        return executor.submit(client.complete, [{"role": "user", "content": prompt}], **params)

    def take(reply: Reply) -> int:
        stats.attempts += reply.attempts
        stats.retries += reply.attempts - 1
        stats.truncated += reply.finish_reason == "length"
        items, parsed = parse_tasks(reply.content) if reply.content is not None else ([], False)
        stats.unparseable += not parsed
        stats.tasks += len(items)
        kept = 0
        for task in items:
            if len(records) >= config.num_instructions:
                break
            reason = task_filter.reason(task)
            if reason:
                stats.filtered[reason] += 1
            else:
                records.append({**task, "source": SOURCE})
                kept += 1
        return kept

    bar = tqdm(total=config.num_instructions, initial=min(len(records), config.num_instructions),
               desc="self-instruct", unit="instr", disable=not progress, dynamic_ncols=True)
    saved, last_save, stalled, error = len(records), time.monotonic(), 0, None
    in_flight: set[Future] = set()
    try:
        while True:
            remaining = config.num_instructions - len(records)
            # Never more requests in flight than the remaining records could need.
            wanted = min(config.num_workers, math.ceil(remaining / config.tasks_per_request))
            while (error is None and stalled < config.stall_limit and len(in_flight) < wanted
                   and not (config.max_requests and stats.requests >= config.max_requests)):
                in_flight.add(request())
            if not in_flight:
                break
            bar.set_postfix_str(stats.progress(), refresh=True)
            done, in_flight = wait(in_flight, return_when=FIRST_COMPLETED)
            for future in done:
                try:
                    kept = take(future.result())
                except TeacherError as e:
                    stats.attempts += e.attempts
                    stats.retries += max(0, e.attempts - 1)
                    stats.failed += 1
                    error = error or e
                    continue
                stats.kept += kept
                bar.update(kept)
                stalled = 0 if kept else stalled + 1
            bar.set_postfix_str(stats.progress(), refresh=True)
            if len(records) != saved and time.monotonic() - last_save >= config.save_interval:
                write_output(config.output, records)
                saved, last_save = len(records), time.monotonic()
    finally:
        executor.shutdown(wait=False, cancel_futures=True)
        if len(records) != saved or not Path(config.output).exists():
            write_output(config.output, records)
        bar.close()
    if error is not None:
        stats.stopped = f"teacher error: {error}"
        error.stats = stats
        raise error
    if len(records) >= config.num_instructions:
        stats.stopped = f"{config.num_instructions} instructions reached"
    elif stalled >= config.stall_limit:
        stats.stopped = (f"{config.stall_limit} replies in a row added nothing "
                         "(unusable replies, or the teacher repeats itself)")
    else:
        stats.stopped = f"request budget used up (--max_requests {config.max_requests})"
    return stats
