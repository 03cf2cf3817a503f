"""Describe datasets: size, inputs, turns, languages, token lengths, duplicates.

    python data/stats.py alpaca belle_cn:0.01 data/my_data.jsonl
    python data/stats.py --format sharegpt raw_sharegpt.json      # raw files, converted on the fly
    python data/stats.py demo --tokenizer none --json              # no token counts; JSON output
    python data/stats.py --registry-table                          # the registry as a Markdown table
    python data/stats.py --update-readme                           # refresh that table in data/README.md
    python data/stats.py --overlap demo_test --data demo           # contamination: shared n-grams

Token lengths use the prompt template (default ``alpaca``) and a tokenizer (default: the
embedded SmolLM2 model's), over a seeded sample of at most ``--token_sample`` records.
"prompt" counts every prompt of the record's turns, "response" every response (the tokens
that get labels), "total" both. Languages are told apart by script: a record is CJK when
its CJK characters are at least a quarter of its Latin letters (one CJK character carries
about a word), Latin when Latin letters dominate the rest, "other" otherwise, "none"
without letters.

``--overlap EVAL --data TRAIN`` checks contamination instead: how many items of each evaluation
set share a word 13-gram (English) or character 8-gram (Chinese) with the training data
(``--ngrams WORDS CHARS`` changes the sizes), with examples; see ``alpaca_cot/data/overlap.py``.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import sys
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from alpaca_cot.data.loading import load_data  # noqa: E402
from alpaca_cot.data.schema import DataError, normalize  # noqa: E402

README = Path(__file__).resolve().parent / "README.md"
CJK_RE = re.compile("[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff\U00020000-\U0002fa1f]")
LATIN_RE = re.compile("[A-Za-z\u00c0-\u024f]")
LETTER_RE = re.compile(r"[^\W\d_]")
ASCII_LETTER_RE = re.compile("[A-Za-z]")


def script_of(text: str) -> str:
    """``CJK``, ``Latin``, ``other`` or ``none``: the dominant script of ``text`` (see module doc)."""
    if text.isascii():  # the common case, without counting
        return "Latin" if ASCII_LETTER_RE.search(text) else "none"
    cjk, latin = len(CJK_RE.findall(text)), len(LATIN_RE.findall(text))
    if cjk and cjk * 4 >= latin:
        return "CJK"
    other = len(LETTER_RE.findall(text)) - cjk - latin
    if cjk == latin == other == 0:
        return "none"
    return "Latin" if latin >= other else "other"


def record_text(record: dict) -> str:
    parts = [record["instruction"], record.get("input", ""), record["output"]]
    parts += [t for pair in record.get("history") or [] for t in pair]
    return "\n".join(parts)


def percentiles(values: list[int], qs=(50, 90, 99)) -> dict[str, int]:
    """Nearest-rank percentiles plus the maximum (empty input: zeros)."""
    if not values:
        return {**{f"p{q}": 0 for q in qs}, "max": 0}
    s = sorted(values)
    out = {f"p{q}": s[min(len(s) - 1, max(0, -(-q * len(s) // 100) - 1))] for q in qs}
    out["max"] = s[-1]
    return out


def token_lengths(records: list[dict], tokenizer, template) -> dict[str, dict[str, int]]:
    """Percentiles of prompt / response / total tokens per record, rendered with ``template``."""
    prompts, responses = [], []
    for start in range(0, len(records), 512):
        batch = records[start:start + 512]
        turns = [template.turns(r, tokenizer=tokenizer) for r in batch]
        texts = [t for ts in turns for pair in ts for t in pair]
        lengths = iter(len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"])
        for ts in turns:
            p = r = 0
            for _ in ts:
                p += next(lengths)
                r += next(lengths)
            prompts.append(p)
            responses.append(r)
    return {"prompt": percentiles(prompts), "response": percentiles(responses),
            "total": percentiles([p + r for p, r in zip(prompts, responses)])}


def describe(records: list[dict], *, tokenizer=None, template=None, token_sample: int = 20000,
             seed: int = 42) -> dict:
    """The statistics of one dataset as a JSON-ready dict."""
    records = [normalize(r) for r in records]
    n = len(records)
    share = (lambda k: round(100.0 * k / n, 2)) if n else (lambda k: 0.0)
    seen, dups = set(), 0
    for r in records:
        key = (" ".join(r["instruction"].split()), " ".join(r["input"].split()))
        dups += key in seen
        seen.add(key)
    scripts = Counter(script_of(record_text(r)) for r in records)
    stats = {
        "records": n,
        "with_input_pct": share(sum(1 for r in records if r["input"].strip())),
        "multi_turn_pct": share(sum(1 for r in records if r["history"])),
        "language_pct": {k: share(v) for k, v in scripts.most_common()},
        "duplicate_instructions": dups,
        "duplicate_instructions_pct": share(dups),
    }
    if tokenizer is not None and template is not None and n:
        sample = records if n <= token_sample else random.Random(seed).sample(records, token_sample)
        stats["tokens"] = {"sample": len(sample), **token_lengths(sample, tokenizer, template)}
    return stats


def format_stats(name: str, s: dict) -> str:
    lines = [f"== {name} ==",
             f"records               {s['records']}",
             f"with input            {s['with_input_pct']:.1f}%",
             f"multi-turn            {s['multi_turn_pct']:.1f}%",
             "language (script)     " + ", ".join(f"{k} {v:.1f}%" for k, v in s["language_pct"].items()),
             f"duplicate instructions {s['duplicate_instructions']} ({s['duplicate_instructions_pct']:.1f}%)"]
    if "tokens" in s:
        t = s["tokens"]
        lines.append(f"tokens over {t['sample']} records    p50     p90     p99     max")
        for part in ("prompt", "response", "total"):
            q = t[part]
            lines.append(f"  {part:<26}{q['p50']:>7} {q['p90']:>7} {q['p99']:>7} {q['max']:>7}")
    return "\n".join(lines)


def load_tokenizer(spec: str):
    """``embedded`` (the default model's tokenizer), ``none``, or a local path / hub name."""
    if spec == "none":
        return None
    from transformers import AutoTokenizer

    if spec == "embedded":
        from alpaca_cot.embedded import DEFAULT_MODEL, resolve_embedded

        spec = resolve_embedded(DEFAULT_MODEL)
    return AutoTokenizer.from_pretrained(spec)


def load_spec(spec: str, *, fmt: str | None, seed: int, skip_invalid: bool) -> list[dict]:
    if fmt:  # raw files: convert on the fly
        from alpaca_cot.data.converters import convert_files

        return list(convert_files(fmt, [spec], seed=seed, skip_invalid=skip_invalid))
    records, _ = load_data([spec], seed=seed, skip_invalid=skip_invalid)
    return records


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("specs", nargs="*", metavar="NAME|PATH", help="registry names (NAME:N, NAME:0.1 allowed) or files")
    p.add_argument("--format", help="the files are raw files of this source format (see data/convert.py)")
    p.add_argument("--tokenizer", default="embedded", help="'embedded' (default), 'none', or a path")
    p.add_argument("--template", default="alpaca", help="prompt template for token lengths")
    p.add_argument("--token_sample", "--token-sample", type=int, default=20000)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--skip_invalid", "--skip-invalid", action="store_true")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.add_argument("--registry-table", "--registry_table", action="store_true",
                   help="print the registry as a Markdown table")
    p.add_argument("--update-readme", "--update_readme", action="store_true",
                   help="rewrite the registry table in data/README.md")
    p.add_argument("--overlap", nargs="+", metavar="EVAL",
                   help="evaluation sets (files, folders, registry names) to check against --data for contamination")
    p.add_argument("--data", nargs="+", metavar="TRAIN", help="with --overlap: the training data")
    p.add_argument("--ngrams", nargs=2, type=int, default=[13, 8], metavar=("WORDS", "CHARS"),
                   help="with --overlap: n-gram sizes for English (words) and Chinese (characters)")
    args = p.parse_args(argv)
    if args.overlap or args.data:
        if not (args.overlap and args.data):
            p.error("--overlap EVAL needs --data TRAIN (and the other way round)")
        return overlap_main(args)
    from alpaca_cot.data.registry import readme_with_table, registry_table

    if args.registry_table:
        print(registry_table())
        return 0
    if args.update_readme:
        README.write_text(readme_with_table(README.read_text(encoding="utf-8"), registry_table()), encoding="utf-8")
        print(f"updated {README}")
        return 0
    if not args.specs:
        p.error("name at least one dataset or file")
    try:
        tokenizer = load_tokenizer(args.tokenizer)
        template = None
        if tokenizer is not None:
            from alpaca_cot.templates import get_template

            template = get_template(args.template)
        results = {}
        for spec in args.specs:
            records = load_spec(spec, fmt=args.format, seed=args.seed, skip_invalid=args.skip_invalid)
            results[spec] = describe(records, tokenizer=tokenizer, template=template,
                                     token_sample=args.token_sample, seed=args.seed)
            if not args.json:
                print(format_stats(spec, results[spec]) + "\n")
    except (DataError, ValueError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(results, ensure_ascii=False, indent=1))
    return 0


