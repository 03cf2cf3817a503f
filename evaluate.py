r"""Score a model on a benchmark: multiple choice, chain-of-thought math, or judged generation.

    python evaluate.py --task cot_math --data demo_test --lora_dir out --output_dir eval/demo
    python evaluate.py --task cot_math --data gsm8k_test.jsonl --lora_dir out --max_samples 200
    python evaluate.py --task multiple_choice --data ceval/val --num_fewshot 5 --fewshot_data ceval/dev --lora_dir out
    python evaluate.py --task multiple_choice --data mmcu/medical.json --lora_dir out
    python evaluate.py --task judged --data belle_eval.json --lora_dir out \
        --judge_url http://127.0.0.1:8000/v1 --judge_model judge-model
    python evaluate.py --task judged --data belle_eval.json --lora_dir out      # no judge: ROUGE-L

With neither --lora_dir nor --model_name_or_path, the embedded default model is scored.
--output_dir receives results.jsonl (one line per item), summary.json, and caches that make a
re-run free (only new items are generated or judged). Generation is greedy unless --greedy false.
"""

import json
import sys

from alpaca_cot.cli_args import ModelArguments, parse
from alpaca_cot.evaluation.runner import EvalGenerationArguments, EvaluateArguments, format_table


def main(argv=None) -> dict:
    args, model_args, gen = parse((EvaluateArguments, ModelArguments, EvalGenerationArguments), argv,
                                  description=__doc__)
    from alpaca_cot.data.schema import DataError
    from alpaca_cot.evaluation.judged import JudgeError
    from alpaca_cot.evaluation.runner import run_evaluation
    from alpaca_cot.train import setup_logging

    setup_logging()
    try:
        summary = run_evaluation(args, gen, model_args)
    except (ValueError, FileNotFoundError, DataError, JudgeError) as e:
        sys.exit(f"error: {e}")
    print(format_table(summary))
    print(json.dumps({k: summary[k] for k in ("task", "n", "score", "metric")}, ensure_ascii=False))
    out = summary["output_dir"]
    print(f"wrote {out}/results.jsonl (one line per item) and {out}/summary.json", file=sys.stderr)
    return summary


if __name__ == "__main__":
    main()
