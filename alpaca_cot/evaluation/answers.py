"""Extract the final numeric answer from a chain-of-thought reply (English or Chinese)."""

from __future__ import annotations

import re

_NUMBER = r"-?\d[\d,，]*(?:\.\d+)?"
# Phrases that announce the final answer, most specific first; the last match in the text wins.
_MARKERS = [
    r"####\s*(" + _NUMBER + ")",
    r"answer\s*(?:is|:|=)\s*\$?\s*(" + _NUMBER + ")",
    r"答案(?:是|为|：|:)\s*(" + _NUMBER + ")",
    r"(?:结果|一共|总共|共)(?:是|为)?\s*(" + _NUMBER + ")",
]
_FULLWIDTH = str.maketrans("０１２３４５６７８９－．", "0123456789-.")


def normalize_number(text: str) -> str | None:
    """'1,234' -> '1234', '8.0' -> '8', '-3.50' -> '-3.5'; None when not a number."""
    text = text.translate(_FULLWIDTH).replace(",", "").replace("，", "").strip()
    try:
        value = float(text)
    except ValueError:
        return None
    return str(int(value)) if value == int(value) else repr(value)


def extract_number(text: str) -> str | None:
    """The final answer in ``text``: after an answer marker if there is one, else the last number."""
    if not text:
        return None
    text = text.translate(_FULLWIDTH)
    for pattern in _MARKERS:
        matches = re.findall(pattern, text, flags=re.IGNORECASE)
        if matches:
            return normalize_number(matches[-1])
    numbers = re.findall(_NUMBER, text)
    return normalize_number(numbers[-1]) if numbers else None


def exact_match(prediction: str, reference: str) -> bool:
    """Whether the numbers extracted from both texts are equal (False when either has none)."""
    a, b = extract_number(prediction), extract_number(reference)
    return a is not None and a == b
