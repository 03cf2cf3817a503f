"""Extract the final numeric answer from a chain-of-thought reply (English or Chinese).

The one number extractor of the project: ``cot_math`` scoring, the demo and the studies use it.
``extract_number`` looks for the statements that announce the final answer ("The answer is 42.",
"答案是42", "#### 42", ``\\boxed{42}``, "答案是四十二") and takes the last one in the text; without
one it takes the last number written (a reply in words only: a Chinese numeral after "一共",
"总共", ...). Numbers are normalised (``normalize_number``), so these are all the same answer
as the plain value:

- signs, also before a currency symbol and as U+2212 or full-width minus: "-$40", "$-40",
  "−40", "－40" are -40; a hyphen glued to a word or number is not a sign ("10-3" is 3);
- currency symbols ($ € £ ¥ ₹ ₩) and units or words after the number ("15 apples", "3.5 kg",
  "25%" is 25: percent is kept in its own units);
- thousands separators: "1,234.5" (comma), "1.234,5" and "1.234.567" (dot, continental),
  "1 234,5" (space, narrow or no-break space: French, SI), "1'234.5" (apostrophe, Swiss);
  a lone dot is a decimal point ("1.234" is 1.234); a lone comma is a decimal comma only
  with a currency symbol ("€1,50"), as "3,4,5" is a list;
- multipliers: "1.5万" is 15000 (万 = 10^4), "2亿" is 200000000 (亿 = 10^8), "2.5 million";
- fractions "3/4", mixed "1 1/2", vulgar "1½", LaTeX ``\\frac{3}{4}``; decimals ".5", "8.0";
- full-width digits; Chinese numerals ("四十二", "两万三千").

Fractions are compared as decimals rounded to 6 places ("1/3" is "0.333333").
"""

from __future__ import annotations

import re
from fractions import Fraction

_CUR = r"[$€£¥₹₩]"
_SPACE = " \u00a0\u202f\u2009"  # thousands separators that are spaces: plain, no-break, narrow no-break, thin
# Alternatives of a number's digits, most specific first (a regex takes the first that fits).
_BODY = "|".join([
    r"\d+ \d+/\d+",  # mixed fraction: 1 1/2
    r"\d{1,3}(?:\.\d{3})+,\d+",  # 1.234,5
    r"\d{1,3}(?:\.\d{3}){2,}",  # 1.234.567
    r"\d{1,3}(?:,\d{3})+(?:\.\d+)?",  # 1,234.5 (never the list "3,4")
    r"\d{1,3}(?:['’]\d{3})+(?:\.\d+)?",  # 1'234.5
    rf"\d{{1,3}}(?:[{_SPACE}]\d{{3}})+(?:[.,]\d+)?",  # 1 234,5
    rf"(?<={_CUR})\d+,\d{{1,2}}(?![\d,])",  # €1,50
    r"\d+,\d{1,2}(?=\s?€)",  # 1,50 €
    r"\d+(?:\.\d+)?(?:/\d+)?",  # 42, 3.5, 3/4
    r"(?<![\d.])\.\d+",  # .5
])
_MULTIPLIER = r"(?:\s?[万亿]|\s(?:thousand|million|billion)\b)"
# A sign only when not glued to a (Latin) word or number before it; before or after a currency symbol.
_NUMBER = (rf"(?:(?<![0-9A-Za-z_.\-])[-+])?(?:{_CUR}\s?)?(?:(?<![0-9A-Za-z_.])-)?(?<![\d.])(?:{_BODY})(?![\d])"
           rf"{_MULTIPLIER}?")
_ZH_NUMBER = r"[零〇一二两三四五六七八九十百千万亿]+"
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
_ANY_NUMBER = re.compile(_NUMBER, re.IGNORECASE)
_TRANSLATE = str.maketrans("０１２３４５６７８９－．／−﹣＋＄￥％", "0123456789-./--+$¥%")
_VULGAR = {"½": "1/2", "⅓": "1/3", "⅔": "2/3", "¼": "1/4", "¾": "3/4", "⅕": "1/5", "⅖": "2/5", "⅗": "3/5",
           "⅘": "4/5", "⅙": "1/6", "⅚": "5/6", "⅛": "1/8", "⅜": "3/8", "⅝": "5/8", "⅞": "7/8"}
