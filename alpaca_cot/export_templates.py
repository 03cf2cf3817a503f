"""Our training template as the chat templates of other runtimes, and an Ollama ``Modelfile``.

A model answers best in the prompt format it was trained on. ``merge.py --gguf`` writes that
format twice: as a Jinja ``tokenizer.chat_template`` in the GGUF (llama.cpp, LM Studio and
transformers read it) and as the ``TEMPLATE`` of an Ollama ``Modelfile`` (Go's text/template over
Ollama's ``.Messages``). Both render what ``alpaca_cot/templates.py`` renders and
``alpaca_cot/tokenize.py`` encodes for the same conversation (``tests/test_gguf.py`` compares the
token ids for single-turn, with-input, multi-turn and system records):

- a system message replaces the template's default system text (the record's ``system``);
- user and assistant messages alternate; each assistant reply is followed by the template's
  ``response_suffix`` and the EOS token (training appends EOS after every response);
- a record's ``input`` has no place in a chat message: the Jinja template reads an optional
  ``input`` key of the last user message (transformers passes it through; llama.cpp's and
  Ollama's HTTP APIs keep only ``role`` and ``content``, and so does our own API, which puts the
  whole request in ``content``).

Every literal is written as a string expression (``{{ "..." }}``), never as raw template text, so
no whitespace-control setting (transformers renders with ``trim_blocks``) can change it.
"""

from __future__ import annotations

import json
import string

from .templates import ChatTemplate, PromptTemplate


class TemplateExportError(ValueError):
    """A template that a runtime's template language cannot express."""


def _lit(text: str) -> str:
    """``text`` as a string literal valid in Jinja and in Go templates (JSON escapes: \\n, \\", \\\\)."""
    return json.dumps(text, ensure_ascii=False)


def _fields(fmt: str) -> list[tuple[str, str | None]]:
    """A ``str.format`` template as ``[(literal, field or None), ...]``."""
    return [(literal, name) for literal, name, _, _ in string.Formatter().parse(fmt)]


def _render(fmt: str, values: dict[str, str], out) -> str:
    """Template code printing ``fmt`` with each ``{field}`` replaced by the expression ``values[field]``."""
    code = ""
    for literal, name in _fields(fmt):
        if literal:
            code += out(_lit(literal))
        if name is not None:
            if name not in values:
                raise TemplateExportError(f"template field {{{name}}} has no counterpart in a chat message")
            code += out(values[name])
    return code


def _jinja_out(expr: str) -> str:
    return "{{ " + expr + " }}"


# ---------------------------------------------------------------- Jinja (GGUF tokenizer.chat_template)


def jinja_template(template, tokenizer, bos: bool) -> str:
    """A Jinja chat template rendering ``template`` as training does (see the module docstring).

    ``bos``: the tokenizer puts BOS before every text (``tokenize.special_prefix``), so the
    rendered conversation starts with it. A ``chat`` template is the tokenizer's own.
    Raises TemplateExportError when no such template can be written.
    """
    if isinstance(template, ChatTemplate):
        if not getattr(tokenizer, "chat_template", None):
            raise TemplateExportError("template 'chat' needs the tokenizer's chat template, and it has none")
        return tokenizer.chat_template
    if not isinstance(template, PromptTemplate):
        raise TemplateExportError(f"template {template.name!r} is not a plain-text template")
    eos = tokenizer.eos_token or ""
    q = "m['content']"
    turn = "(ns.turn + " + str(template.round_start) + ")|string"
    plain = _render(template.prompt, {"query": q, "round": turn}, _jinja_out)
    with_input = plain
    if template.prompt_with_input:
        with_input = _render(template.prompt_with_input, {"instruction": q, "input": "m['input']", "round": turn},
                             _jinja_out)
    else:  # the input joins the instruction on a new line (templates.user_text)
        with_input = _render(template.prompt, {"query": q + " ~ '\\n' ~ m['input']", "round": turn}, _jinja_out)
    default_system = _lit(template.system)
    input_system = _lit(template.system_with_input or template.system)
    return "".join([
        "{%- set ns = namespace(system=none, last=-1, turn=0) -%}",
        "{%- for m in messages -%}",
        "{%- if m['role'] == 'system' and m['content'] -%}{%- set ns.system = m['content'] -%}",
        "{%- elif m['role'] == 'user' -%}{%- set ns.last = loop.index0 -%}{%- endif -%}",
        "{%- endfor -%}",
        "{%- set has_input = ns.last >= 0 and messages[ns.last]['input'] is defined and messages[ns.last]['input'] -%}",
        "{%- if ns.system is none -%}{%- set ns.system = ", input_system, " if has_input else ", default_system,
        " -%}{%- endif -%}",
        _jinja_out("bos_token") if bos else "",
        "{%- for m in messages -%}",
        "{%- if m['role'] == 'user' -%}",
        "{{ ns.system if ns.turn == 0 else ", _lit(template.sep), " }}",
        "{%- if loop.index0 == ns.last and has_input -%}", with_input, "{%- else -%}", plain, "{%- endif -%}",
        "{%- set ns.turn = ns.turn + 1 -%}",
        "{%- elif m['role'] == 'assistant' -%}",
        _jinja_out("m['content']"), _jinja_out(_lit(template.response_suffix + eos)),
        "{%- endif -%}",
        "{%- endfor -%}",
    ])


