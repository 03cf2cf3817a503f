"""Write a large synthetic instruction file for the data-path benchmarks (seeded; never committed).

    python bench/make_big_data.py --records 1000000 --output /tmp/big_1m.jsonl
    python bench/make_big_data.py --records 100000 --output /tmp/big_100k.json --json_list

Half the records are English, half Chinese, alternating, about 450 bytes each as UTF-8 JSON
(1M records: ~450 MB, the size of the original's ``belle_cn`` and ``alpaca-belle-cot``
mixtures). The text is made up here from small word and character pools, so it has the
length and script mix of real data (what tokenization cost depends on) but no meaning. Every
record is unique (its instruction starts with its number). The same ``--seed`` and
``--records`` give the same bytes, and the first N records of a larger file are the file of N.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
from pathlib import Path

EN_WORDS = (
    "the of and to in is was for on that with as by at from this be are or an have it not which one all were "
    "when we there can more if will each about how up out them then she many some so these would other into has "
    "her two like him see time could no make than first been its who now people my made over did down only way "
    "find use may water long little very after words called just where most know get through back much go good "
    "new write our used me man too any day same right look think also around another came come work three word "
    "must because does part even place well such here take why things help put years different away again off "
    "went old number great tell men say small every found still between name should home big give air line set "
    "own under read last never us left end along while might next sound below saw something thought both few "
    "those always looked show large often together asked house world going want school important until form food "
    "keep children feet land side without boy once animals life enough took sometimes four head above kind began "
    "almost live page got earth need far hand high year mother light parts country father let night following "
    "picture being study second eyes soon times story boys since white days ever paper hard near sentence better "
    "best across during today others however sure means knew its try told young miles sun ways thing whole hear "
    "example heard several change answer room sea against top turned learn point city play toward five using "
    "himself usually money seen car morning river plan garden explain reason summary list steps price market").split()
EN_VERBS = ("Explain", "Describe", "Summarize", "List", "Compare", "Rewrite", "Classify", "Translate", "Outline",
            "Evaluate", "Suggest", "Calculate")
ZH_CHARS = (
    "的一是在不了有和人这中大为上个国我以要他时来用们生到作地于出就分对成会可主发年动同工也能下过子说产种面而方后多定"
    "行学法所民得经十三之进着等部度家电力里如水化高自二理起小物现实加量都两体制机当使点从业本去把性好应开它合还因由其"
    "些然前外天政四日那社义事平形相全表间样与关各重新线内数正心反你明看原又么利比或但质气第向道命此变条只没结解问意建"
    "月公无系军很情者最立代想已通并提直题党程展五果料象员革位入常文总次品式活设及管特件长求老头基资边流路级少图山统接"
    "知较将组见计别她手角期根论运农指几九区强放决西被干做必战先回则任取据处队南给色光门即保治北造百规热领七海口东导器"
    "压志世金增争济阶油思术极交受联什认六共权收证改清己美再采转更单风切打白教速花带安场身车例真务具万每目至达走积示议"
    "声报斗完类八离华名确才科张信马节话米整空元况今集温传土许步群广石记需段研界拉林律叫且究观越织装影算低持音众书布复"
    "容儿须际商非验连断深难近矿千周委素技备半办青省列习响约支般史感劳便团往酸历市克何除消构府称太准精值号率族维划选标"
    "写存候毛亲快效斯院查江型眼王按格养易置派层片始却专状育厂京识适属圆包火住调满县局照参红细引听该铁价严龙飞")
ZH_PUNCT = "，，，。、；"
EN_TASKS = ("{verb} the following text in {n} sentences.", "{verb} how {a} and {b} relate to each other.",
            "{verb} the main {a} of the passage below.", "{verb} a short note about {a} for {b}.")
ZH_TASKS = ("请用{n}句话{verb}下面的内容。", "请{verb}{a}和{b}之间的关系。", "阅读下面的段落，{verb}其中的要点。",
            "请写一段关于{a}的简短说明。")
ZH_VERBS = ("解释", "概括", "描述", "比较", "改写", "列出", "分析", "翻译")


def _en_sentence(rng: random.Random, words: int) -> str:
    text = " ".join(rng.choice(EN_WORDS) for _ in range(words))
    return text[0].upper() + text[1:] + rng.choice(".?.!.")


def _zh_sentence(rng: random.Random, chars: int) -> str:
    out = []
    for i in range(chars):
        out.append(rng.choice(ZH_CHARS))
        if i and i % rng.randint(6, 12) == 0:
            out.append(rng.choice(ZH_PUNCT))
    return "".join(out) + "。"


def make_record(i: int, rng: random.Random) -> dict:
    """Record ``i``: even numbers English, odd numbers Chinese; sizes vary around ~450 bytes."""
    if i % 2 == 0:
        task = rng.choice(EN_TASKS).format(verb=rng.choice(EN_VERBS), n=rng.randint(2, 5), a=rng.choice(EN_WORDS),
                                            b=rng.choice(EN_WORDS))
        text_in = " ".join(_en_sentence(rng, rng.randint(6, 14)) for _ in range(rng.randint(0, 3)))
        out = " ".join(_en_sentence(rng, rng.randint(6, 16)) for _ in range(rng.randint(2, 6)))
        return {"instruction": f"({i}) {task}", "input": text_in, "output": out}
    task = rng.choice(ZH_TASKS).format(verb=rng.choice(ZH_VERBS), n=rng.randint(2, 5), a=rng.choice(ZH_CHARS) * 2,
                                       b=rng.choice(ZH_CHARS) * 2)
    text_in = _zh_sentence(rng, rng.randint(0, 50)) if rng.random() < 0.5 else ""
    out = _zh_sentence(rng, rng.randint(45, 145))
    return {"instruction": f"({i}) {task}", "input": text_in, "output": out}


def write(path: Path, n: int, seed: int, json_list: bool) -> int:
    """Write ``n`` records to ``path`` (JSONL, or a JSON list); returns the file's size in bytes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write("[\n" if json_list else "")
        for i in range(n):
            line = json.dumps(make_record(i, random.Random(f"{seed}:{i}")), ensure_ascii=False)
            f.write(line + (",\n" if json_list and i < n - 1 else "\n"))
        f.write("]\n" if json_list else "")
    os.replace(tmp, path)
    return path.stat().st_size


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--output", required=True, help="where to write (use /tmp; never commit the file)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json_list", action="store_true", help="a JSON list instead of JSONL")
    args = parser.parse_args(argv)
    size = write(Path(args.output), args.records, args.seed, args.json_list)
    print(f"{args.output}: {args.records} records, {size / 1e6:.0f} MB", file=sys.stderr)


if __name__ == "__main__":
    main()
