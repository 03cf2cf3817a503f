"""Batch-prediction throughput at several batch sizes, in one run on one loaded model.

    python bench/predict_throughput.py --lora_dir out --data demo:64 --max_new_tokens 64
    python bench/predict_throughput.py --model_name_or_path smollm2-135m-instruct --batch_sizes 1 4 8

Runs ``alpaca_cot.predict.predict`` (the code path of predict.py) over the same records,
greedy, after a warm-up, for ``--rounds`` rounds (every batch size once per round, in
alternating order), and reports new tokens per second (tokens up to EOS; padding and tokens
after EOS are not counted), the ratio to the first batch size within each round, and how
many answers equal those of the first run. Medians with min-max.
"""

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from alpaca_cot.data.loading import load_data  # noqa: E402
from alpaca_cot.infer import load_generator  # noqa: E402
from alpaca_cot.predict import predict  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lora_dir")
    parser.add_argument("--model_name_or_path")
    parser.add_argument("--template")
    parser.add_argument("--data", nargs="+", default=["demo:64"])
    parser.add_argument("--batch_sizes", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--max_new_tokens", type=int, default=64)
    parser.add_argument("--compute_dtype", default="auto")
    parser.add_argument("--rounds", type=int, default=2, help="runs of every batch size, in alternating order")
    args = parser.parse_args(argv)

    records, _ = load_data(args.data, require_output=False)
    generator = load_generator(args.lora_dir, args.model_name_or_path, template=args.template,
                               compute_dtype=args.compute_dtype)
    kwargs = {"max_new_tokens": args.max_new_tokens, "do_sample": False, "num_beams": 1, "repetition_penalty": 1.0}
    generator.generate_ids(generator.prompt_ids(records[:1]), {**kwargs, "max_new_tokens": 4})  # warm-up
    results, first_answers = [], None
    with tempfile.TemporaryDirectory() as tmp:
        for round_ in range(1, args.rounds + 1):
            sizes = args.batch_sizes if round_ % 2 else args.batch_sizes[::-1]  # alternate the order
            for size in sizes:
                path = Path(tmp) / f"r{round_}_b{size}.jsonl"
                started = time.perf_counter()
                report = predict(generator, records, path, kwargs, batch_size=size, progress=False)
                seconds = time.perf_counter() - started
                answers = [json.loads(line)["generate"] for line in path.open(encoding="utf-8")]
                first_answers = first_answers or answers
                results.append({"round": round_, "batch_size": size, "records": len(records),
                                "new_tokens": report.new_tokens, "seconds": round(seconds, 2),
                                "tokens_per_s": round(report.new_tokens / seconds, 2),
                                "same_answers": sum(a == b for a, b in zip(answers, first_answers))})
                print(json.dumps(results[-1]), flush=True)
    base = args.batch_sizes[0]
    speed = {(r["round"], r["batch_size"]): r["tokens_per_s"] for r in results}
    print(f"\nmodel {generator.name}, {len(records)} records of {' '.join(args.data)}, greedy, "
          f"max_new_tokens {args.max_new_tokens}, {args.rounds} round(s), median (min-max)")
    print(f"| batch size | tokens/s | vs batch {base} (same round) | answers equal to the first run's |")
    print("|---|---|---|---|")
    for size in args.batch_sizes:
        mine = [r for r in results if r["batch_size"] == size]
        tps = [r["tokens_per_s"] for r in mine]
        ratios = [speed[(r["round"], size)] / speed[(r["round"], base)] for r in mine]
        same = min(r["same_answers"] for r in mine)
        print(f"| {size} | {statistics.median(tps):.2f} ({min(tps):.2f}-{max(tps):.2f}) | "
              f"{statistics.median(ratios):.2f}x ({min(ratios):.2f}x-{max(ratios):.2f}x) | {same}/{len(records)} |")
    return results

if __name__ == "__main__":
    main()
