"""Preference sources: both answers kept, as unified pairs (``instruction``, ``input``, ``history``,
``system``, ``chosen``, ``rejected``; see ``alpaca_cot.data.preference``).

The instruction converters of the same sources (``hh_rlhf``, ``stack_exchange_paired``, ``webgpt``)
keep only the preferred answer, for instruction tuning; these keep the pair. A transcript or message
list is split where chosen and rejected part: everything they share is the prompt (its earlier turns
become ``history``), and what follows, one assistant turn on each side, is the pair.
"""

from __future__ import annotations

from .base import (ROLE_ASSISTANT, ROLE_SYSTEM, ROLE_USER, BadRecord, Skip, dialogue, items, register_converter,
                   split_markers, text)
from .dialogue import _content, _role
from .instruction import _question_text

HH_MARKERS = {"\n\nHuman:": ROLE_USER, "\n\nAssistant:": ROLE_ASSISTANT}


def _merged(turns) -> list[tuple[str, str]]:
    """Strip turns, drop blank ones and join consecutive turns of one role (as ``base.dialogue`` does)."""
    out: list[list[str]] = []
    for role, content in turns:
        content = content.strip()
        if not content:
            continue
        if out and out[-1][0] == role:
            out[-1][1] += "\n\n" + content
        else:
            out.append([role, content])
    return [(role, content) for role, content in out]


def _pair(shared: list[tuple[str, str]], chosen: str, rejected: str) -> dict:
    """A pair record from the shared turns (ending with the user's) and the two final answers."""
    if not shared or shared[-1][0] != ROLE_USER:
        raise Skip("no user turn before the answers")
    if not chosen.strip() or not rejected.strip():
        raise Skip("an empty answer")
    if chosen.strip() == rejected.strip():
        raise Skip("chosen and rejected are the same")
    record = dialogue(shared + [(ROLE_ASSISTANT, chosen)])
    record["chosen"] = record.pop("output")
    record["rejected"] = rejected.strip()
    return record


def _split(chosen: list[tuple[str, str]], rejected: list[tuple[str, str]]) -> dict:
    """Cut two turn lists at their last shared turn; each must continue with exactly one assistant turn."""
    chosen, rejected = _merged(chosen), _merged(rejected)
    systems = [t for r, t in chosen if r == ROLE_SYSTEM]
    chosen = [(r, t) for r, t in chosen if r != ROLE_SYSTEM]
    rejected = [(r, t) for r, t in rejected if r != ROLE_SYSTEM]
    k = 0
    while k < min(len(chosen), len(rejected)) and chosen[k] == rejected[k]:
        k += 1
    if k == len(chosen) and k == len(rejected):
        raise Skip("chosen and rejected are the same")
    tails = (chosen[k:], rejected[k:])
    if any(len(tail) != 1 or tail[0][0] != ROLE_ASSISTANT for tail in tails):
        raise Skip("chosen and rejected part before their last assistant turn")
    record = _pair(chosen[:k], tails[0][0][1], tails[1][0][1])
    if systems:
        record["system"] = "\n\n".join(systems)
    return record


def _hh_turns(raw, key: str) -> list[tuple[str, str]]:
    transcript = text(raw, key)
    if transcript.startswith(("Human:", "Assistant:")):
        transcript = "\n\n" + transcript
    turns = split_markers(transcript, HH_MARKERS, line_start=False)
    if turns and turns[0][0] is None:
        raise BadRecord(f"'{key}' does not start with a '\\n\\nHuman:' turn")
    return turns


@register_converter("hh_rlhf_pairs", kind="pairs")
def hh_rlhf_pairs(raw, ctx):
    """Anthropic hh-rlhf as pairs: {"chosen": "\\n\\nHuman: ...\\n\\nAssistant: ...", "rejected": "..."}.

    Both transcripts repeat the dialogue; they are split at the last turn they share (a
    "\\n\\nAssistant:" marker), the earlier turns become ``history`` and the two different final
    assistant turns become ``chosen`` and ``rejected``. Transcripts that part earlier are skipped.
    """
    yield _split(_hh_turns(raw, "chosen"), _hh_turns(raw, "rejected"))


