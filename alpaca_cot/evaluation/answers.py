"""Extract the final numeric answer from a chain-of-thought reply (English or Chinese).

The one number extractor of the project: ``cot_math`` scoring, the demo and the studies use it.
``extract_number`` looks for the statements that announce the final answer ("The answer is 42.",
"答案是42", "#### 42", ``\\boxed{42}``, "答案是四十二") and takes the last one in the text; without
one it takes the last number written (a reply in words only: a Chinese numeral after "一共",
"总共", ...). Numbers are normalised, so thousands separators, full-width digits, currency
signs and trailing units do not matter: "$1,234.50" and "1234.5" are the same answer.
"""

from __future__ import annotations

import re
from fractions import Fraction

# A number: thousands groups only in threes ("1,234", never the list "3,4"); a minus sign only
# when not glued to a word or number before it ("10-3" is not "-3"); an optional fraction part.
_NUMBER = r"(?:(?<![0-9A-Za-z.])-)?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:/\d+)?"
_ZH_NUMBER = r"[零〇一二两三四五六七八九十百千万]+"
_GAP = r"[^\d\n.。!?！？]{0,12}?"  # a few characters, within the sentence, between a marker and its number
# Phrases that announce the final answer; the one written last in the text wins.
_MARKERS = [re.compile(p, re.IGNORECASE) for p in (
    r"####\s*(" + _NUMBER + ")",
    r"\\boxed\{\s*\$?\s*(" + _NUMBER + r")\s*\}",
    r"\banswer\b[^.\d\n]{0,25}?(?:\bis\b|\bwas\b|\bbe\b|:|=)" + _GAP + "(" + _NUMBER + ")",
    r"答案" + _GAP + "(" + _NUMBER + ")",
)]
_ZH_MARKERS = [re.compile(r"答案\s*(?:是|为|应该是|应为|[:：])\s*(" + _ZH_NUMBER + ")")]
# Used only when the text has no Arabic number at all ("一共有十五个").
_WEAK_ZH_MARKERS = [re.compile(r"(?:一共|总共|共计|合计|总计|(?<!公)共)\s*(?:是|有|为)?\s*(" + _ZH_NUMBER + ")")]
# "The answer is 3 * 4 = 12": an expression right after the marker counts by its result.
_EXPRESSION_TAIL = re.compile(r"(?:\s*[-+*/×÷x]\s*" + _NUMBER + r")+\s*=\s*(" + _NUMBER + ")")
_ANY_NUMBER = re.compile(_NUMBER)
_TRANSLATE = str.maketrans("０１２３４５６７８９－．，／−＄", "0123456789-.,/-$")
_ZH_DIGITS = {"零": 0, "〇": 0, "一": 1, "二": 2, "两": 2, "三": 3, "四": 4, "五": 5, "六": 6, "七": 7, "八": 8,
              "九": 9}
_ZH_UNITS = {"十": 10, "百": 100, "千": 1000}


def _zh_to_int(text: str) -> int | None:
    """'四十二' -> 42, '一百零五' -> 105, '十二' -> 12, '三万二千' -> 32000; None when malformed."""
    total, section, digit = 0, 0, None
    for ch in text:
        if ch in _ZH_DIGITS:
            if digit is not None and digit != 0:
                return None  # two digits in a row ("四二") is not a numeral we read
            digit = _ZH_DIGITS[ch]
        elif ch in _ZH_UNITS:
            section += (1 if digit is None else digit) * _ZH_UNITS[ch]
            digit = None
        elif ch == "万":
            total += (section + (digit or 0)) * 10000
            section, digit = 0, None
    return total + section + (digit or 0)


def normalize_number(text: str) -> str | None:
    """'1,234' -> '1234', '8.0' -> '8', '-3.50' -> '-3.5', '3/4' -> '0.75'; None when not a number."""
    text = text.translate(_TRANSLATE).replace(",", "").strip()
    try:
        if "/" in text:
            num, den = text.split("/")
            value = Fraction(num) / Fraction(den)
        else:
            value = Fraction(text)
    except (ValueError, ZeroDivisionError):
        return None
    if value.denominator == 1:
        return str(value.numerator)
    return repr(round(float(value), 6))


def _marked(text: str, patterns, convert) -> list[tuple[int, str]]:
    """``(end position, value)`` of every number announced by one of ``patterns``."""
    found = []
    for pattern in patterns:
        for m in pattern.finditer(text):
            end, value = m.end(1), convert(m.group(1))
            tail = _EXPRESSION_TAIL.match(text, end) if convert is normalize_number else None
            if tail:
                end, value = tail.end(1), normalize_number(tail.group(1))
            if value is not None:
                found.append((end, str(value)))
    return found


def extract_number(text: str | None) -> str | None:
    """The final answer in ``text``: after the last answer marker if there is one, else the last number."""
    if not text:
        return None
    text = text.translate(_TRANSLATE)
    found = _marked(text, _MARKERS, normalize_number) + _marked(text, _ZH_MARKERS, _zh_to_int)
    if found:
        return max(found, key=lambda f: f[0])[1]
    for match in reversed(list(_ANY_NUMBER.finditer(text))):
        value = normalize_number(match.group(0))
        if value is not None:
            return value
    found = _marked(text, _WEAK_ZH_MARKERS, _zh_to_int)
    return max(found, key=lambda f: f[0])[1] if found else None


def exact_match(prediction: str | None, reference: str | None) -> bool:
    """Whether the numbers extracted from both texts are equal (False when either has none)."""
    a, b = extract_number(prediction), extract_number(reference)
    return a is not None and a == b
