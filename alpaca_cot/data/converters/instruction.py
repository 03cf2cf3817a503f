"""Single-turn sources: one raw record is one (instruction, input, output) triple.

Field text is kept as the source has it (no stripping); an empty instruction or output makes
the record invalid (schema.record_problem), which is an error unless ``--skip_invalid``.
"""

from __future__ import annotations

from .base import BadRecord, Skip, first_text, items, register_converter, text


@register_converter("unified")
def unified(raw, ctx):
    """Already unified records: {"instruction", "input"?, "output", "history"?, "system"?, "source"?}.

    Validates and normalises (key order, empty history dropped); an existing ``source`` is
    kept. Used for files downloaded from the original's hub (already in this format).
    """
    if not isinstance(raw, dict):
        raise BadRecord(f"expected a JSON object, got {type(raw).__name__}")
    yield dict(raw)


@register_converter("alpaca")
def alpaca(raw, ctx):
    """Alpaca-style {"instruction", "input"?, "output"} (GPTeacher names the answer "response").

    Shared by Alpaca, Alpaca-cleaned, Alpaca-GPT4 EN/ZH, Code Alpaca, GPTeacher,
    InstructionWild, finance-alpaca, Guanaco, BELLE 0.5M/1M/school_math and GPT4Tools. A
    missing "input" reads as "". Extra keys (finance-alpaca's "text") are ignored.
    """
    yield {"instruction": text(raw, "instruction"), "input": text(raw, "input", required=False),
           "output": first_text(raw, ("output", "response"))}


@register_converter("dolly")
def dolly(raw, ctx):
    """databricks-dolly-15k: {"instruction", "context", "response", "category"}.

    ``context`` (the reference passage, often "") becomes the input; category is dropped.
    """
    yield {"instruction": text(raw, "instruction"), "input": text(raw, "context", required=False),
           "output": text(raw, "response")}


@register_converter("gpt4all")
def gpt4all(raw, ctx):
    """nomic-ai GPT4All prompt generations: {"prompt", "response", "source"?}.

    The upstream "source" (which sub-collection a prompt came from) is not kept: our
    "source" names the dataset.
    """
    yield {"instruction": text(raw, "prompt"), "input": "", "output": text(raw, "response")}


@register_converter("firefly")
def firefly(raw, ctx):
    """Firefly (firefly-train-1.1M): {"kind", "input", "target"}; the task kind is dropped."""
    yield {"instruction": text(raw, "input"), "input": "", "output": text(raw, "target")}


@register_converter("xp3")
def xp3(raw, ctx):
    """xP3 and FLAN-Muffin: {"inputs", "targets"} (prompted task text, expected answer)."""
    yield {"instruction": text(raw, "inputs"), "input": "", "output": text(raw, "targets")}


@register_converter("pclue")
def pclue(raw, ctx):
    """pCLUE: {"input", "target", "answer_choices"?, "type"?}.

    The prompt in "input" already lists the choices, so answer_choices and type are dropped.
    """
    yield {"instruction": text(raw, "input"), "input": "", "output": text(raw, "target")}


@register_converter("stack_exchange_paired")
def stack_exchange_paired(raw, ctx):
    """StackLLaMA's stack-exchange-paired: {"qid", "question", "response_j", "response_k", ...}.

    ``response_j`` is the preferred (higher-voted) answer and becomes the output.
    """
    yield {"instruction": text(raw, "question"), "input": "", "output": text(raw, "response_j")}


def _question_text(raw) -> str:
    q = raw.get("question") if isinstance(raw, dict) else None
    if isinstance(q, dict):  # the HF dataset nests it: {"full_text": ..., "id": ...}
        return text(q, "full_text")
    return text(raw, "question")


@register_converter("webgpt")
def webgpt(raw, ctx):
    """openai/webgpt_comparisons: {"question": {"full_text"} | str, "answer_0", "score_0", "answer_1", "score_1", ...}.

    Keeps the better-scored answer; equal scores give no preference and are skipped.
    Quotes and token lists are ignored.
    """
    question = _question_text(raw)
    scores = []
    for i in (0, 1):
        score = raw.get(f"score_{i}")
        if not isinstance(score, (int, float)) or isinstance(score, bool):
            raise BadRecord(f"field 'score_{i}' must be a number, got {type(score).__name__}")
        scores.append(score)
    if scores[0] == scores[1]:
        raise Skip("webgpt: tie, no preferred answer")
    best = 0 if scores[0] > scores[1] else 1
    yield {"instruction": question, "input": "", "output": text(raw, f"answer_{best}")}


def _hc3(raw, key: str, label: str):
    question = text(raw, "question")
    answers = items(raw, key)
    for i, answer in enumerate(answers):
        if not isinstance(answer, str):
            yield BadRecord(f"'{key}[{i}]' must be a string, got {type(answer).__name__}")
        elif not answer.strip():
            yield Skip(f"hc3: empty {label} answer")
        else:
            yield {"instruction": question, "input": "", "output": answer}
    if not answers:
        yield Skip(f"hc3: no {label} answer")


@register_converter("hc3")
def hc3(raw, ctx):
    """HC3 (EN and Chinese): {"id", "question", "human_answers": [...], "chatgpt_answers": [...], "source"}.

    One record per ChatGPT answer (a question with two answers gives two records); the
    human answers are the ``hc3_human`` format. No ChatGPT answer: skipped.
    """
    yield from _hc3(raw, "chatgpt_answers", "ChatGPT")


@register_converter("hc3_human")
def hc3_human(raw, ctx):
    """HC3 as for ``hc3``, keeping the human answers (the original's HC3_Human files)."""
    yield from _hc3(raw, "human_answers", "human")
