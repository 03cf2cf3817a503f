"""Task collections and exams: chain-of-thought rows, Natural Instructions task files, GAOKAO, COIG."""

from __future__ import annotations

import random

from .base import BadRecord, Skip, dialogue, first_text, items, register_converter, text

# Our own chain-of-thought templates (instruction, output), in the spirit of FLAN's CoT
# formats but written for this project. {question}, {rationale}, {answer}.
COT_TEMPLATES: tuple[tuple[str, str], ...] = (
    ("{question}\nThink it through step by step before answering.",
     "{rationale}\nSo the answer is {answer}."),
    ("Question: {question}\nExplain your reasoning, then give the answer.",
     "{rationale} Therefore, the answer is {answer}."),
    ("{question} Work it out carefully and show each step.",
     "{rationale}\nThe final answer: {answer}."),
    ("Solve the following, reasoning one step at a time.\n{question}",
     "{rationale} Hence the answer is {answer}."),
    ("{question}\nFirst lay out the reasoning, then state the result.",
     "Reasoning: {rationale}\nResult: {answer}."),
    ("Here is a question: {question}\nWhat is the answer? Justify it briefly first.",
     "{rationale} So, {answer}."),
    ("{question} Let us reason about it before deciding.",
     "{rationale}\nThus the answer is {answer}."),
    ("Think aloud, then answer: {question}",
     "{rationale} The answer is {answer}."),
)


def cot_template(question: str, seed: int) -> tuple[str, str]:
    """The template for a question: chosen from the seed and the question text, not row order."""
    return COT_TEMPLATES[random.Random(f"{seed}\0{question}").randrange(len(COT_TEMPLATES))]


@register_converter("flan_cot", header=False, unescape=("backslash",))
def flan_cot(row, ctx):
    """FLAN chain-of-thought TSV rows without a header: question <TAB> answer <TAB> rationale.

    (The files of FLAN's cot/ folder, e.g. gsm8k_train.tsv, as the original's
    data/origin_cot_data.) Each row is rendered through one of ``COT_TEMPLATES``, picked
    deterministically from ``--seed`` and the question. JSON rows {"question", "answer",
    "rationale"} are accepted too. The TSV files write line breaks inside a field (an options
    list, a multi-line rationale) as the two characters backslash-n; they become line breaks.
    """
    if isinstance(row, dict):
        question, answer, rationale = (text(row, k) for k in ("question", "answer", "rationale"))
    elif isinstance(row, list):
        if len(row) != 3:
            raise BadRecord(f"expected 3 tab-separated columns (question, answer, rationale), got {len(row)}")
        question, answer, rationale = row
    else:
        raise BadRecord(f"expected a TSV row or a JSON object, got {type(row).__name__}")
    for name, value in (("question", question), ("answer", answer), ("rationale", rationale)):
        if not value.strip():
            raise BadRecord(f"empty {name}")
    instruction, output = cot_template(question.strip(), ctx.seed)
    yield {"instruction": instruction.format(question=question.strip()), "input": "",
           "output": output.format(rationale=rationale.strip(), answer=answer.strip())}


@register_converter("natural_instructions")
def natural_instructions(task, ctx):
    """A Natural Instructions v2 task file (one JSON object per file): {"Definition": [str], "Positive Examples": [...], "Instances": [{"id", "input", "output": [str, ...]}], ...}.

    One record per instance: the definition is the instruction, the instance input the
    input, its first reference output the output. Instances without an output are skipped.
    Examples and metadata are dropped.
    """
    definition = task.get("Definition") if isinstance(task, dict) else None
    if isinstance(definition, list) and all(isinstance(d, str) for d in definition):
        definition = "\n".join(definition)
    if not isinstance(definition, str) or not definition.strip():
        raise BadRecord("missing field 'Definition' (a list of strings)")
    for i, instance in enumerate(items(task, "Instances")):
        outputs = instance.get("output") if isinstance(instance, dict) else None
        if isinstance(outputs, str):
            outputs = [outputs]
        if not isinstance(outputs, list) or not all(isinstance(o, str) for o in outputs):
            yield BadRecord(f"'Instances[{i}]': 'output' must be a list of strings")
        elif not any(o.strip() for o in outputs):
            yield Skip("natural_instructions: instance without an output")
        else:
            try:
                yield {"instruction": definition, "input": text(instance, "input"),
                       "output": next(o for o in outputs if o.strip())}
            except BadRecord as e:
                yield BadRecord(f"'Instances[{i}]': {e}")