# ---------------------------------------------------------------- Go text/template (Ollama TEMPLATE)


def _go_out(expr: str) -> str:
    return "{{ " + expr + " }}"


def _chatml_default_system(tokenizer) -> str | None | bool:
    """For a ChatML chat template: its default system text ("" for none); False when it is not ChatML.

    Checked by rendering: a user message alone, and after a system message, must come out as
    ``<|im_start|>role\\ncontent<|im_end|>\\n`` blocks followed by ``<|im_start|>assistant\\n``.
    """
    def block(role, content):
        return f"<|im_start|>{role}\n{content}<|im_end|>\n"

    try:
        alone = tokenizer.apply_chat_template([{"role": "user", "content": "U1"}], tokenize=False,
                                              add_generation_prompt=True)
        with_system = tokenizer.apply_chat_template(
            [{"role": "system", "content": "S1"}, {"role": "user", "content": "U1"},
             {"role": "assistant", "content": "A1"}, {"role": "user", "content": "U2"}],
            tokenize=False, add_generation_prompt=True)
    except Exception:  # noqa: BLE001 - any template error means "not ChatML"
        return False
    tail = block("user", "U1") + "<|im_start|>assistant\n"
    if with_system != block("system", "S1") + block("user", "U1") + block("assistant", "A1") + block("user", "U2") \
            + "<|im_start|>assistant\n" or not alone.endswith(tail):
        return False
    head = alone[:-len(tail)]
    if not head:
        return ""
    if head.startswith("<|im_start|>system\n") and head.endswith("<|im_end|>\n"):
        return head[len("<|im_start|>system\n"):-len("<|im_end|>\n")]
    return False


def go_template(template, tokenizer) -> tuple[str, str]:
    """(Ollama ``TEMPLATE`` in Go text/template syntax, default ``SYSTEM`` text) for ``template``.

    Ollama puts ``SYSTEM`` in ``.Messages`` as a system message when a request has none, so the
    template itself takes the system text from there. Raises TemplateExportError for templates
    Go's text/template cannot express here (a ``{round}`` counter needs arithmetic, which it
    lacks; a chat template other than ChatML).
    """
    eos = tokenizer.eos_token or ""
    if isinstance(template, ChatTemplate):
        system = _chatml_default_system(tokenizer)
        if system is False:
            raise TemplateExportError("only ChatML chat templates (<|im_start|>role ... <|im_end|>) are written as "
                                      "an Ollama TEMPLATE; this tokenizer's is another kind")
        start, end = "<|im_start|>", "<|im_end|>\n"
        code = ("{{ range .Messages }}" + _go_out(_lit(start)) + "{{ .Role }}" + _go_out(_lit("\n"))
                + "{{ .Content }}" + _go_out(_lit(end)) + "{{ end }}" + _go_out(_lit(start + "assistant\n")))
        return code, system
    if not isinstance(template, PromptTemplate):
        raise TemplateExportError(f"template {template.name!r} is not a plain-text template")
    if any(name == "round" for fmt in (template.prompt, template.prompt_with_input or "")
           for _, name in _fields(fmt)):
        raise TemplateExportError(f"template {template.name!r} numbers its rounds, and Go's text/template has no "
                                  "arithmetic to count them")
    prompt = _render(template.prompt, {"query": ".Content"}, _go_out)
    code = "".join([
        '{{ $system := "" }}{{ $first := true }}',
        '{{ range .Messages }}{{ if and (eq .Role "system") .Content }}{{ $system = .Content }}{{ end }}{{ end }}',
        '{{ range .Messages }}',
        '{{ if eq .Role "user" }}',
        "{{ if $first }}{{ $system }}{{ else }}", _go_out(_lit(template.sep)), "{{ end }}",
        prompt, "{{ $first = false }}",
        '{{ else if eq .Role "assistant" }}',
        "{{ .Content }}", _go_out(_lit(template.response_suffix + eos)),
        "{{ end }}{{ end }}",
    ])
    return code, template.system


