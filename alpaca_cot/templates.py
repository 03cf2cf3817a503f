"""Prompt templates: one renderer for training and for inference.

A template turns a unified record into *turns*: a list of ``(prompt_text, response_text)``
pairs, one per dialogue turn (``history`` first, then the record's own instruction). For a
request at inference time the last response is ``None``. ``alpaca_cot.tokenize`` turns the
same turns into token ids on both paths, so training and inference prompts are identical.

The EOS token is never part of the text: the tokenizer layer appends its id after every
response. Text a format writes after a response besides EOS is ``response_suffix``; text
between a finished response and the next prompt is ``sep``.

The chat formats of the original's model families (chatglm, chatglm2, chatglm3, baichuan,
internlm, moss) put role ids between separately encoded pieces of text, which plain text cannot
express: they are token-level templates (``family_templates.py``, rendered as spans).
"""

from __future__ import annotations

from dataclasses import dataclass

from .family_templates import FAMILY_TEMPLATES, FamilyTemplate
from .suggest import did_you_mean

ALPACA_SYSTEM = ("Below is an instruction that describes a task. "
                 "Write a response that appropriately completes the request.\n\n")
ALPACA_SYSTEM_INPUT = ("Below is an instruction that describes a task, paired with an input that "
                       "provides further context. Write a response that appropriately completes "
                       "the request.\n\n")
ALPACA_ZH_SYSTEM = "下面是一条描述任务的指令。请写出恰当完成该请求的回答。\n\n"
ALPACA_ZH_SYSTEM_INPUT = "下面是一条描述任务的指令，以及一段提供更多背景的输入。请写出恰当完成该请求的回答。\n\n"


def user_text(record: dict) -> str:
    """The last turn's user message for templates without a separate input slot."""
    inp = record.get("input") or ""
    return f"{record['instruction']}\n{inp}" if inp else record["instruction"]


@dataclass(frozen=True)
class PromptTemplate:
    """A plain-text prompt format.

    Attributes:
        name: registry key.
        prompt: one turn's prompt, with ``{query}`` and optionally ``{round}``.
        prompt_with_input: the last turn's prompt when the record has an ``input``
            (``{instruction}``, ``{input}``); None means ``instruction\\ninput`` fills ``{query}``.
        system: default text rendered once before the first turn (a record's ``system`` wins).
        system_with_input: the system text used when the record has an ``input``.
        sep: text between a response and the next turn's prompt.
        response_suffix: text the family appends to each response (before EOS).
        round_start: number of the first ``{round}``.
        stop_strings: strings that end a reply at inference even when EOS is not produced.
    """

    name: str
    prompt: str
    prompt_with_input: str | None = None
    system: str = ""
    system_with_input: str | None = None
    sep: str = ""
    response_suffix: str = ""
    round_start: int = 0
    stop_strings: tuple[str, ...] = ()

    def turns(self, record: dict, *, with_response: bool = True, tokenizer=None) -> list[tuple[str, str | None]]:
        del tokenizer  # plain-text templates do not depend on the tokenizer
        has_input = bool(record.get("input"))
        system = record.get("system")
        if not system:
            system = self.system_with_input if (has_input and self.system_with_input) else self.system
        history = record.get("history") or []
        out: list[tuple[str, str | None]] = []
        for i, (user, assistant) in enumerate(history):
            prefix = system if i == 0 else self.sep
            out.append((prefix + self.prompt.format(query=user, round=i + self.round_start),
                        assistant + self.response_suffix))
        prefix = system if not history else self.sep
        rnd = len(history) + self.round_start
        if has_input and self.prompt_with_input:
            last = self.prompt_with_input.format(instruction=record["instruction"],
                                                 input=record["input"], round=rnd)
        else:
            last = self.prompt.format(query=user_text(record), round=rnd)
        response = record["output"] + self.response_suffix if with_response else None
        out.append((prefix + last, response))
        return out

    def clean_response(self, text: str) -> str:
        """Cut a generated reply at the first stop string and strip the family's suffix."""
        for stop in self.stop_strings + ((self.response_suffix,) if self.response_suffix else ()):
            if stop and stop in text:
                text = text[: text.index(stop)]
        return text.strip()


