"""``evaluate.py``'s flags and the one function that runs a benchmark and writes its results.

``run_evaluation`` loads the items, scores them with the task's module, and writes into
``--output_dir``: ``results.jsonl`` (one line per item: the item, the model's output or option
scores, the score), ``summary.json`` (``task``, ``n``, ``score``, ``per_category``, ...) and the
caches (``generations.jsonl``, ``choices.jsonl``, ``judgements.jsonl``) that make a re-run free.
"""

from __future__ import annotations

import json
import logging
import os
import time
import unicodedata
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

from ..cli_args import GenerationArguments
from . import judged, multiple_choice
from .answers import extract_number
from .cache import JsonlCache, cached_generate, model_fingerprint
from .readers import FORMATS, TASK_FORMATS, check_items, data_name, load_items

logger = logging.getLogger("alpaca_cot")
TASKS = tuple(TASK_FORMATS) + ("reward",)  # reward: preference pairs (evaluation/reward.py)
HEADLINE = {"multiple_choice": "accuracy", "cot_math": "accuracy"}  # judged: "judge" or "rouge_l"


def _help(text: str, **extra) -> dict:
    return {"help": text, **extra}


@dataclass
class EvaluateArguments:
    task: str = field(default="cot_math", metadata=_help(
        "multiple_choice (option log-likelihood), cot_math (final-number exact match), judged "
        "(a judge model's 0-1 grade; ROUGE-L without a judge), or reward (pairwise accuracy on preference pairs: "
        "a reward model's scores, else the responses' log-probabilities).", choices=TASKS))
    data: list[str] = field(default_factory=lambda: ["demo_test"], metadata=_help(
        "Benchmark files or folders (C-Eval/CMMLU: a folder of per-subject CSVs), or registry names "
        "(NAME:N allowed) for unified records."))
    format: str = field(default="auto", metadata=_help(
        "Layout of --data: auto (detected), mmcu, ceval (also CMMLU), gsm8k, unified, belle.", choices=FORMATS))
    output_dir: Optional[str] = field(default=None, metadata=_help(
        "Receives results.jsonl, summary.json and the caches (default: eval_out/<task>)."))
    lora_dir: Optional[str] = field(default=None, metadata=_help("Output directory of uniform_finetune.py."))
    base_only: bool = field(default=False, metadata=_help("Evaluate the base model of --lora_dir, without the adapter."))
    max_samples: int = field(default=0, metadata=_help("Evaluate only the first N items (0: all)."))
    batch_size: int = field(default=8, metadata=_help("Prompts generated or scored together."))
    prompt_suffix: str = field(default="", metadata=_help(
        "Text appended to every instruction of cot_math/judged (e.g. ' Think step by step.' or '先思考，再决定。')."))
    num_fewshot: int = field(default=0, metadata=_help(
        "multiple_choice: examples shown before each question, taken from the same subject."))
    fewshot_data: Optional[list[str]] = field(default=None, metadata=_help(
        "multiple_choice: where the examples come from (e.g. C-Eval's dev split); default: the other "
        "questions of --data."))
    choice_target: str = field(default="text", metadata=_help(
        "multiple_choice: score each option's text (+EOS, mean log-prob per token) or its letter.",
        choices=multiple_choice.TARGETS))
    judge_url: Optional[str] = field(default=None, metadata=_help(
        "judged: base URL of an OpenAI-compatible API (e.g. http://127.0.0.1:8000/v1)."))
    judge_model: Optional[str] = field(default=None, metadata=_help("judged: the judge's model name."))
    judge_api_key: Optional[str] = field(default=None, metadata=_help(
        "judged: API key (default: $JUDGE_API_KEY, then $OPENAI_API_KEY)."))
    judge_prompts: Optional[str] = field(default=None, metadata=_help(
        "judged: per-class judging prompts, JSON/JSONL records {class, prompt} (default: ours)."))
    judge_retries: int = field(default=4, metadata=_help(
        "judged: retries of a request failing with 429/5xx or a timeout (back-off from 2 s, doubling)."))
    judge_workers: int = field(default=4, metadata=_help("judged: requests in flight at once."))
    no_cache: bool = field(default=False, metadata=_help("Ignore cached generations, option scores and judgements."))


@dataclass
class EvalGenerationArguments(GenerationArguments):
    """generate.py's flags (defaults from ``--generation_preset``: no repetition penalty, no n-gram ban,
    which would hurt the repeated numbers of arithmetic), but greedy by default."""

    greedy: bool = field(default=True, metadata=_help(
        "Greedy decoding (reproducible; the evaluation default). --greedy false samples with --temperature etc."))


def validate(args: EvaluateArguments, gen: GenerationArguments) -> None:
    gen.validate()
    if args.max_samples < 0 or args.batch_size < 1 or args.num_fewshot < 0:
        raise ValueError("--max_samples and --num_fewshot must be >= 0, --batch_size >= 1")
    if args.task == "judged" and bool(args.judge_url) != bool(args.judge_model):
        raise ValueError("a judge needs both --judge_url and --judge_model")


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _cache(args: EvaluateArguments, out: Path, name: str) -> JsonlCache:
    return JsonlCache(None if args.no_cache else out / name)


def summarize(task: str, rows: list[dict]) -> dict:
    """Overall and per-category means of the rows' scores (rows scored None are counted, not averaged)."""
    def block(part):
        scores = [r["score"] for r in part if r.get("score") is not None]
        return {"n": len(part), "scored": len(scores), "score": sum(scores) / len(scores) if scores else None}

    categories = sorted({r["category"] for r in rows})
    overall = block(rows)
    return {"task": task, "n": overall["n"], "scored": overall["scored"], "score": overall["score"],
            "per_category": {c: block([r for r in rows if r["category"] == c]) for c in categories}}