def stop_strings(template, tokenizer) -> list[str]:
    """Strings that end a reply: EOS (as text), the template's stop strings and response suffix."""
    stops = [tokenizer.eos_token or ""] + list(getattr(template, "stop_strings", ()))
    stops.append(getattr(template, "response_suffix", ""))
    return list(dict.fromkeys(s for s in stops if s))


def modelfile(gguf_name: str, template, tokenizer, generation) -> str:
    """An Ollama ``Modelfile`` for the GGUF file ``gguf_name`` (a path relative to the Modelfile).

    ``generation``: GenerationArguments whose values become the sampling ``PARAMETER``s
    (``temperature`` 0 when they decode greedily). Raises TemplateExportError as ``go_template``.
    """
    code, system = go_template(template, tokenizer)
    lines = [f"# Ollama Modelfile written by Alpaca-CoT's merge.py --gguf: ollama create NAME -f {gguf_name}"
             ".Modelfile", f"FROM ./{gguf_name}", _triple("TEMPLATE", code)]
    if system:
        lines.append(_triple("SYSTEM", system))
    for stop in stop_strings(template, tokenizer):
        lines.append(f"PARAMETER stop {_lit(stop)}")
    sample = generation.do_sample and not generation.greedy
    lines += [f"PARAMETER temperature {generation.temperature if sample else 0}",
              f"PARAMETER top_p {generation.top_p}", f"PARAMETER top_k {generation.top_k}",
              f"PARAMETER repeat_penalty {generation.repetition_penalty}",
              f"PARAMETER num_predict {generation.max_new_tokens}"]
    if generation.no_repeat_ngram_size:
        lines.append(f"# no_repeat_ngram_size {generation.no_repeat_ngram_size} has no Ollama counterpart: not applied")
    return "\n".join(lines) + "\n"


def _triple(keyword: str, text: str) -> str:
    if '"""' in text:
        raise TemplateExportError(f'the {keyword} text contains """, which a Modelfile cannot quote')
    return f'{keyword} """{text}"""'


PROBES = [  # record kinds a chat template must render as training does (tests/test_gguf.py has more)
    {"instruction": "Name three colours.", "input": "", "output": "Red, green and blue."},
    {"instruction": "And then?", "input": "", "output": "Four.", "history": [["Count to three.", "1, 2, 3."]]},
    {"instruction": "Hi", "input": "", "output": "Hello!", "system": "Be brief.\n"},
]


def _messages(record: dict, with_output: bool) -> list[dict]:
    out = [{"role": "system", "content": record["system"]}] if record.get("system") else []
    for user, assistant in record.get("history") or []:
        out += [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]
    out.append({"role": "user", "content": record["instruction"]})
    if with_output:
        out.append({"role": "assistant", "content": record["output"]})
    return out


def check_tokens(template, tokenizer, chat_template: str) -> tuple[list[str], list[str]]:
    """Render ``PROBES`` with ``chat_template`` and tokenize the text in one piece, as llama.cpp does.

    Returns (prompt mismatches, history mismatches): the prompt of a request must give exactly
    the ids our renderer gives (else the template is wrong); a whole conversation may differ
    where a prompt ends in a space and the reply's first word would absorb it (training
    tokenizes prompt and reply separately), which changes how earlier turns read, not the prompt
    the model answers.
    """
    from .tokenize import encode_prompts, encode_records

    prompts, history = [], []
    for record in PROBES:
        want = encode_prompts([record], tokenizer, template)[0]
        got = tokenizer.apply_chat_template(_messages(record, False), chat_template=chat_template, tokenize=True,
                                            add_generation_prompt=True, return_dict=False)
        if got != want:
            prompts.append(record["instruction"])
        trained = encode_records([record], tokenizer, template, cutoff_len=1 << 20)[0]["input_ids"]
        full = tokenizer.apply_chat_template(_messages(record, True), chat_template=chat_template, tokenize=True,
                                             return_dict=False)
        if full[:len(trained)] != trained:
            history.append(record["instruction"])
    return prompts, history
