"""Multi-turn sources: every dialogue becomes history + last turn (see ``base.dialogue``).

Message text is stripped of the whitespace around speaker markers. Speaker markers count
only where the format puts them (line starts, or "\\n\\n" for hh-rlhf), so a marker quoted
inside a message stays part of the message.
"""

from __future__ import annotations

import re

from .base import (ROLE_ASSISTANT, ROLE_SYSTEM, ROLE_USER, BadRecord, Skip, dialogue, items,
                   register_converter, split_markers, text)

USER_ROLES = {"human", "user"}
ASSISTANT_ROLES = {"gpt", "chatgpt", "assistant", "bard", "bing", "model", "bot"}
SYSTEM_ROLES = {"system", "developer"}


def _role(name, where: str) -> str:
    key = str(name).lower()
    if key in USER_ROLES:
        return ROLE_USER
    if key in ASSISTANT_ROLES:
        return ROLE_ASSISTANT
    if key in SYSTEM_ROLES:
        return ROLE_SYSTEM
    raise BadRecord(f"{where}: unknown speaker {name!r}")


@register_converter("belle_multiturn")
def belle_multiturn(raw, ctx):
    """BELLE multiturn_chat_0.8M: {"instruction": "Human: ...\\nAssistant: ...\\nHuman: ...\\nAssistant:", "input": "", "output"}.

    The dialogue so far is in "instruction" with "Human:"/"Assistant:" at line starts; the
    final (empty) "Assistant:" is answered by "output". Without markers the record is
    read as a single turn. A non-empty "input" is appended to the last human turn.
    """
    transcript, output = text(raw, "instruction"), text(raw, "output")
    extra = text(raw, "input", required=False)
    if not output.strip():
        raise BadRecord("empty 'output'")
    turns = split_markers(transcript, {"Human:": ROLE_USER, "Assistant:": ROLE_ASSISTANT})
    if all(role is None for role, _ in turns):
        yield {"instruction": transcript, "input": extra, "output": output}
        return
    turns = [(ROLE_SYSTEM if role is None else role, t) for role, t in turns]
    if turns[-1][0] == ROLE_ASSISTANT:
        if turns[-1][1].strip():
            raise BadRecord("transcript ends with an answered 'Assistant:' turn; 'output' answers nothing")
        turns.pop()
    if extra.strip() and turns:
        role, last = turns[-1]
        turns[-1] = (role, last.rstrip() + "\n" + extra)
    yield dialogue(turns + [(ROLE_ASSISTANT, output)])


@register_converter("sharegpt")
def sharegpt(raw, ctx):
    """ShareGPT / Vicuna / FastChat / ShareChat: {"id"?, "conversations": [{"from", "value"}], "system"?}.

    ``from`` is human/user, gpt/chatgpt/assistant/bard/bing/model, or system. Older dumps
    name the list "items". Unknown speakers are malformed.
    """
    key = "items" if isinstance(raw, dict) and "conversations" not in raw and "items" in raw else "conversations"
    turns = []
    for i, msg in enumerate(items(raw, key)):
        if not isinstance(msg, dict):
            raise BadRecord(f"'{key}[{i}]' must be an object with 'from' and 'value'")
        turns.append((_role(msg.get("from"), f"'{key}[{i}]'"), text(msg, "value")))
    yield dialogue(turns, system=text(raw, "system", required=False))


def _content(msg: dict, where: str) -> str:
    content = msg.get("content")
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # [{"type": "text", "text": ...}, ...]
        parts = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") != "text":
                raise Skip("openai_messages: non-text content")
            parts.append(text(part, "text"))
        return "\n".join(parts)
    raise BadRecord(f"{where}: 'content' must be a string or a list of parts")


@register_converter("openai_messages")
def openai_messages(raw, ctx):
    """OpenAI chat format: {"messages": [{"role": "system"|"user"|"assistant", "content"}]}.

    ``content`` may be a string, null, or a list of {"type": "text", "text"} parts. Dialogues
    with tool/function messages or non-text parts are skipped.
    """
    turns = []
    for i, msg in enumerate(items(raw, "messages")):
        if not isinstance(msg, dict):
            raise BadRecord(f"'messages[{i}]' must be an object with 'role' and 'content'")
        if msg.get("role") in ("tool", "function"):
            raise Skip("openai_messages: tool/function messages")
        turns.append((_role(msg.get("role"), f"'messages[{i}]'"), _content(msg, f"'messages[{i}]'")))
    yield dialogue(turns)


@register_converter("hh_rlhf")
def hh_rlhf(raw, ctx):
    """Anthropic hh-rlhf: {"chosen": "\\n\\nHuman: ...\\n\\nAssistant: ...", "rejected"}.

    Only the chosen transcript is used; turns start at "\\n\\nHuman:" / "\\n\\nAssistant:".
    """
    chosen = text(raw, "chosen")
    if chosen.startswith(("Human:", "Assistant:")):
        chosen = "\n\n" + chosen
    turns = split_markers(chosen, {"\n\nHuman:": ROLE_USER, "\n\nAssistant:": ROLE_ASSISTANT}, line_start=False)
    if turns and turns[0][0] is None:
        raise BadRecord("'chosen' does not start with a '\\n\\nHuman:' turn")
    yield dialogue(turns)


@register_converter("baize")
def baize(raw, ctx):
    """Baize self-chat: {"topic"?, "input": "The conversation between human and AI assistant.\\n[|Human|] ...\\n[|AI|] ..."}.

    Turns start with "[|Human|]" / "[|AI|]" at line starts; the fixed preamble before the
    first marker is dropped, as is the empty closing "[|Human|]".
    """
    turns = split_markers(text(raw, "input"), {"[|Human|]": ROLE_USER, "[|AI|]": ROLE_ASSISTANT})
    yield dialogue((role, t) for role, t in turns if role is not None)