def overlap_main(args) -> int:
    """Print (or --json) the overlap of every --overlap set with the --data records."""
    from alpaca_cot.data.overlap import check_overlap, item_text, record_text

    try:
        records, _ = load_data(args.data, seed=args.seed, skip_invalid=args.skip_invalid)
        results = {}
        for spec in args.overlap:
            report, items = check_overlap([spec], records, *args.ngrams)
            summary = report.summary(examples=3, texts=[item_text(i) for i in items])
            for example in summary["examples"]:
                example["training_text"] = record_text(records[example["training_record"]])[:160]
            results[spec] = summary
    except (DataError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(results, ensure_ascii=False, indent=1))
        return 0
    for spec, s in results.items():
        share = 100 * s["overlapping"] / max(s["items"], 1)
        print(f"== {spec} against {' '.join(args.data)} ({s['training_records']} training records) ==\n"
              f"items                      {s['items']}\n"
              f"sharing an n-gram          {s['overlapping']} ({share:.1f}%; {args.ngrams[0]}-word English, "
              f"{args.ngrams[1]}-character Chinese)\n"
              f"exact duplicates           {s['exact_duplicates']}\n"
              f"too short to check         {s['too_short']}\n"
              f"training records involved  {s['training_records_overlapping']}")
        for e in s["examples"]:
            print(f"  item {e['item']} / record {e['training_record']}: \"{e['ngram']}\"\n"
                  f"    item:   {e['text'][:100]!r}\n    record: {e['training_text'][:100]!r}")
        print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
