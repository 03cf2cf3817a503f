"""Judged generation (Belle-eval style): a judge model grades each answer against a reference.

The judge is any OpenAI-compatible chat endpoint (``POST {url}/chat/completions``, through the
client of ``alpaca_cot.data.teacher``): a hosted API, a local vLLM / llama.cpp server, or our
own ``server.py --api``. Its prompt is the
per-class instruction from the prompt file (``judge_prompts.json`` here, in the layout of
Belle-eval's: records with ``class`` and ``prompt``), followed by the question, the reference
answer and the answer to grade, and a request to end with ``Score: X`` (X from 0 to 1).

Failures are never scores: a judgement with no readable 0-1 score is ``unparseable``; a request
that still fails after the retries (with exponential back-off) is ``failed``. Both are counted
in the summary and left out of the mean. With no judge configured, answers get reference-based
ROUGE-L F1 instead (word-level for English, character-level for Chinese), and the summary says
so.
"""

from __future__ import annotations

import json
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from ..data.loading import read_json_records
from ..data.rouge import rouge_l
from ..data.teacher import ChatClient, TeacherError
from .cache import JsonlCache, content_key

DEFAULT_PROMPTS = Path(__file__).with_name("judge_prompts.json")
MAX_TOKENS = 256  # room for a short reason and the score line
ROUGE_NOTE = ("no judge configured (--judge_url, --judge_model): scores are reference-based ROUGE-L F1 "
              "(word-level for English, character-level for Chinese), not judgements")
QUERY = ("{instruction}\n\nQuestion:\n{question}\n\nReference answer:\n{reference}\n\nAnswer to grade:\n{answer}\n\n"
         "Explain your grade in at most two sentences, then end with a line of the form \"Score: X\", "
         "where X is a number from 0 to 1.")

_NUM = r"(\d+(?:\.\d+)?|\.\d+)"
_SCORE = re.compile(r"(?:score|rating|grade|分数|得分|评分)[\"'*\s]*(?:is|of|为|是)?[\s*]*[:：=]?[\s*]*" + _NUM
                    + r"\s*(%|/\s*\d+(?:\.\d+)?|out of\s*\d+(?:\.\d+)?|分)?", re.IGNORECASE)


JudgeError = TeacherError  # the judge gave no usable reply: a request error, or retries exhausted


def class_key(name: str) -> str:
    """'Open QA' / 'open-qa' / 'open_qa' -> 'open_qa'."""
    return re.sub(r"[\s\-]+", "_", str(name).strip().lower())


def load_prompts(path: str | None = None) -> dict[str, str]:
    """Per-class judging instructions: a JSON/JSONL list of {class, prompt}, or a {class: prompt} object."""
    file = Path(path) if path else DEFAULT_PROMPTS
    try:
        values = json.loads(file.read_text(encoding="utf-8"))
    except json.JSONDecodeError:  # JSONL
        values = [v for _, v in read_json_records(file)]
    if isinstance(values, dict) and not {"class", "prompt"} <= set(values):
        return {class_key(k): str(v) for k, v in values.items()}
    records = values if isinstance(values, list) else [values]
    prompts = {class_key(r["class"]): str(r["prompt"]) for r in records if isinstance(r, dict) and "class" in r}
    if not prompts:
        raise ValueError(f"{file}: no {{'class': ..., 'prompt': ...}} records")
    return prompts


def judge_query(prompts: dict[str, str], category: str, question: str, reference: str, answer: str) -> str:
    instruction = prompts.get(class_key(category)) or prompts.get("default") or next(iter(prompts.values()))
    return QUERY.format(instruction=instruction, question=question, reference=reference or "(none)",
                        answer=answer or "(empty answer)")


def parse_score(text: str | None) -> float | None:
    """The 0-1 score in a judgement ("Score: 0.8", "分数：1", '{"score": 0.5}', "8/10", "80%"); None if unreadable."""
    if not text:
        return None
    matches = list(_SCORE.finditer(text))
    if matches:
        value, scale = float(matches[-1].group(1)), (matches[-1].group(2) or "").strip()
    else:
        bare = re.fullmatch(r"\s*\**\s*" + _NUM + r"\s*\**\s*\.?\s*", text)
        if not bare:
            return None
        value, scale = float(bare.group(1)), ""
    if scale == "%":
        value /= 100
    elif scale.startswith("/") or scale.lower().startswith("out of"):
        denominator = float(re.search(r"\d+(?:\.\d+)?", scale).group(0))
        value = value / denominator if denominator else -1
    return value if 0 <= value <= 1 else None


def judge_client(url: str, model: str, api_key: str | None = None, *, retries: int = 4, backoff: float = 2.0,
                 timeout: float = 120.0) -> ChatClient:
    """The judge's chat client (``alpaca_cot.data.teacher``: retries 429/5xx/timeouts with back-off)."""
    return ChatClient(url, model, api_key, timeout=timeout, max_retries=retries, backoff=backoff)


def ask_judge(client: ChatClient, query: str) -> str:
    """The judge's reply to one query; JudgeError when there is none to read."""
    reply = client.complete([{"role": "user", "content": query}], temperature=0, max_tokens=MAX_TOKENS)
    if reply.content is None:
        raise JudgeError(f"{client.url}: the reply was not a chat completion")
    return reply.content


def score_items(items: list[dict], answers: list[str], *, judge: ChatClient | None = None,
                prompts: dict[str, str] | None = None, cache: JsonlCache | None = None,
                workers: int = 4) -> tuple[list[dict], dict]:
    """Result rows (``score``: 0-1 or None) and the summary fields of the scoring."""
    rows = [{**item, "output": answer} for item, answer in zip(items, answers)]
    if judge is None:
        for row in rows:
            row.update(score=rouge_l(row["output"], row["reference"]), status="reference")
        return rows, {"metric": "rouge_l", "note": ROUGE_NOTE}
    cache = cache if cache is not None else JsonlCache(None)
    prompts = prompts or load_prompts()
    queries = [judge_query(prompts, r["category"], r["question"], r["reference"], r["output"]) for r in rows]
    keys = [content_key("judge", judge.url, judge.model, q) for q in queries]
    todo = [i for i, k in enumerate(keys) if k not in cache]
    errors: dict[int, str] = {}

    def ask(i: int) -> None:
        try:
            cache.put_many({keys[i]: ask_judge(judge, queries[i])})
        except JudgeError as e:
            errors[i] = str(e)

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        list(pool.map(ask, todo))
    for i, row in enumerate(rows):
        if i in errors:
            row.update(judgement=None, score=None, status="failed", error=errors[i])
            continue
        judgement = cache.get(keys[i])
        score = parse_score(judgement)
        row.update(judgement=judgement, score=score, status="scored" if score is not None else "unparseable")
    counts = {s: sum(r["status"] == s for r in rows) for s in ("scored", "unparseable", "failed")}
    extra = {"metric": "judge", "judge": {"url": judge.url, "model": judge.model}, **counts}
    if errors:
        extra["first_error"] = errors[min(errors)]
    return rows, extra
