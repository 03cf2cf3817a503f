"""Preference records -> token ids for TRL's trainers, from our one renderer.

The prompt of a record (system, history turns with their answers, the last instruction) is
encoded by ``tokenize.encode_prompts``, the function inference uses, so a preference-tuned model
is trained on exactly the prompt tokens it is later asked with; chosen and rejected share those
ids by construction. Each response is rendered by the template (``turns``; the family's response
suffix included), tokenized on its own and ends in the EOS id, as in instruction tuning.

Truncation at ``cutoff_len`` (prompt + the longer response):

- the prompt gives way first, keeping its end (the tokenizer's special prefix, e.g. BOS, stays in
  front): it keeps what the longest response leaves, but at least half of ``cutoff_len``;
- a response still too long keeps its start and ends in EOS (its last kept token is replaced);
- a sample is dropped when a response keeps no token besides EOS, or when cutting made chosen and
  rejected identical (the pair would state no preference). ``TruncationReport`` counts both, with
  the first record indices, as instruction tuning reports its cuts.
"""

from __future__ import annotations

from .tokenize import TruncationReport, _tokenize_texts, encode_prompts, special_prefix


def _response_texts(records: list[dict], template, tokenizer, key: str) -> list[str]:
    """The template's text of ``record[key]`` as the last response (suffix included)."""
    return [template.turns({**r, "output": r[key]}, with_response=True, tokenizer=tokenizer)[-1][1]
            for r in records]


def _fit(prompt: list[int], responses: list[list[int]], cutoff_len: int, keep_front: int, eos: int):
    """Cut ``prompt`` (keeping its first ``keep_front`` and last ids) and ``responses`` to ``cutoff_len``.

    Returns ``(prompt, responses, truncated)``; see the module docstring for the rule.
    """
    longest = max(len(r) for r in responses)
    if len(prompt) + longest <= cutoff_len:
        return prompt, responses, False
    keep = max(cutoff_len - longest, min(len(prompt), cutoff_len // 2))
    if len(prompt) > keep:
        tail = max(keep - keep_front, 0)
        prompt = prompt[:keep_front] + (prompt[len(prompt) - tail:] if tail else [])
    room = cutoff_len - len(prompt)
    cut = []
    for response in responses:
        if len(response) > room:
            response = response[:room]
            if response:
                response[-1] = eos
        cut.append(response)
    return prompt, cut, True


def _drop(report: TruncationReport, index: int) -> None:
    report.dropped += 1
    if len(report.dropped_examples) < 10:
        report.dropped_examples.append(index)


def encode_pairs(records: list[dict], tokenizer, template, cutoff_len: int,
                 report: TruncationReport | None = None) -> list[dict]:
    """Pairs -> ``{"prompt_ids", "chosen_ids", "rejected_ids"}`` (lists of ids; responses end in EOS).

    ``report`` receives the truncation counts; dropped samples are left out of the result.
    """
    report = report if report is not None else TruncationReport()
    eos = tokenizer.eos_token_id
    keep_front = len(special_prefix(tokenizer))
    prompts = encode_prompts(records, tokenizer, template)
    chosen = _tokenize_texts(tokenizer, _response_texts(records, template, tokenizer, "chosen"))
    rejected = _tokenize_texts(tokenizer, _response_texts(records, template, tokenizer, "rejected"))
    out = []
    for index, (prompt, c, r) in enumerate(zip(prompts, chosen, rejected)):
        report.total += 1
        prompt, (c, r), truncated = _fit(prompt, [c + [eos], r + [eos]], cutoff_len, keep_front, eos)
        report.truncated += truncated
        if len(c) < 2 or len(r) < 2 or c == r:
            _drop(report, index)
            continue
        out.append({"prompt_ids": prompt, "chosen_ids": c, "rejected_ids": r})
    return out


def encode_unpaired(records: list[dict], tokenizer, template, cutoff_len: int,
                    report: TruncationReport | None = None) -> list[dict]:
    """Labelled records -> ``{"prompt_ids", "completion_ids", "label"}`` (KTO's layout)."""
    report = report if report is not None else TruncationReport()
    eos = tokenizer.eos_token_id
    keep_front = len(special_prefix(tokenizer))
    prompts = encode_prompts(records, tokenizer, template)
    outputs = _tokenize_texts(tokenizer, _response_texts(records, template, tokenizer, "output"))
    out = []
    for index, (record, prompt, completion) in enumerate(zip(records, prompts, outputs)):
        report.total += 1
        prompt, (completion,), truncated = _fit(prompt, [completion + [eos]], cutoff_len, keep_front, eos)
        report.truncated += truncated
        if len(completion) < 2:
            _drop(report, index)
            continue
        out.append({"prompt_ids": prompt, "completion_ids": completion, "label": bool(record["label"])})
    return out