def _answer_text(answer) -> str:
    if isinstance(answer, list):
        return "".join(str(a) for a in answer)
    if answer is None:
        return ""
    return str(answer)


@register_converter("gaokao")
def gaokao(raw, ctx):
    """GAOKAO-Bench: a subject file {"keywords", "example": [{"question", "answer": [...] | str, "analysis", ...}]} or one such question.

    The question is the instruction; the output is the analysis followed by
    "答案：<answer>" (the answer alone when there is no analysis).
    """
    in_file = isinstance(raw, dict) and "example" in raw
    questions = items(raw, "example") if in_file else [raw]
    for i, q in enumerate(questions):
        try:
            question = text(q, "question")
            answer = _answer_text(q.get("answer")).strip()
            if not answer:
                raise BadRecord("missing field 'answer'")
            analysis = text(q, "analysis", required=False).strip()
        except BadRecord as e:
            yield BadRecord(f"'example[{i}]': {e}" if in_file else str(e))
            continue
        output = f"{analysis}\n答案：{answer}" if analysis else f"答案：{answer}"
        yield {"instruction": question.strip(), "input": "", "output": output}


def _coig_exam(raw) -> dict:
    parts = [text(raw, k, required=False).strip()
             for k in ("textbox_q_instruction", "textbox_q_context", "textbox_question")]
    answer = text(raw, "textbox_answer").strip()
    analysis = text(raw, "textbox_answer_analysis", required=False).strip()
    return {"instruction": "\n".join(p for p in parts if p), "input": "",
            "output": f"{analysis}\n答案：{answer}" if analysis else answer}


@register_converter("coig")
def coig(raw, ctx):
    """BAAI/COIG subsets, told apart by their keys.

    - translated / leetcode / human-value instructions: {"instruction", "input"?, "output"}
      (leetcode's extra keys ignored);
    - exam instructions: {"textbox_q_instruction", "textbox_q_context", "textbox_question",
      "textbox_answer", "textbox_answer_analysis"?} (instruction = the three question parts);
    - counterfactual correction multi-round chat: {"conversations"|"dialogue": [{"role"|"from", "content"|"value"}]}
      with roles human/user and bot/assistant.
    """
    if not isinstance(raw, dict):
        raise BadRecord(f"expected a JSON object, got {type(raw).__name__}")
    if "textbox_question" in raw:
        yield _coig_exam(raw)
    elif "instruction" in raw:
        yield {"instruction": text(raw, "instruction"), "input": text(raw, "input", required=False),
               "output": first_text(raw, ("output", "response"))}
    elif "conversations" in raw or "dialogue" in raw:
        turns = []
        for i, msg in enumerate(items(raw, "conversations" if "conversations" in raw else "dialogue")):
            if not isinstance(msg, dict):
                raise BadRecord(f"message {i} must be an object")
            role = str(msg.get("role", msg.get("from", ""))).lower()
            if role not in ("human", "user", "bot", "assistant", "gpt"):
                raise BadRecord(f"message {i}: unknown speaker {role!r}")
            turns.append(("user" if role in ("human", "user") else "assistant", first_text(msg, ("content", "value"))))
        yield dialogue(turns)
    else:
        raise BadRecord("unrecognised COIG record: expected 'instruction', 'textbox_question' or 'conversations' keys")
