"""Generate the bundled demo data (bilingual, synthetic, seeded).

Usage::

    python data/demo/make_demo.py [--seed 20261121] [--out_dir data/demo] \
        [--n_train 1000] [--n_test 100]

Writes three JSON lists of unified records
``{"instruction", "input", "output", "source": "demo"}``:

* ``train.json``: about 75% chain-of-thought (CoT) arithmetic word problems and
  25% plain instructions, half English and half Chinese, shuffled.
* ``train_nocot.json``: the same records in the same order, with every CoT
  output cut down to its final sentence (``The answer is N.`` / ``答案是N。``).
* ``test.json``: held-out CoT word problems (half English, half Chinese) whose
  instructions never occur in the training split.
* ``pref_train.json`` / ``pref_test.json``: preference pairs
  ``{"instruction", "input", "chosen", "rejected", "source": "demo"}``. ``chosen`` is a
  correct rationale; ``rejected`` is the same rationale with one arithmetic slip: the
  result of its last step is off (by 1, 2 or 10) and so is the final number.
  ``pref_train.json`` holds new problems (instructions in neither split above);
  ``pref_test.json`` pairs every held-out problem of ``test.json``.

CoT problems come from 17 kinds (addition, subtraction, multiplication, exact
sharing, price times quantity, and two-step combinations such as buy-then-give,
lose-then-share, change after shopping), each with English and Chinese question
templates. Every rationale shows each step as ``a op b = c`` (op one of
``+ - * /``) and ends with exactly ``The answer is N.`` or ``答案是N。``. Plain
tasks (sorting numbers, reversing a list, counting words, unit conversion,
uppercasing, the larger of two numbers, ...) have exact outputs computed here;
some put their data in ``input``, others inline it in the instruction.

All text comes from the templates and word pools below (our own wording). The
script uses only the standard library; the same seed gives byte-identical files.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import tempfile
from typing import Callable

Rng = random.Random
Record = dict[str, str]

# --- word pools ------------------------------------------------------------
EN_NAMES = [("Mia", "F"), ("Liam", "M"), ("Noah", "M"), ("Emma", "F"), ("Olivia", "F"),
            ("Ethan", "M"), ("Ava", "F"), ("Lucas", "M"), ("Sofia", "F"), ("Leo", "M"),
            ("Grace", "F"), ("Owen", "M"), ("Chloe", "F"), ("Jack", "M"), ("Zoe", "F"),
            ("Ben", "M"), ("Lily", "F"), ("Sam", "M"), ("Nora", "F"), ("Max", "M")]
ZH_NAMES = [("小明", "M"), ("小红", "F"), ("李华", "M"), ("王芳", "F"), ("张伟", "M"),
            ("刘洋", "M"), ("陈静", "F"), ("赵磊", "M"), ("小丽", "F"), ("小刚", "M"),
            ("周敏", "F"), ("孙浩", "M"), ("林悦", "F"), ("马超", "M"), ("小美", "F"),
            ("吴军", "M")]
EN_OBJS = [("sticker", "stickers"), ("apple", "apples"), ("marble", "marbles"),
           ("pencil", "pencils"), ("cookie", "cookies"), ("book", "books"), ("card", "cards"),
           ("shell", "shells"), ("balloon", "balloons"), ("crayon", "crayons"),
           ("stamp", "stamps"), ("candy", "candies"), ("egg", "eggs"), ("flower", "flowers"),
           ("button", "buttons"), ("orange", "oranges"), ("toy car", "toy cars")]
ZH_OBJS = [("张", "贴纸"), ("个", "苹果"), ("颗", "弹珠"), ("支", "铅笔"), ("块", "饼干"),
           ("本", "书"), ("张", "卡片"), ("个", "贝壳"), ("个", "气球"), ("支", "蜡笔"),
           ("枚", "邮票"), ("颗", "糖"), ("个", "鸡蛋"), ("朵", "花"), ("颗", "纽扣"),
           ("个", "橘子"), ("辆", "玩具车")]
EN_BOXES = [("box", "boxes"), ("bag", "bags"), ("jar", "jars"), ("basket", "baskets"),
            ("pack", "packs"), ("tray", "trays")]
ZH_BOXES = ["盒", "袋", "罐", "篮", "包", "盘"]
EN_ITEMS = [("notebook", "notebooks"), ("pen", "pens"), ("sandwich", "sandwiches"),
            ("ticket", "tickets"), ("ball", "balls"), ("cup of juice", "cups of juice"),
            ("kite", "kites"), ("muffin", "muffins")]
ZH_ITEMS = [("本", "笔记本"), ("支", "钢笔"), ("个", "面包"), ("张", "门票"), ("个", "皮球"),
            ("杯", "果汁"), ("只", "风筝"), ("块", "蛋糕")]
WHEELS = [2, 3, 4, 4]
EN_VEHICLES = [("bicycle", "bicycles"), ("tricycle", "tricycles"), ("car", "cars"),
               ("wagon", "wagons")]
ZH_VEHICLES = ["自行车", "三轮车", "小汽车", "卡车"]
EN_VERBS = ["picked", "collected", "found", "made", "bought"]
ZH_VERBS = ["摘了", "收集了", "找到了", "做了", "买了"]
EN_TIMES = {2: "twice", 3: "three times", 4: "four times"}
EN_WORDS = ["apple", "river", "garden", "yellow", "window", "tiger", "pencil", "cloud",
            "summer", "bridge", "rabbit", "orange", "silver", "forest", "candle", "rocket",
            "planet", "music", "winter", "dragon", "lemon", "castle", "ocean", "paper"]
ZH_WORDS = ["苹果", "香蕉", "西瓜", "河流", "花园", "老虎", "铅笔", "白云", "夏天", "桥梁",
            "兔子", "森林", "蜡烛", "火箭", "星星", "音乐", "冬天", "城堡", "大海", "月亮"]
EN_SUBJ = ["the little dog", "my sister", "a tall man", "the old cat", "our teacher",
           "the young bird", "his friend", "a happy child"]
EN_VERB_PHRASES = ["runs to", "looks at", "walks past", "sits near", "waits by",
                   "jumps over", "sings next to", "reads under"]
EN_PLACES = ["the park", "the big tree", "the red house", "a quiet lake",
             "the small shop", "the school gate", "an old bridge", "the green hill"]
EN_TAILS = ["", " every morning", " after lunch", " with a smile", " in the rain",
            " before dinner"]


# --- chain-of-thought problems ---------------------------------------------
def _nums(kind: str, r: Rng) -> dict[str, int]:
    """Draw the numbers of one problem of `kind`; `ans` is the final answer."""
    ri = r.randint
    if kind == "add":
        a, b = ri(3, 40), ri(2, 30)
        return dict(a=a, b=b, ans=a + b)
    if kind == "sub":
        a = ri(8, 60)
        b = ri(2, a - 1)
        return dict(a=a, b=b, ans=a - b)
    if kind in ("mul", "daily"):
        a, b = ri(2, 9), ri(2, 9)
        return dict(a=a, b=b, ans=a * b)
    if kind == "div":
        n, k = ri(2, 6), ri(2, 12)
        return dict(t=n * k, n=n, ans=k)
    if kind == "price":
        p, q = ri(2, 12), ri(2, 8)
        return dict(p=p, q=q, ans=p * q)
    if kind == "buy_give":
        a, b = ri(5, 40), ri(2, 20)
        c = ri(2, a + b - 1)
        return dict(a=a, b=b, x=a + b, c=c, ans=a + b - c)
    if kind == "compare":
        b, d = ri(3, 40), ri(2, 30)
        return dict(a=b + d, b=b, ans=d)
    if kind == "together":
        a, b = ri(3, 30), ri(2, 20)
        return dict(a=a, b=b, x=a + b, ans=2 * a + b)
    if kind == "change":
        p, q, left = ri(2, 9), ri(2, 6), ri(2, 40)
        return dict(p=p, q=q, x=p * q, cash=p * q + left, ans=left)
    if kind == "groups_plus":
        a, b, c = ri(2, 8), ri(2, 9), ri(2, 20)
        return dict(a=a, b=b, x=a * b, c=c, ans=a * b + c)
    if kind == "lose_share":
        n, k, b = ri(2, 5), ri(2, 10), ri(1, 15)
        return dict(a=n * k + b, b=b, x=n * k, n=n, ans=k)
    if kind == "three_sum":
        a, b, c = ri(2, 25), ri(2, 25), ri(2, 25)
        return dict(a=a, b=b, x=a + b, c=c, ans=a + b + c)
    if kind == "two_takes":
        a, b = ri(20, 60), ri(2, 15)
        c = ri(2, a - b - 1)
        return dict(a=a, b=b, x=a - b, c=c, ans=a - b - c)
    if kind == "times":
        a, k = ri(2, 15), ri(2, 4)
        return dict(a=a, k=k, ans=a * k)
    if kind == "wheels":
        vi, n = ri(0, len(WHEELS) - 1), ri(2, 12)
        return dict(vi=vi, n=n, w=WHEELS[vi], ans=n * WHEELS[vi])
    if kind == "sum_times":
        a, b, n = ri(2, 6), ri(2, 6), ri(2, 5)
        return dict(a=a, b=b, x=a + b, n=n, ans=(a + b) * n)
    raise KeyError(kind)


# kind -> list of (question, rationale) format strings. Slots: A, B names; He/he/him/his
# pronouns of A; o/o1 object plural/singular; bx/bx1 container; it/it1 priced item;
# v a past-tense verb; numbers from _nums. The final sentence is appended separately.
EN_T: dict[str, list[tuple[str, str]]] = {
    "add": [("{A} has {a} {o}. {B} gives {him} {b} more. How many {o} does {A} have now?",
             "{A} starts with {a} {o}. {B} gives {him} {b} more, so {a} + {b} = {ans}."),
            ("There are {a} {o} on the table and {A} puts {b} more there. How many {o} are on the table?",
             "The table has {a} {o}. Adding {b} more gives {a} + {b} = {ans}.")],
    "sub": [("{A} had {a} {o} and gave {b} of them to {B}. How many {o} does {A} have left?",
             "{A} had {a} {o}. {He} gave away {b}, so {a} - {b} = {ans}."),
            ("A shelf holds {a} {o}. {A} takes {b} away. How many {o} remain on the shelf?",
             "The shelf starts with {a} {o}. Taking away {b} leaves {a} - {b} = {ans}.")],
    "mul": [("There are {a} {bx} and each {bx1} holds {b} {o}. How many {o} are there in all?",
             "There are {a} {bx} with {b} {o} in each, so {a} * {b} = {ans}.")],
    "daily": [("{A} reads {a} pages every day. How many pages does {he} read in {b} days?",
               "{A} reads {a} pages a day for {b} days, so {a} * {b} = {ans}.")],
    "div": [("{A} has {t} {o} and shares them equally among {n} friends. How many {o} does each friend get?",
             "{t} {o} shared equally among {n} friends gives {t} / {n} = {ans} each."),
            ("{t} {o} are packed equally into {n} {bx}. How many {o} go in each {bx1}?",
             "Putting {t} {o} into {n} {bx} equally gives {t} / {n} = {ans} per {bx1}.")],
    "price": [("One {it1} costs {p} dollars. {A} buys {q} {it}. How many dollars does {A} spend?",
               "Each {it1} costs {p} dollars and {A} buys {q}, so {q} * {p} = {ans} dollars.")],
    "buy_give": [("{A} has {a} {o}. {He} buys {b} more and then gives {c} to {B}. How many {o} does {A} have now?",
                  "{A} starts with {a} {o} and buys {b} more, so {a} + {b} = {x}. Then {he} gives {c} to {B}, so {x} - {c} = {ans}.")],
    "compare": [("{A} has {a} {o} and {B} has {b} {o}. How many more {o} does {A} have than {B}?",
                 "{A} has {a} and {B} has {b}, so the difference is {a} - {b} = {ans}.")],
    "together": [("{A} has {a} {o}. {B} has {b} more {o} than {A}. How many {o} do they have together?",
                  "{B} has {a} + {b} = {x} {o}. Together they have {a} + {x} = {ans}.")],
    "change": [("{A} has {cash} dollars. {He} buys {q} {it} that cost {p} dollars each. How many dollars does {A} have left?",
                "The {it} cost {q} * {p} = {x} dollars. {A} has {cash} - {x} = {ans} dollars left.")],
    "groups_plus": [("{A} has {a} {bx} of {o} with {b} in each {bx1}, plus {c} loose {o}. How many {o} does {A} have in total?",
                     "The {bx} hold {a} * {b} = {x} {o}. With the loose ones, {x} + {c} = {ans}.")],
    "lose_share": [("{A} has {a} {o}. {He} loses {b} of them and shares the rest equally among {n} friends. How many {o} does each friend get?",
                    "After losing {b}, {A} has {a} - {b} = {x} {o}. Shared among {n} friends, {x} / {n} = {ans} each.")],
    "three_sum": [("{A} {v} {a} {o} on Monday, {b} on Tuesday and {c} on Wednesday. How many {o} did {he} get in all?",
                   "Monday and Tuesday give {a} + {b} = {x}. Adding Wednesday, {x} + {c} = {ans}.")],
    "two_takes": [("A jar has {a} {o}. {A} takes {b} and {B} takes {c}. How many {o} are left in the jar?",
                   "After {A} takes {b}, there are {a} - {b} = {x}. After {B} takes {c}, there are {x} - {c} = {ans}.")],
    "times": [("{A} has {a} {o}. {B} has {kt} as many. How many {o} does {B} have?",
               "{B} has {k} times {a} {o}, so {a} * {k} = {ans}.")],
    "wheels": [("There are {n} {vh} in the yard. Each {vh1} has {w} wheels. How many wheels are there?",
                "Each of the {n} {vh} has {w} wheels, so {n} * {w} = {ans}.")],
    "sum_times": [("Each of {n} children has {a} big {o} and {b} small {o}. How many {o} do the children have altogether?",
                   "Each child has {a} + {b} = {x} {o}. For {n} children, {x} * {n} = {ans}.")],
}
# Slots: A, B names; ta pronoun of A; m/o measure word and object; bz container
# measure word; im/it priced item; vm/vh vehicle; v a verb.
ZH_T: dict[str, list[tuple[str, str]]] = {
    "add": [("{A}有{a}{m}{o}，{B}又给了{ta}{b}{m}。{A}现在有多少{m}{o}？",
             "{A}原来有{a}{m}{o}，{B}又给了{ta}{b}{m}，所以{a} + {b} = {ans}。"),
            ("桌上有{a}{m}{o}，{A}又放上去{b}{m}。桌上现在有多少{m}{o}？",
             "桌上原有{a}{m}，又放上{b}{m}，所以{a} + {b} = {ans}。")],
    "sub": [("{A}有{a}{m}{o}，送给{B}{b}{m}。{A}还剩多少{m}{o}？",
             "{A}原来有{a}{m}{o}，送出{b}{m}，所以{a} - {b} = {ans}。"),
            ("架子上有{a}{m}{o}，{A}拿走了{b}{m}。架子上还剩多少{m}？",
             "架子上原有{a}{m}，拿走{b}{m}，所以{a} - {b} = {ans}。")],
    "mul": [("有{a}{bz}{o}，每{bz}有{b}{m}。一共有多少{m}{o}？",
             "一共{a}{bz}，每{bz}{b}{m}，所以{a} * {b} = {ans}。")],
    "daily": [("{A}每天读{a}页书。{ta}{b}天一共读多少页？",
               "每天读{a}页，读{b}天，所以{a} * {b} = {ans}。")],
    "div": [("{A}有{t}{m}{o}，平均分给{n}个朋友。每个朋友分到几{m}？",
             "{t}{m}{o}平均分给{n}个朋友，所以{t} / {n} = {ans}。"),
            ("把{t}{m}{o}平均装进{n}{bz}，每{bz}装几{m}？",
             "{t}{m}平均装进{n}{bz}，所以{t} / {n} = {ans}。")],
    "price": [("一{im}{it}卖{p}元，{A}买了{q}{im}。{ta}一共花了多少元？",
               "每{im}{p}元，买了{q}{im}，所以{q} * {p} = {ans}元。")],
    "buy_give": [("{A}有{a}{m}{o}，又买了{b}{m}，然后送给{B}{c}{m}。{A}现在有多少{m}{o}？",
                  "{A}原来有{a}{m}，又买了{b}{m}，所以{a} + {b} = {x}。送给{B}{c}{m}后，{x} - {c} = {ans}。")],
    "compare": [("{A}有{a}{m}{o}，{B}有{b}{m}{o}。{A}比{B}多多少{m}？",
                 "{A}有{a}{m}，{B}有{b}{m}，所以{a} - {b} = {ans}。")],
    "together": [("{A}有{a}{m}{o}，{B}比{A}多{b}{m}。他们一共有多少{m}{o}？",
                  "{B}有{a} + {b} = {x}{m}。两人一共有{a} + {x} = {ans}{m}。")],
    "change": [("{A}带了{cash}元，买了{q}{im}{it}，每{im}{p}元。{ta}还剩多少元？",
                "买{it}花了{q} * {p} = {x}元，还剩{cash} - {x} = {ans}元。")],
    "groups_plus": [("{A}有{a}{bz}{o}，每{bz}{b}{m}，另外还有{c}{m}散装的。{A}一共有多少{m}{o}？",
                     "{a}{bz}一共有{a} * {b} = {x}{m}，再加上散装的，{x} + {c} = {ans}。")],
    "lose_share": [("{A}有{a}{m}{o}，丢了{b}{m}，剩下的平均分给{n}个朋友。每个朋友分到几{m}？",
                    "丢了{b}{m}后还剩{a} - {b} = {x}{m}，平均分给{n}个朋友，{x} / {n} = {ans}。")],
    "three_sum": [("{A}星期一{v}{a}{m}{o}，星期二{v}{b}{m}，星期三{v}{c}{m}。{ta}一共{v}多少{m}？",
                   "星期一和星期二一共{a} + {b} = {x}{m}，再加上星期三，{x} + {c} = {ans}。")],
    "two_takes": [("罐子里有{a}{m}{o}，{A}拿走{b}{m}，{B}拿走{c}{m}。罐子里还剩多少{m}？",
                   "{A}拿走后剩{a} - {b} = {x}{m}，{B}拿走后剩{x} - {c} = {ans}{m}。")],
    "times": [("{A}有{a}{m}{o}，{B}的{o}是{A}的{k}倍。{B}有多少{m}{o}？",
               "{B}的{o}是{a}的{k}倍，所以{a} * {k} = {ans}。")],
    "wheels": [("院子里有{n}辆{vh}，每辆有{w}个轮子。一共有多少个轮子？",
                "{n}辆{vh}，每辆{w}个轮子，所以{n} * {w} = {ans}。")],
    "sum_times": [("{n}个小朋友每人有{a}{m}大{o}和{b}{m}小{o}。他们一共有多少{m}{o}？",
                   "每人有{a} + {b} = {x}{m}，{n}个人一共有{x} * {n} = {ans}{m}。")],
}
KINDS = list(EN_T)
assert KINDS == list(ZH_T)


def _slots(lang: str, r: Rng, vi: int) -> dict[str, str]:
    """Random names, pronouns and nouns for one problem."""
    if lang == "en":
        (a, g), (b, _) = r.sample(EN_NAMES, 2)
        he, him = ("he", "him") if g == "M" else ("she", "her")
        o1, o = r.choice(EN_OBJS)
        bx1, bx = r.choice(EN_BOXES)
        it1, it = r.choice(EN_ITEMS)
        vh1, vh = EN_VEHICLES[vi]
        return dict(A=a, B=b, he=he, He=he.capitalize(), him=him, o=o, o1=o1, bx=bx,
                    bx1=bx1, it=it, it1=it1, vh=vh, vh1=vh1, v=r.choice(EN_VERBS))
    (a, g), (b, _) = r.sample(ZH_NAMES, 2)
    m, o = r.choice(ZH_OBJS)
    im, it = r.choice(ZH_ITEMS)
    return dict(A=a, B=b, ta="他" if g == "M" else "她", m=m, o=o, bz=r.choice(ZH_BOXES),
                im=im, it=it, vh=ZH_VEHICLES[vi], v=r.choice(ZH_VERBS))


def final_sentence(lang: str, ans: int) -> str:
    """The sentence every CoT output ends with."""
    return f"The answer is {ans}." if lang == "en" else f"答案是{ans}。"


def cot_problem(lang: str, kind: str, r: Rng) -> tuple[Record, str]:
    """One CoT word problem; returns (record, final sentence)."""
    nums = _nums(kind, r)
    ctx: dict[str, object] = {**_slots(lang, r, nums.get("vi", 0)), **nums}
    if kind == "times":
        ctx["kt"] = EN_TIMES[nums["k"]]
    question, rationale = r.choice((EN_T if lang == "en" else ZH_T)[kind])
    last = final_sentence(lang, nums["ans"])
    sep = " " if lang == "en" else ""
    out = rationale.format(**ctx) + sep + last
    return dict(instruction=question.format(**ctx), input="", output=out, source="demo"), last


# --- plain instructions -----------------------------------------------------
def _numlist(r: Rng) -> list[int]:
    """3 to 7 distinct numbers below 100."""
    return r.sample(range(1, 100), r.randint(3, 7))


def _sentence(r: Rng) -> str:
    s = f"{r.choice(EN_SUBJ)} {r.choice(EN_VERB_PHRASES)} {r.choice(EN_PLACES)}{r.choice(EN_TAILS)}"
    return s[0].upper() + s[1:] + "."


def _join(xs: list, sep: str = ", ") -> str:
    return sep.join(str(x) for x in xs)


def _plain_en(r: Rng) -> tuple[str, str, str]:
    task = r.randrange(12)
    inline = r.random() < 0.4
    if task in (0, 1):
        xs = _numlist(r)
        order, key = ("smallest to largest", False) if task == 0 else ("largest to smallest", True)
        out = _join(sorted(xs, reverse=key))
        if inline:
            return f"Sort the numbers {_join(xs)} from {order}.", "", out
        return f"Sort these numbers from {order}.", _join(xs), out
    if task == 2:
        ws = r.sample(EN_WORDS, r.randint(3, 6))
        return "Reverse the order of these words.", _join(ws), _join(ws[::-1])
    if task == 3:
        s = _sentence(r)
        return "How many words are in this sentence?", s, str(len(s.split()))
    if task == 4:
        h = r.randint(1, 12)
        return f"How many minutes are in {h} hours?", "", f"{h * 60} minutes"
    if task == 5:
        k = r.randint(1, 15)
        return f"Convert {k} kilometers to meters.", "", f"{k * 1000} meters"
    if task == 6:
        w = r.choice(EN_WORDS)
        if inline:
            return f'Write the word "{w}" in capital letters.', "", w.upper()
        return "Write this word in uppercase.", w, w.upper()
    if task == 7:
        a, b = r.sample(range(1, 1000), 2)
        return f"Which number is larger, {a} or {b}?", "", str(max(a, b))
    if task == 8:
        xs = _numlist(r)
        return "Find the smallest number in this list.", _join(xs), str(min(xs))
    if task == 9:
        w = r.choice(EN_WORDS)
        return f'How many letters are in the word "{w}"?', "", str(len(w))
    if task == 10:
        ws = r.sample(EN_WORDS, r.randint(3, 6))
        return "Put these words in alphabetical order.", _join(ws), _join(sorted(ws))
    m = r.randint(1, 15)
    return f"How many seconds are in {m} minutes?", "", f"{m * 60} seconds"


def _plain_zh(r: Rng) -> tuple[str, str, str]:
    task = r.randrange(12)
    inline = r.random() < 0.4
    if task in (0, 1):
        xs = _numlist(r)
        order, key = ("从小到大", False) if task == 0 else ("从大到小", True)
        out = _join(sorted(xs, reverse=key))
        if inline:
            return f"把{_join(xs, '、')}这几个数{order}排列。", "", out
        return f"把下面的数字{order}排列。", _join(xs), out
    if task == 2:
        ws = r.sample(ZH_WORDS, r.randint(3, 6))
        return "把下面这些词语的顺序倒过来。", _join(ws, "、"), _join(ws[::-1], "、")
    if task == 3:
        ws = r.sample(ZH_WORDS, r.randint(3, 9))
        return "下面一共有几个词语？", _join(ws, "、"), str(len(ws))
    if task == 4:
        h = r.randint(1, 12)
        return f"{h}小时等于多少分钟？", "", f"{h * 60}分钟"
    if task == 5:
        k = r.randint(1, 15)
        return f"{k}千米等于多少米？", "", f"{k * 1000}米"
    if task == 6:
        w = r.choice(EN_WORDS)
        if inline:
            return f"把英文单词“{w}”改写成大写字母。", "", w.upper()
        return "把下面的英文单词改写成大写字母。", w, w.upper()
    if task == 7:
        a, b = r.sample(range(1, 1000), 2)
        return f"{a}和{b}哪个数更大？", "", str(max(a, b))
    if task == 8:
        xs = _numlist(r)
        return "找出下面这组数字中最小的数。", _join(xs), str(min(xs))
    if task == 9:
        y = r.randint(1, 30)
        return f"{y}元等于多少角？", "", f"{y * 10}角"
    if task == 10:
        d = r.randint(1, 10)
        return f"{d}天等于多少小时？", "", f"{d * 24}小时"
    w = r.choice(EN_WORDS)
    return f"英文单词“{w}”有几个字母？", "", str(len(w))


# --- assembly ---------------------------------------------------------------
def _unique(make: Callable[[], tuple[Record, str]], seen: set[str], key: Callable[[Record], str]):
    """Call `make` until its record's key is new; record the key in `seen`."""
    for _ in range(1000):
        rec, last = make()
        if key(rec) not in seen:
            seen.add(key(rec))
            return rec, last
    raise RuntimeError("could not draw a new unique record; lower the counts")


