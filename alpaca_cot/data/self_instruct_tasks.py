"""The task side of self-instruct: seed tasks, request prompts, parsing replies, filters.

Replies are parsed tolerantly (a JSON list inside a code fence or surrounded by prose,
trailing commas, a ``{"tasks": [...]}`` wrapper, a reply cut off after some complete objects)
but nothing is invented: a task is kept only as the teacher wrote it, with its fields
stripped, numbers turned into strings and an ``<noinput>``-style placeholder read as "".

Filters, in the order they are tried (the first that applies is counted):
``malformed`` (not an object with string ``instruction`` and ``output``), ``empty``,
``too_short`` / ``too_long`` (in words, each CJK character counting as one), ``blocked_word``
(the instruction asks for something a text-only model cannot do), ``duplicate`` (the same
words as a seed or kept instruction) and ``near_duplicate`` (ROUGE-L >= the threshold).
"""

from __future__ import annotations

import json
import os
import re
from typing import Protocol

from .loading import read_json_records
from .rouge import RougeIndex, tokens
from .schema import DataError, record_problem

FILTERS = ("malformed", "empty", "too_short", "too_long", "blocked_word", "duplicate", "near_duplicate")

# Things a text-only model cannot do. English entries match whole words (case-insensitive),
# entries with CJK characters match anywhere. Only the instruction is checked.
BLOCKED_WORDS = {
    "en": ["image", "images", "picture", "pictures", "photo", "photos", "photograph", "video", "videos",
           "audio", "recording", "draw", "drawing", "sketch", "diagram", "flowchart", "chart", "graph",
           "screenshot", "file", "files", "attachment", "attached", "upload", "download", "website",
           "webpage", "browse", "go to", "click", "search the web", "search online"],
    "zh": ["图片", "图像", "照片", "画一", "画出", "绘制", "视频", "音频", "录音", "流程图", "图表", "截图",
           "文件", "附件", "上传", "下载", "网页", "网站", "网址", "链接", "浏览", "上网", "点击"],
}

PROMPTS = {
    "en": """You are helping to build a varied set of tasks for training an AI assistant to follow instructions.

Here are {k} example tasks, as JSON objects:
{examples}

Write {n} new tasks. Rules:
1. Make each task different from the examples and from the other new tasks: vary the verb, the topic and the kind of work (open questions, writing, rewriting, classification, extraction, reasoning, coding, maths, advice, ...).
2. Every task must be doable by a language model that only reads and writes text: nothing about images, audio, video, attached files, browsing the web or acting in the physical world.
3. "instruction" tells the assistant what to do in one or two sentences of English. Phrase some tasks as questions and some as commands.
4. "input" holds the concrete material the instruction works on (a passage, a list, a sentence to classify, some code), written out in full. Many instructions need none: then it is "".
5. "output" is a good, correct answer to the instruction applied to the input, as a helpful assistant would write it, in under 200 words.

Answer with a JSON list of exactly {n} objects, each with the keys "instruction", "input" and "output". Write nothing before or after the list.""",
    "zh": """你正在帮忙编写一组多样化的任务,用来训练 AI 助手听从指令。

下面是 {k} 个示例任务(JSON 对象):
{examples}

请再写 {n} 个新任务,要求:
1. 每个新任务都要与示例和其他新任务不同:变换动词、话题和任务类型(开放问答、写作、改写、分类、信息抽取、推理、编程、数学、建议等)。
2. 每个任务都必须能由只会读写文字的语言模型完成:不要涉及图片、音频、视频、附件、上网浏览或现实世界中的操作。
3. "instruction" 用一两句中文告诉助手要做什么,有的写成问句,有的写成祈使句。
4. "input" 是指令要处理的具体材料(一段文字、一个列表、一个待分类的句子、一段代码等),要完整写出。很多指令不需要输入,这时填 ""。
5. "output" 是把指令用于输入后得到的正确、完整的回答,像一位乐于助人的助手那样写,不超过 300 字。

请只回答一个恰好包含 {n} 个对象的 JSON 列表,每个对象都有 "instruction"、"input"、"output" 三个键。列表前后不要写任何其他内容。""",
}

KEY_ALIASES = {"instruction": ("instruction", "指令"), "input": ("input", "输入"), "output": ("output", "输出")}
NO_INPUT_RE = re.compile(r"^<?\s*(no\s*input|noinput|无输入|无)\s*>?$", re.IGNORECASE)
CJK_RE = re.compile("[\u3400-\u4dbf\u4e00-\u9fff]")
CLOSING_RE = re.compile(r"\s*[\]}]")


# ---------------------------------------------------------------- seeds and prompts


def load_seed_tasks(path: str | os.PathLike) -> list[dict]:
    """Seed tasks as records ``{"instruction", "input", "output"}``.

    Accepts Stanford Alpaca's ``seed_tasks.jsonl`` schema (``id``, ``name``, ``instruction``,
    ``instances: [{"input", "output"}]``, ``is_classification``; the first instance is used)
    or unified records, as a JSON list or JSONL.
    """
    seeds = []
    for where, value in read_json_records(path):
        if isinstance(value, dict) and "instances" in value:
            instances = value["instances"]
            if not isinstance(instances, list) or not instances or not isinstance(instances[0], dict):
                raise DataError(f"{path}: {where}: 'instances' must be a non-empty list of objects")
            value = {"instruction": value.get("instruction"), **instances[0]}
        problem = record_problem(value)
        if problem:
            raise DataError(f"{path}: {where}: {problem}")
        seeds.append({"instruction": value["instruction"].strip(), "input": (value.get("input") or "").strip(),
                      "output": value["output"].strip()})
    if not seeds:
        raise DataError(f"{path}: no seed tasks")
    return seeds


