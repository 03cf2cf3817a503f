"""Generate instruction data from seed tasks with a teacher model (self-instruct).

    python data/self_instruct.py --seed_tasks data/self_instruct/seed_tasks_en.jsonl \\
        --teacher_url https://api.openai.com/v1 --teacher_model gpt-4o-mini \\
        --num_instructions 1000 --output data/self_instruct/generated_en.json
    python data/self_instruct.py --lang zh --seed_tasks data/self_instruct/seed_tasks_zh.jsonl \\
        --teacher_url http://127.0.0.1:8000 --teacher_model smollm2-135m-instruct \\
        --num_instructions 20 --max_requests 10 --output /tmp/zh.json

The teacher is any OpenAI-compatible chat API (a hosted model, vLLM, our ``server.py --api``);
the key comes from --teacher_api_key or the environment (TEACHER_API_KEY, OPENAI_API_KEY).
The output (a JSON list, or JSONL for *.jsonl) holds unified records with "source":
"self_instruct". It is rewritten atomically as records are kept; rerunning the same command
continues where it stopped and never repeats an instruction.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from alpaca_cot.data.schema import DataError  # noqa: E402
from alpaca_cot.data.self_instruct import BLOCKED_WORDS, SelfInstructConfig, generate  # noqa: E402
from alpaca_cot.data.teacher import TeacherError  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    d = SelfInstructConfig("", "", "", "")
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False,
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    a = p.add_argument
    a("--seed_tasks", required=True, help="seed tasks: Stanford seed_tasks.jsonl schema or unified records")
    a("--teacher_url", required=True, help="base URL of an OpenAI-compatible API (http://host:port, "
                                           ".../v1, or the full .../chat/completions URL)")
    a("--teacher_model", required=True, help="model name sent with each request")
    a("--teacher_api_key", help="bearer token (default: $TEACHER_API_KEY, else $OPENAI_API_KEY)")
    a("--output", required=True, help="records file (.json list or .jsonl); an existing one is continued")
    a("--num_instructions", type=int, default=d.num_instructions,
      help="records the output should hold in the end, counting those already there (%(default)s)")
    a("--lang", choices=["en", "zh"], default=d.lang, help="prompt language and default word list (%(default)s)")
    a("--tasks_per_request", type=int, default=d.tasks_per_request,
      help="new tasks asked for per request (%(default)s)")
    a("--num_seed_examples", type=int, default=d.num_seed_examples, help="seed tasks shown per request (%(default)s)")
    a("--num_generated_examples", type=int, default=d.num_generated_examples,
      help="earlier generated tasks shown per request, once there are some (%(default)s)")
    a("--num_workers", type=int, default=d.num_workers, help="requests in flight at once (%(default)s)")
    a("--max_requests", type=int, default=d.max_requests,
      help="requests this run may start, retries not counted; 0: no limit (%(default)s)")
    a("--max_retries", type=int, default=d.max_retries,
      help="retries per request on HTTP 429/5xx, timeouts and dropped connections (%(default)s)")
    a("--retry_backoff", type=float, default=d.retry_backoff,
      help="first back-off in seconds, doubled per retry; a Retry-After header wins (%(default)s)")
    a("--request_timeout", type=float, default=d.request_timeout, help="seconds per HTTP attempt (%(default)s)")
    a("--temperature", type=float, default=d.temperature, help="(%(default)s)")
    a("--top_p", type=float, default=d.top_p, help="(%(default)s)")
    a("--max_tokens", type=int, default=d.max_tokens, help="reply token limit; 0: not sent (%(default)s)")
    a("--similarity_threshold", type=float, default=d.similarity_threshold,
      help="ROUGE-L with a seed or kept instruction at or above which a new one is dropped (%(default)s)")
    a("--min_instruction_len", type=int, default=d.min_instruction_len,
      help="in words, a CJK character counting as one (%(default)s)")
    a("--max_instruction_len", type=int, default=d.max_instruction_len, help="(%(default)s)")
    a("--max_input_len", type=int, default=d.max_input_len, help="(%(default)s)")
    a("--max_output_len", type=int, default=d.max_output_len, help="(%(default)s)")
    a("--blocked_words", nargs="*", metavar="WORD",
      help="instructions containing one of these are dropped (replaces the default list of --lang; "
           "give no words to disable). Defaults: en: " + ", ".join(BLOCKED_WORDS["en"])
           + "; zh: " + ", ".join(BLOCKED_WORDS["zh"]))
    a("--blocked_words_file", help="the same, one word or phrase per line (# comments)")
    a("--save_interval", type=float, default=d.save_interval,
      help="seconds between rewrites of the output; it is always written at the end (%(default)s)")
    a("--seed", type=int, default=d.seed, help="sampling of the examples shown (%(default)s)")
    a("--summary_json", help="also write the counts to this JSON file")
    a("--no_progress", action="store_true", help="no progress bar")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    blocked = args.blocked_words
    if args.blocked_words_file:
        lines = Path(args.blocked_words_file).read_text(encoding="utf-8").splitlines()
        blocked = (blocked or []) + [w.strip() for w in lines if w.strip() and not w.lstrip().startswith("#")]
    options = {k: v for k, v in vars(args).items()
               if k not in ("blocked_words", "blocked_words_file", "summary_json", "no_progress")}
    options["teacher_api_key"] = (args.teacher_api_key or os.environ.get("TEACHER_API_KEY")
                                  or os.environ.get("OPENAI_API_KEY"))
    config = SelfInstructConfig(**options, blocked_words=blocked)
    try:
        stats, rc = generate(config, progress=not args.no_progress), 0
    except (DataError, ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except TeacherError as e:
        stats, rc = getattr(e, "stats", None), 2
        print(f"error: {e}", file=sys.stderr)
        if stats is None:
            return rc
    except KeyboardInterrupt:
        print(f"\ninterrupted: what was kept is saved in {args.output}; rerun the same command to continue",
              file=sys.stderr)
        sys.stderr.flush()
        os._exit(130)  # do not wait for the requests still in flight
    print(stats.summary(args.output, args.num_instructions))
    if args.summary_json:
        Path(args.summary_json).write_text(json.dumps(stats.as_dict(), indent=2) + "\n", encoding="utf-8")
    return rc


if __name__ == "__main__":
    sys.exit(main())