def build(seed: int, n_train: int, n_test: int) -> tuple[list[Record], list[Record], list[Record]]:
    """Return (train, train_nocot, test) record lists for `seed`."""
    r = random.Random(seed)
    test_seen: set[str] = set()
    test = []
    for i in range(n_test):
        lang = "en" if i < (n_test + 1) // 2 else "zh"
        kind = KINDS[i % len(KINDS)]
        test.append(_unique(lambda: cot_problem(lang, kind, r), test_seen,
                            lambda x: x["instruction"])[0])
    r.shuffle(test)

    n_plain = round(n_train * 0.25)
    n_cot = n_train - n_plain
    seen = set(test_seen)  # train instructions must avoid test instructions and repeats
    pairs = []  # (record, no-CoT output)
    for i in range(n_cot):
        lang = "en" if i % 2 == 0 else "zh"
        kind = KINDS[(i // 2) % len(KINDS)]
        rec, last = _unique(lambda: cot_problem(lang, kind, r), seen, lambda x: x["instruction"])
        pairs.append((rec, last))
    for i in range(n_plain):
        gen = _plain_en if i % 2 == 0 else _plain_zh

        def make() -> tuple[Record, str]:
            ins, inp, out = gen(r)
            return dict(instruction=ins, input=inp, output=out, source="demo"), out

        pairs.append(_unique(make, seen, lambda x: x["instruction"] + "\n" + x["input"]))
    r.shuffle(pairs)
    train = [rec for rec, _ in pairs]
    nocot = [{**rec, "output": last} for rec, last in pairs]
    return train, nocot, test


# --- preference pairs ----------------------------------------------------------
STEP_RE = re.compile(r"(\d+) ([-+*/]) (\d+) = (\d+)")
FINAL_RE = re.compile(r"(The answer is |答案是)(\d+)([.。])$")


def slip(output: str, r: Rng) -> str:
    """`output` with one arithmetic slip: its last step's result and the final number both off."""
    steps = list(STEP_RE.finditer(output))
    final = FINAL_RE.search(output)
    if not steps or not final:
        raise ValueError(f"not a demo rationale: {output!r}")
    last = steps[-1]
    right = int(last.group(4))
    wrong = right + r.choice([d for d in (-10, -2, -1, 1, 2, 10) if right + d >= 0])
    body = output[: last.start(4)] + str(wrong) + output[last.end(4): final.start(2)]
    return body + str(wrong) + final.group(3)


def pair(record: Record, r: Rng) -> Record:
    """A preference pair: the record's correct rationale against the same one with a slip."""
    return dict(instruction=record["instruction"], input=record["input"], chosen=record["output"],
                rejected=slip(record["output"], r), source="demo")


def build_pairs(seed: int, n_pref: int, train: list[Record], test: list[Record]) -> tuple[list[Record], list[Record]]:
    """Return (pref_train, pref_test); a generator of its own, so the other files do not change."""
    r = random.Random(f"{seed}:preference")
    seen = {x["instruction"] for x in train + test}
    pref_train = []
    for i in range(n_pref):
        lang = "en" if i % 2 == 0 else "zh"
        kind = KINDS[(i // 2) % len(KINDS)]
        rec, _ = _unique(lambda: cot_problem(lang, kind, r), seen, lambda x: x["instruction"])
        pref_train.append(pair(rec, r))
    r.shuffle(pref_train)
    return pref_train, [pair(rec, r) for rec in test]


def write_json(path: str, records: list[Record]) -> None:
    """Write `records` as an indented UTF-8 JSON list, atomically."""
    text = json.dumps(records, ensure_ascii=False, indent=1) + "\n"
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(path)), suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as f:
            f.write(text)
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; data files are meant to be shared
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def main(argv: list[str] | None = None) -> None:
    """Parse the command line and write the three files."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seed", type=int, default=20261121)
    p.add_argument("--out_dir", default=os.path.dirname(os.path.abspath(__file__)))
    p.add_argument("--n_train", type=int, default=1000)
    p.add_argument("--n_test", type=int, default=100)
    p.add_argument("--n_pref", type=int, default=400, help="preference pairs of new problems (pref_train.json)")
    args = p.parse_args(argv)
    train, nocot, test = build(args.seed, args.n_train, args.n_test)
    pref_train, pref_test = build_pairs(args.seed, args.n_pref, train, test)
    os.makedirs(args.out_dir, exist_ok=True)
    for name, recs in (("train.json", train), ("train_nocot.json", nocot), ("test.json", test),
                       ("pref_train.json", pref_train), ("pref_test.json", pref_test)):
        write_json(os.path.join(args.out_dir, name), recs)
        print(f"wrote {len(recs)} records to {os.path.join(args.out_dir, name)}")


if __name__ == "__main__":
    main()