def build_prompt(examples: list[dict], num_tasks: int, lang: str = "en") -> str:
    """The request text: ``examples`` shown as JSON objects, asking for ``num_tasks`` new ones."""
    shown = "\n".join(json.dumps({k: e[k] for k in ("instruction", "input", "output")}, ensure_ascii=False)
                      for e in examples)
    return PROMPTS[lang].format(k=len(examples), n=num_tasks, examples=shown)


# ---------------------------------------------------------------- parsing replies


def _fenced_blocks(text: str) -> list[str]:
    return [m.group(1) for m in re.finditer(r"```[ \t]*[\w-]*[ \t]*\n(.*?)(?:```|\Z)", text, re.DOTALL)]


def _drop_trailing_commas(text: str) -> str:
    """Remove commas directly before ``]`` or ``}`` outside JSON strings."""
    out, in_string, escaped = [], False, False
    for i, ch in enumerate(text):
        if in_string:
            in_string = not (ch == '"' and not escaped)
            escaped = ch == "\\" and not escaped
        elif ch == '"':
            in_string = True
        elif ch == "," and CLOSING_RE.match(text, i + 1):
            continue
        out.append(ch)
    return "".join(out)


def _task_items(value) -> list | None:
    """The list of task objects a decoded JSON value holds, or None when it holds none."""
    if isinstance(value, dict):
        if any(k in value for k in KEY_ALIASES["instruction"]):
            return [value]
        lists = [v for v in value.values() if isinstance(v, list)]  # {"tasks": [...]}
        value = lists[0] if len(lists) == 1 else None
    if isinstance(value, list) and any(isinstance(v, dict) for v in value):
        return value
    return None


def _decode_items(text: str) -> list | None:
    decoder = json.JSONDecoder()
    for start in (i for i, ch in enumerate(text) if ch == "["):  # the first JSON list of objects
        try:
            items = _task_items(decoder.raw_decode(text, start)[0])
        except json.JSONDecodeError:
            continue
        if items is not None:
            return items
    objects, i = [], 0  # no complete list (e.g. a reply cut off): the complete objects in it
    while (i := text.find("{", i)) >= 0:
        try:
            value, end = decoder.raw_decode(text, i)
        except json.JSONDecodeError:
            i += 1
            continue
        if isinstance(value, dict) and any(k in value for k in KEY_ALIASES["instruction"]):
            objects.append(value)
        i = end
    return objects or None


def parse_tasks(reply: str) -> tuple[list[dict | None], bool]:
    """``(items, parsed)``: every task object found in a teacher's reply, each normalised to
    ``{"instruction", "input", "output"}`` or None where malformed; ``parsed`` is False when
    the reply holds no JSON task list at all."""
    for candidate in [*_fenced_blocks(reply), reply]:
        for text in (candidate, _drop_trailing_commas(candidate)):
            items = _decode_items(text)
            if items is not None:
                return [_normalise_task(item) for item in items], True
    return [], False


def _normalise_task(item) -> dict | None:
    if not isinstance(item, dict):
        return None
    task = {}
    for key, aliases in KEY_ALIASES.items():
        value = next((item[a] for a in aliases if a in item), None)
        if value is None and key == "input":
            value = ""
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            value = str(value)
        if not isinstance(value, str):
            return None
        task[key] = value.strip()
    if NO_INPUT_RE.match(task["input"]):
        task["input"] = ""
    return task


# ---------------------------------------------------------------- filters


def blocked_word_pattern(words: list[str]) -> re.Pattern | None:
    """One regex for the word list: whole words for Latin entries, substrings for CJK ones."""
    parts = [re.escape(w) if CJK_RE.search(w) else rf"\b{re.escape(w)}\b" for w in words if w.strip()]
    return re.compile("|".join(parts), re.IGNORECASE) if parts else None


def length(text: str) -> int:
    """Words, each CJK character counting as one (the units of the length limits)."""
    return len(tokens(text))


class FilterSettings(Protocol):
    """What ``TaskFilter`` reads from its settings (``self_instruct.SelfInstructConfig`` has these fields;
    naming them here keeps the import one-way: ``self_instruct`` uses this module, not the reverse)."""

    lang: str
    blocked_words: list[str] | None
    similarity_threshold: float
    min_instruction_len: int
    max_instruction_len: int
    max_input_len: int
    max_output_len: int


class TaskFilter:
    """Decides, task by task, whether a parsed task is kept; kept instructions join the index."""

    def __init__(self, config: FilterSettings, known_instructions: list[str]):
        self.config = config
        words = BLOCKED_WORDS[config.lang] if config.blocked_words is None else config.blocked_words
        self.blocked = blocked_word_pattern(words)
        self.index = RougeIndex(config.similarity_threshold)
        for instruction in known_instructions:
            self.index.add(instruction)

    def reason(self, task: dict | None) -> str | None:
        """Why ``task`` is dropped (one of ``FILTERS``), or None to keep it (and index it)."""
        c = self.config
        if task is None:
            return "malformed"
        if not task["instruction"] or not task["output"]:
            return "empty"
        if length(task["instruction"]) < c.min_instruction_len:
            return "too_short"
        if (length(task["instruction"]) > c.max_instruction_len or length(task["input"]) > c.max_input_len
                or length(task["output"]) > c.max_output_len):
            return "too_long"
        if self.blocked and self.blocked.search(task["instruction"]):
            return "blocked_word"
        score, _ = self.index.find(task["instruction"])
        if score >= 1.0:
            return "duplicate"
        if score >= c.similarity_threshold:
            return "near_duplicate"
        self.index.add(task["instruction"])
        return None