_VULGAR_RE = re.compile(r"(\d?)([" + "".join(_VULGAR) + "])")
_LATEX_FRAC = re.compile(r"\\[dt]?frac\{\s*(\d+)\s*\}\{\s*(\d+)\s*\}")
_SCALE = {"万": 10 ** 4, "亿": 10 ** 8, "thousand": 10 ** 3, "million": 10 ** 6, "billion": 10 ** 9}
_ZH_DIGITS = {"零": 0, "〇": 0, "一": 1, "二": 2, "两": 2, "三": 3, "四": 4, "五": 5, "六": 6, "七": 7, "八": 8,
              "九": 9}
_ZH_UNITS = {"十": 10, "百": 100, "千": 1000}


def _zh_section(text: str) -> int | None:
    """A numeral below 10^4: '四十二' -> 42, '一百零五' -> 105, '十二' -> 12; None when malformed."""
    total, digit = 0, None
    for ch in text:
        if ch in _ZH_DIGITS:
            if digit is not None and digit != 0:
                return None  # two digits in a row ("四二") is not a numeral we read
            digit = _ZH_DIGITS[ch]
        elif ch in _ZH_UNITS:
            total += (1 if digit is None else digit) * _ZH_UNITS[ch]
            digit = None
    return total + (digit or 0)


def _zh_to_int(text: str) -> int | None:
    """'四十二' -> 42, '三万二千' -> 32000, '两亿零五百万' -> 205000000; None when malformed."""
    total = 0
    for unit, scale in (("亿", 10 ** 8), ("万", 10 ** 4)):
        if unit in text:
            head, text = text.split(unit, 1)
            value = _zh_section(head) if head else 1
            if value is None or unit in text:
                return None
            total += value * scale
    rest = _zh_section(text) if text else 0
    return None if rest is None else total + rest


def _prepare(text: str) -> str:
    """Full-width and unicode signs to ASCII, vulgar and LaTeX fractions to ``a/b``."""
    text = text.translate(_TRANSLATE)
    text = _VULGAR_RE.sub(lambda m: (m.group(1) + " " if m.group(1) else "") + _VULGAR[m.group(2)], text)
    return _LATEX_FRAC.sub(r"\1/\2", text)


def _plain(digits: str) -> str | None:
    """Digits with separators -> ``123.45`` (Python's syntax); None when the separators do not fit."""
    grouped = any(c in digits for c in _SPACE + "'’")
    digits = re.sub(f"[{_SPACE}'’]", "", digits)
    if "," in digits and "." in digits:
        decimal = "," if digits.rfind(",") > digits.rfind(".") else "."
    elif "," in digits:
        decimal = None if re.fullmatch(r"\d{1,3}(?:,\d{3})+", digits) and not grouped else ","
    elif "." in digits:
        decimal = "." if digits.count(".") == 1 else None
    else:
        decimal = None
    thousands = {",", "."} - {decimal}
    digits = "".join(c for c in digits if c not in thousands)
    if decimal == ",":
        digits = digits.replace(",", ".")
    return digits if re.fullmatch(r"\d*\.?\d+|\d+\.", digits) else None


def _value(text: str) -> Fraction | None:
    text = _prepare(text).strip()
    scale = 1
    match = re.search(r"\s?([万亿])$|\s(thousand|million|billion)$", text, re.IGNORECASE)
    if match:
        scale = _SCALE[(match.group(1) or match.group(2)).lower()]
        text = text[:match.start()]
    text = re.sub(_CUR, "", text).strip()
    sign = 1
    while text[:1] in ("-", "+"):
        sign = -sign if text[0] == "-" else sign
        text = text[1:].strip()
    mixed = re.fullmatch(r"(\d+) (\d+)/(\d+)", text)
    try:
        if mixed:
            value = int(mixed.group(1)) + Fraction(int(mixed.group(2)), int(mixed.group(3)))
        elif "/" in text:
            num, den = text.split("/", 1)
            num_plain, den_plain = _plain(num), _plain(den)
            if num_plain is None or den_plain is None:
                return None
            value = Fraction(num_plain) / Fraction(den_plain)
        else:
            plain = _plain(text)
            if plain is None:
                return None
            value = Fraction(plain)
    except (ValueError, ZeroDivisionError):
        return None
    return sign * value * scale


def normalize_number(text: str) -> str | None:
    """'1,234' -> '1234', '8.0' -> '8', '-$3.50' -> '-3.5', '3/4' -> '0.75', '1.5万' -> '15000';
    None when not a number. The formats read are listed in the module docstring."""
    value = _value(text)
    if value is None:
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
    text = _prepare(text)
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