def _strip_moss(value: str, prefix: str, suffix: str) -> str:
    value = value.strip()
    if value.startswith(prefix):
        value = value[len(prefix):]
    if value.endswith(suffix):
        value = value[: -len(suffix)]
    return value


def _turn_number(key: str) -> int:
    m = re.fullmatch(r"turn_(\d+)", key)
    if not m:
        raise BadRecord(f"'chat' key {key!r} is not turn_N")
    return int(m.group(1))


@register_converter("moss")
def moss(raw, ctx):
    """MOSS SFT data (moss-003-sft): {"meta_instruction", "chat": {"turn_1": {"Human": "<|Human|>: ...<eoh>\\n", "MOSS": "<|MOSS|>: ...<eom>\\n", ...}}}.

    Turns are ordered by N; "<|Human|>:"/"<eoh>" and "<|MOSS|>:"/"<eom>" are removed from
    the ends only. Inner thoughts, commands and tool results are dropped: the visible reply
    is the output. ``meta_instruction`` becomes the system text.
    """
    chat = raw.get("chat") if isinstance(raw, dict) else None
    if not isinstance(chat, dict):
        raise BadRecord("missing field 'chat' (an object of turn_N entries)")
    turns = []
    for key in sorted(chat, key=_turn_number):
        turn = chat[key]
        if not isinstance(turn, dict):
            raise BadRecord(f"'chat.{key}' must be an object")
        turns.append((ROLE_USER, _strip_moss(text(turn, "Human"), "<|Human|>:", "<eoh>")))
        if turn.get("MOSS") is not None:
            turns.append((ROLE_ASSISTANT, _strip_moss(text(turn, "MOSS"), "<|MOSS|>:", "<eom>")))
    yield dialogue(turns, system=text(raw, "meta_instruction", required=False))


@register_converter("ultrachat")
def ultrachat(raw, ctx):
    """UltraChat: {"id", "data": [user, assistant, user, assistant, ...]} (alternating, user first)."""
    turns = []
    for i, utterance in enumerate(items(raw, "data")):
        if not isinstance(utterance, str):
            raise BadRecord(f"'data[{i}]' must be a string, got {type(utterance).__name__}")
        turns.append((ROLE_USER if i % 2 == 0 else ROLE_ASSISTANT, utterance))
    yield dialogue(turns)


@register_converter("oig")
def oig(raw, ctx):
    """LAION OIG: {"text": "<human>: ...\\n<bot>: ...", "metadata"?}.

    Turns start with "<human>:" / "<bot>:" at line starts; text before the first marker
    (a background passage in some subsets) becomes the system text.
    """
    turns = split_markers(text(raw, "text"), {"<human>:": ROLE_USER, "<bot>:": ROLE_ASSISTANT})
    yield dialogue((ROLE_SYSTEM if role is None else role, t) for role, t in turns)


def _message_number(key: str) -> int:
    return int(key.split("_", 1)[1])


@register_converter("camel")
def camel(raw, ctx):
    """CAMEL role-play: {"specified_task"?, "message_1": {"role_type": "USER"|"ASSISTANT", "content"} | str, "message_2": ...}.

    Messages are ordered by N. Object messages take their role from "role_type" (or
    "role"); plain-string messages (the math/physics/chemistry/biology sets) alternate
    user, assistant. ``specified_task`` becomes the system text.
    """
    if not isinstance(raw, dict):
        raise BadRecord(f"expected a JSON object, got {type(raw).__name__}")
    keys = sorted((k for k in raw if re.fullmatch(r"message_\d+", k)), key=_message_number)
    if not keys:
        raise BadRecord("no message_N fields")
    turns = []
    for i, key in enumerate(keys):
        msg = raw[key]
        if isinstance(msg, str):
            turns.append((ROLE_USER if i % 2 == 0 else ROLE_ASSISTANT, msg))
        elif isinstance(msg, dict):
            role = msg.get("role_type") or msg.get("role")
            turns.append((_role({"USER": "user", "ASSISTANT": "assistant"}.get(role, role), f"'{key}'"),
                          text(msg, "content")))
        else:
            raise BadRecord(f"'{key}' must be an object or a string")
    yield dialogue(turns, system=text(raw, "specified_task", required=False))


@register_converter("prosocial_dialog", grouped=True)
def prosocial_dialog(rows, ctx):
    """ProsocialDialog rows: {"dialogue_id", "response_id", "context", "response", "rots", "safety_label", ...}.

    One row per turn: "context" is the user's utterance, "response" the prosocial reply.
    Rows are grouped by dialogue_id (in first-seen order) and ordered by response_id;
    each dialogue gives one record. Safety labels and rules-of-thumb are dropped.
    """
    dialogues: dict[object, list] = {}
    for where, row in rows:
        try:
            did = row.get("dialogue_id") if isinstance(row, dict) else None
            if did is None:
                raise BadRecord("missing field 'dialogue_id'")
            try:
                rid = int(row.get("response_id", 0))
            except (TypeError, ValueError):
                raise BadRecord(f"'response_id' must be an integer, got {row.get('response_id')!r}") from None
            turn = (rid, text(row, "context"), text(row, "response"))
        except BadRecord as e:
            yield where, e
            continue
        dialogues.setdefault(did, [where]).append(turn)
    for did, (where, *turns) in dialogues.items():
        turns.sort(key=lambda t: t[0])
        try:
            record = dialogue([m for _, user, reply in turns for m in ((ROLE_USER, user), (ROLE_ASSISTANT, reply))])
        except Skip as e:
            yield where, e
            continue
        yield f"{where} (dialogue {did})", record