@dataclass(frozen=True)
class ChatTemplate:
    """The tokenizer's own chat template (``tokenizer.apply_chat_template``).

    Turns are cut out of the rendered conversation: a turn's prompt is the text the template
    adds for the user message and the generation prompt; the response is the assistant's
    content. Text the template writes after the content is dropped up to the EOS string (EOS
    is appended as an id) and the rest goes to the next prompt.
    """

    name: str = "chat"
    stop_strings: tuple[str, ...] = ()

    def turns(self, record: dict, *, with_response: bool = True, tokenizer=None) -> list[tuple[str, str | None]]:
        if tokenizer is None or not getattr(tokenizer, "chat_template", None):
            raise ValueError("template 'chat' needs a tokenizer with a chat template; "
                             "pick another --template (e.g. alpaca)")
        messages = [{"role": "system", "content": record["system"]}] if record.get("system") else []
        pairs = [tuple(t) for t in record.get("history") or []]
        pairs.append((user_text(record), record["output"] if with_response else None))
        eos = tokenizer.eos_token or ""
        out: list[tuple[str, str | None]] = []
        done = ""  # the rendered text consumed so far
        for user, assistant in pairs:
            messages.append({"role": "user", "content": user})
            with_prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            if not with_prompt.startswith(done):
                raise ValueError("the tokenizer's chat template does not render turns as a prefix of "
                                 "the longer conversation; use a plain template such as alpaca")
            prompt = with_prompt[len(done):]
            if assistant is None:
                out.append((prompt, None))
                break
            messages.append({"role": "assistant", "content": assistant})
            full = tokenizer.apply_chat_template(messages, tokenize=False)
            rest = full[len(with_prompt):]
            if not rest.startswith(assistant):
                raise ValueError("the tokenizer's chat template rewrites assistant messages; "
                                 "use a plain template such as alpaca")
            out.append((prompt, assistant))
            done = with_prompt + assistant
            if eos and rest[len(assistant):].startswith(eos):
                done += eos
        return out

    def clean_response(self, text: str) -> str:
        for stop in self.stop_strings:
            if stop in text:
                text = text[: text.index(stop)]
        return text.strip()


TEMPLATES: dict[str, PromptTemplate | ChatTemplate | FamilyTemplate] = {}


def register_template(template: PromptTemplate | ChatTemplate | FamilyTemplate) -> None:
    if template.name in TEMPLATES:
        raise ValueError(f"template {template.name!r} is already registered")
    TEMPLATES[template.name] = template


def get_template(name: str) -> PromptTemplate | ChatTemplate | FamilyTemplate:
    if name not in TEMPLATES:
        raise ValueError(f"unknown template {name!r}{did_you_mean(name, TEMPLATES)}; "
                         f"known templates: {', '.join(sorted(TEMPLATES))}")
    return TEMPLATES[name]


# The Stanford Alpaca prompt, as the original project used it for every family.
register_template(PromptTemplate(
    name="alpaca", system=ALPACA_SYSTEM, system_with_input=ALPACA_SYSTEM_INPUT,
    prompt="### Instruction:\n{query}\n\n### Response:\n",
    prompt_with_input="### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n",
    sep="\n\n", stop_strings=("### Instruction:",)))
# The same prompt in Chinese (the original's study compared prompt languages).
register_template(PromptTemplate(
    name="alpaca_zh", system=ALPACA_ZH_SYSTEM, system_with_input=ALPACA_ZH_SYSTEM_INPUT,
    prompt="### 指令：\n{query}\n\n### 回答：\n",
    prompt_with_input="### 指令：\n{instruction}\n\n### 输入：\n{input}\n\n### 回答：\n",
    sep="\n\n", stop_strings=("### 指令：",)))
register_template(ChatTemplate(name="chat"))
# The original's model families, token by token as their own chat code builds the prompt
# (chatglm, chatglm2, chatglm3, baichuan, internlm, moss): see family_templates.py.
for _family_template in FAMILY_TEMPLATES:
    register_template(_family_template)