@register_converter("stack_exchange_pairs", kind="pairs")
def stack_exchange_pairs(raw, ctx):
    """StackLLaMA's stack-exchange-paired as pairs: {"qid", "question", "response_j", "response_k", ...}.

    ``response_j`` (the higher-voted answer) is chosen, ``response_k`` rejected.
    """
    yield _pair([(ROLE_USER, text(raw, "question"))], text(raw, "response_j"), text(raw, "response_k"))


@register_converter("webgpt_pairs", kind="pairs")
def webgpt_pairs(raw, ctx):
    """openai/webgpt_comparisons as pairs: {"question": {"full_text"} | str, "answer_0", "score_0", "answer_1", "score_1"}.

    The better-scored answer is chosen; equal scores state no preference and are skipped.
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
    yield _pair([(ROLE_USER, question)], text(raw, f"answer_{best}"), text(raw, f"answer_{1 - best}"))


def _messages(raw, key: str) -> list[tuple[str, str]]:
    turns = []
    for i, msg in enumerate(items(raw, key)):
        if not isinstance(msg, dict):
            raise BadRecord(f"'{key}[{i}]' must be an object with 'role' and 'content'")
        turns.append((_role(msg.get("role"), f"'{key}[{i}]'"), _content(msg, f"'{key}[{i}]'")))
    return turns


def message_pairs(raw, ctx):
    """Chosen and rejected OpenAI-style message lists, split at their last shared message.

    Each of ``chosen`` / ``rejected`` is either the whole conversation ([..., {"role": "user"},
    {"role": "assistant"}]) or only the answer, the prompt then coming from ``prompt`` (a message
    list, or a string: one user turn). ``system`` messages (or a top-level ``system`` string) become
    ``system``. With ``score_chosen`` and ``score_rejected`` present, equal scores are skipped.
    """
    scores = [raw.get("score_chosen"), raw.get("score_rejected")] if isinstance(raw, dict) else [None, None]
    if None not in scores and scores[0] == scores[1]:
        raise Skip("tie: equal scores, no preferred answer")
    chosen, rejected = _messages(raw, "chosen"), _messages(raw, "rejected")
    prompt = raw.get("prompt")
    if chosen and all(role == ROLE_ASSISTANT for role, _ in chosen + rejected):  # answers only
        if isinstance(prompt, str):
            shared = [(ROLE_USER, prompt)]
        elif isinstance(prompt, list):
            shared = _messages(raw, "prompt")
        else:
            raise BadRecord("'chosen'/'rejected' hold only answers, but there is no 'prompt' (string or messages)")
        chosen, rejected = shared + chosen, shared + rejected
    system = text(raw, "system", required=False)
    if system.strip():
        chosen = [(ROLE_SYSTEM, system)] + chosen
    yield _split(chosen, rejected)


@register_converter("firefly_dpo", kind="pairs")
def firefly_dpo(raw, ctx):
    """Firefly's DPO files: {"prompt", "chosen": [{"role", "content"}, ...], "rejected": [...], "score_chosen", "score_rejected"}.

    The message lists hold the whole conversation; read as ``message_pairs`` (ties skipped).
    """
    yield from message_pairs(raw, ctx)


@register_converter("ultrafeedback", kind="pairs")
def ultrafeedback(raw, ctx):
    """UltraFeedback-binarized style: {"prompt", "chosen": [messages], "rejected": [messages], "score_chosen"?, ...}.

    Also TRL's conversational preference layout (``prompt`` messages, answer-only ``chosen``/``rejected``);
    read as ``message_pairs`` (ties skipped).
    """
    yield from message_pairs(raw, ctx)


@register_converter("unified_pairs", kind="pairs")
def unified_pairs(raw, ctx):
    """Pairs already in our format: {"instruction", "input"?, "history"?, "system"?, "chosen", "rejected", "source"?}.

    Validated and put in canonical key order; nothing else changes.
    """
    if not isinstance(raw, dict):
        raise BadRecord(f"expected a JSON object, got {type(raw).__name__}")
    yield dict(raw)
