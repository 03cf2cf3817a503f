"""The one number extractor: final answers in English and Chinese chain-of-thought replies."""

import pytest

from alpaca_cot.evaluation.answers import exact_match, extract_number, normalize_number

CASES = [
    # English answer statements
    ("The answer is 42.", "42"),
    ("So 7 * 4 = 28. The answer is 28.", "28"),
    ("the answer is: 15 apples", "15"),
    ("Answer: 0.50", "0.5"),
    ("The final answer is $18$.", "18"),
    ("The answer is $1,234.50", "1234.5"),
    ("The answer is 3 * 4 = 12.", "12"),
    ("The answer is -7 degrees.", "-7"),
    ("I first thought the answer is 5, but checking again, the answer is 6.", "6"),
    ("The answer to the question is 9 books.", "9"),
    ("The final answer is 3/4", "0.75"),
    ("Therefore the answer is \\boxed{96}.", "96"),
    ("The answer is 25%.", "25"),
    # GSM8K references and replies in that style
    ("She has 12 + 9 = <<12+9=21>>21 shells.\n#### 21", "21"),
    ("Together 1,250 + 2,500 = 3,750 rolls.\n#### 3,750", "3750"),
    ("#### 1000000", "1000000"),
    # no statement: the last number written
    ("In total, there are 7 * 4 = 28 stickers.", "28"),
    ("10-3=7", "7"),
    ("It is -5 degrees outside.", "-5"),
    ("He pays $1,234.50 in total.", "1234.5"),
    ("She sorted them: 93, 74, 64, 61, 32", "32"),
    ("Each friend gets 8.0 cookies.", "8"),
    ("42", "42"),
    # Chinese answer statements
    ("答案是42", "42"),
    ("答案是42。", "42"),
    ("赵磊原来有31辆，又买了20辆，所以31 + 20 = 51。送给刘洋12辆后，51 - 12 = 39。答案是39。", "39"),
    ("答案：15元", "15"),
    ("答案为 1,200 个。", "1200"),
    ("答案是 -3。", "-3"),
    ("答案是：共有42个", "42"),
    ("答案是 15 个苹果。他们一共用了3天。", "15"),
    ("所以答案是１２３。", "123"),
    ("答案是四十二。", "42"),
    ("答案：一百零五", "105"),
    ("一共有十五个苹果。", "15"),
    # Chinese replies without a statement
    ("公共汽车上原来有12人，下车3人，还剩9人。", "9"),
    ("3，4，5", "5"),
    ("每人分到6支铅笔", "6"),
    # nothing to extract
    ("I do not know.", None),
    ("", None),
    (None, None),
]


# Number formats, each in a reply with its expected value (the formats of answers.py's docstring).
FORMATS = [
    # signs: before and after a currency symbol, unicode and full-width minus, never a glued hyphen
    ("so the answer is -$40.", "-40"),
    ("The answer is $-40.", "-40"),
    ("He is left with −$12.50.", "-12.5"),
    ("The temperature fell to −8 °C.", "-8"),
    ("答案是－5。", "-5"),
    ("The answer is +7.", "7"),
    ("10-3=7", "7"),
    ("Week 2-3: 4 apples", "4"),
    # currency symbols and units
    ("The answer is €30.", "30"),
    ("The answer is £1,000,000.", "1000000"),
    ("答案是￥45。", "45"),
    ("The answer is 3.5 kg.", "3.5"),
    ("The answer is 60 km/h.", "60"),
    ("The answer is 25 %.", "25"),
    ("So 12.5% of them.", "12.5"),
    # thousands separators in several conventions
    ("The answer is 1,234.5", "1234.5"),
    ("The answer is 1.234,5", "1234.5"),
    ("The answer is 1.234.567", "1234567"),
    ("The answer is 1.234", "1.234"),
    ("The answer is 1 234", "1234"),
    ("La réponse : the answer is 1\u202f234,5 €", "1234.5"),
    ("The answer is 12\u00a0345", "12345"),
    ("The answer is 1'234.5", "1234.5"),
    ("The answer is 1’234", "1234"),
    ("Each costs €1,50.", "1.5"),
    ("She sorted them: 3,4,5", "5"),
    # Chinese multipliers
    ("答案是1.5万。", "15000"),
    ("答案是3万元", "30000"),
    ("答案是2亿", "200000000"),
    ("答案是两万三千", "23000"),
    ("The answer is 2.5 million.", "2500000"),
    # fractions and decimals
    ("The answer is 3/4.", "0.75"),
    ("The answer is -3/4.", "-0.75"),
    ("The answer is 1 1/2 cups.", "1.5"),
    ("The answer is 1½ cups.", "1.5"),
    ("The answer is ¾.", "0.75"),
    ("The answer is \\boxed{\\frac{1}{3}}.", "0.333333"),
    ("The answer is .5", "0.5"),
    ("The answer is 0.50.", "0.5"),
    ("The answer is ３．５。", "3.5"),
]


@pytest.mark.parametrize("text,expected", CASES + FORMATS)
def test_extract_number(text, expected):
    assert extract_number(text) == expected


def test_the_table_is_large_and_bilingual():
    chinese = [t for t, _ in CASES if t and any("\u4e00" <= c <= "\u9fff" for c in t)]
    assert len(CASES) >= 30 and len(chinese) >= 10 and len(CASES) - len(chinese) >= 20


@pytest.mark.parametrize("text,expected", [("1,234", "1234"), ("8.0", "8"), ("-3.50", "-3.5"), ("3/4", "0.75"),
                                           ("１２", "12"), ("abc", None), ("1/0", None), ("-$40", "-40"),
                                           ("1.234,5", "1234.5"), ("1 234", "1234"), ("1,5", "1.5"),
                                           ("3,4,5", None), ("1.5万", "15000"), ("-1 1/2", "-1.5")])
def test_normalize_number(text, expected):
    assert normalize_number(text) == expected


def test_exact_match_compares_final_numbers():
    assert exact_match("so 2 + 3 = 5. The answer is 5.", "The answer is 5.")
    assert exact_match("答案是5。", "#### 5")
    assert exact_match("The answer is 1,000.", "1000")
    assert not exact_match("The answer is 6.", "The answer is 5.")
    assert not exact_match("no idea", "no number either")
    assert exact_match("so the answer is -$40.", "#### -40") and not exact_match("The answer is $40.", "#### -40")