def format_table(summary: dict) -> str:
    """The summary as a small text table (scores x 100)."""
    def pct(v):
        return "-" if v is None else f"{100 * v:.1f}"

    def columns(text):  # Chinese characters take two columns in a terminal
        return sum(2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in text)

    def pad(text):
        return text + " " * (width - columns(text))

    name = summary.get("metric", "score")
    width = max(len("category"), *(columns(c) for c in summary["per_category"]))
    lines = [f"{summary['task']} on {summary['data']} ({summary['model']}): {name} x 100",
             f"{pad('category')}  {'n':>6}  {'scored':>6}  {'score':>6}"]
    for category, block in summary["per_category"].items():
        lines.append(f"{pad(category)}  {block['n']:>6}  {block['scored']:>6}  {pct(block['score']):>6}")
    lines.append(f"{pad('overall')}  {summary['n']:>6}  {summary['scored']:>6}  {pct(summary['score']):>6}")
    if summary.get("note"):
        lines.append(f"note: {summary['note']}")
    for key in ("unparseable", "failed", "multi_answer", "invalid"):
        if summary.get(key):
            lines.append(f"{key}: {summary[key]} (counted in n, not scored)")
    return "\n".join(lines)


def run_evaluation(args: EvaluateArguments, gen: GenerationArguments, model_args=None, generator=None) -> dict:
    """Score ``args.task`` on ``args.data``; writes the output directory and returns the summary.

    ``generator`` (an ``alpaca_cot.infer.Generator``) is loaded from ``args.lora_dir`` and
    ``model_args`` (a ``ModelArguments``) when not given.
    """
    validate(args, gen)
    if args.task == "reward":  # pairwise accuracy on preference pairs, no generation
        from .reward import run_reward

        return run_reward(args, model_args, generator)
    started = time.time()
    out = Path(args.output_dir or f"eval_out/{args.task}")
    items = load_items(args.task, args.data, args.format)
    if args.max_samples:
        items = items[:args.max_samples]
    problems = check_items(args.task, items)
    for problem in problems[:5]:
        logger.warning("not scorable: %s", problem)
    if generator is None:
        from ..infer import load_generator

        m = model_args
        generator = load_generator(args.lora_dir, getattr(m, "model_name_or_path", None), getattr(m, "model_type", None),
                                   getattr(m, "template", None), getattr(m, "quantization_bit", None),
                                   getattr(m, "compute_dtype", "auto"), base_only=args.base_only)
    out.mkdir(parents=True, exist_ok=True)
    fingerprint = model_fingerprint(generator, None if args.base_only else args.lora_dir)
    gen_kwargs = gen.generate_kwargs()
    seed = None if args.task == "multiple_choice" or gen.greedy else gen.seed
    extra: dict = {}
    if args.task == "multiple_choice":
        pool = load_items("multiple_choice", args.fewshot_data) if args.fewshot_data else None
        rows = multiple_choice.score_items(
            generator, items, target=args.choice_target, num_fewshot=args.num_fewshot, fewshot_pool=pool,
            batch_size=args.batch_size, cache=_cache(args, out, "choices.jsonl"), fingerprint=fingerprint)
        extra = {"choice_target": args.choice_target, "num_fewshot": args.num_fewshot}
        for status in ("multi_answer", "invalid"):
            extra[status] = sum(r["status"] == status for r in rows)
    else:
        if args.task == "cot_math":
            records = [{"instruction": it["instruction"] + args.prompt_suffix, "input": it["input"]} for it in items]
        else:
            records = [{"instruction": it["question"] + args.prompt_suffix, "input": ""} for it in items]
        answers = cached_generate(generator, records, gen_kwargs, cache=_cache(args, out, "generations.jsonl"),
                                  fingerprint=fingerprint, batch_size=args.batch_size, seed=seed)
        extra["generation"] = gen_kwargs
        if args.task == "cot_math":
            rows = []
            for item, answer in zip(items, answers):
                prediction = extract_number(answer)
                correct = None if item["gold"] is None else prediction == item["gold"]
                rows.append({**item, "output": answer, "prediction": prediction, "correct": correct,
                             "score": None if correct is None else float(correct)})
        else:
            judge = None
            if args.judge_url:
                key = args.judge_api_key or os.environ.get("JUDGE_API_KEY") or os.environ.get("OPENAI_API_KEY")
                judge = judged.judge_client(args.judge_url, args.judge_model, key, retries=args.judge_retries)
            rows, scoring = judged.score_items(items, answers, judge=judge, prompts=judged.load_prompts(args.judge_prompts),
                                               cache=_cache(args, out, "judgements.jsonl"), workers=args.judge_workers)
            extra.update(scoring)
    summary = {**summarize(args.task, rows), "metric": extra.pop("metric", HEADLINE.get(args.task)), **extra,
               "data": data_name(args.data), "model": generator.name, "lora_dir": args.lora_dir,
               "base_only": args.base_only, "max_samples": args.max_samples, "unscorable_items": len(problems),
               "seconds": round(time.time() - started, 1), "output_dir": str(out),
               "args": {k: v for k, v in asdict(args).items() if k != "judge_api_key"}}
    _write(out / "results.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    _write(out / "summary.json", json.dumps(summary, indent=1, ensure_ascii=False) + "\n")
    return summary
