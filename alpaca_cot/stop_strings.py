"""Stop generation when the text of a row reaches a stop string, for any tokenizer.

transformers' ``StopStringCriteria`` precomputes, for every vocabulary entry, the string it decodes
to; with vocabularies whose added tokens are bare whitespace (MOSS's) that precomputation raises
``KeyError: ' '`` inside the tokenizer's ``convert_tokens_to_string``, and it costs ~0.6 s per 49k
entries. This criterion decodes only the last few tokens of each row instead, so it works with every
tokenizer the registry accepts and costs one short ``batch_decode`` per step.
"""

from __future__ import annotations

import torch
from transformers import StoppingCriteria


class StopOnStrings(StoppingCriteria):
    """True for a row whose newest token completes (or runs through) one of ``stop_strings``.

    Like ``StopStringCriteria``, only an occurrence that involves the newest token counts, so stop
    strings inside the prompt (earlier turns of a dialogue) never stop a row.

    Args:
        tokenizer: any tokenizer with ``batch_decode``.
        stop_strings: non-empty strings.
        window: tokens decoded per row; enough when every token of a stop string decodes to at
            least one character (default: longest stop string + 4).
    """

    def __init__(self, tokenizer, stop_strings, window: int | None = None):
        self.tokenizer = tokenizer
        self.stop_strings = tuple(s for s in stop_strings if s)
        if not self.stop_strings:
            raise ValueError("StopOnStrings needs at least one non-empty stop string")
        self.window = window or max(len(s) for s in self.stop_strings) + 4

    def __call__(self, input_ids: torch.LongTensor, scores=None, **kwargs) -> torch.BoolTensor:
        tails = input_ids[:, -self.window:].tolist()
        with_last = self.tokenizer.batch_decode(tails, skip_special_tokens=False)
        without_last = self.tokenizer.batch_decode([t[:-1] for t in tails], skip_special_tokens=False)
        # An occurrence starting at or after len(before) - len(s) + 1 ends past the text decoded
        # without the newest token, so that token is part of it.
        done = [any(full.find(s, max(0, len(before) - len(s) + 1)) != -1 for s in self.stop_strings)
                for full, before in zip(with_last, without_last)]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)
