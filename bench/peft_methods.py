"""Every ``--peft_type`` on the same base, data, steps, learning rate and seed: a markdown table.

    python bench/peft_methods.py                                  # all 14 methods (est. 15 min, 2 idle cores)
    python bench/peft_methods.py --methods lora prefix --steps 2  # a quick check

Columns: method | trainable params | % of total | peak RSS | seconds/step | packed or padded
batches | training loss at the first and the last step | held-out loss. Each method trains in
its own process (so peak RSS is its own) through ``alpaca_cot.train.run``, the path
``uniform_finetune.py`` takes, on the embedded default model on the CPU with the training
defaults (``--compute_dtype auto``: bf16 autocast on CPUs with bf16 units; packed batches where
the method allows). The data order is seeded, so step k sees the same samples for every method.
Held-out loss is the language-model loss on ``demo_test`` records after training (AdaLoRA's
model adds an orthogonality regulariser to the loss it returns: left out here). The table goes
to stdout and to ``--out``. Timings need an otherwise idle machine: the load average at the
start is printed with the table.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", nargs="+", help="methods to run (default: every registered one)")
    parser.add_argument("--steps", type=int, default=16, help="optimizer steps per method (16)")
    parser.add_argument("--batch_size", type=int, default=4, help="micro-batch size (4)")
    parser.add_argument("--learning_rate", type=float, default=3e-4, help="one rate for every method (3e-4)")
    parser.add_argument("--cutoff_len", type=int, default=256, help="max tokens per sample (256)")
    parser.add_argument("--heldout", type=int, default=24, help="demo_test records for the held-out loss (24)")
    parser.add_argument("--model_name_or_path", default=None, help="base model (the embedded default)")
    parser.add_argument("--compute_dtype", default="auto", help="as uniform_finetune.py's flag (auto)")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "peft_methods.md"), help="table file")
    parser.add_argument("--worker", help=argparse.SUPPRESS)  # internal: run one method, write JSON
    parser.add_argument("--result", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def run_one(args) -> dict:
    """Train ``args.worker`` and return its row's numbers (runs inside the worker process)."""
    from alpaca_cot import train
    from alpaca_cot.cli_args import DataArguments, FinetuneArguments, ModelArguments, PeftArguments
    from alpaca_cot.data.loading import load_data
    from alpaca_cot.peft_methods import count_parameters
    from alpaca_cot.templates import get_template
    from alpaca_cot.tokenize import tokenize_cached

    row: dict = {}
    wrap, save = train.wrap_model, train.save_final

    def counting_wrap(*a, **kw):  # the wrapped model, as training sees it
        model = wrap(*a, **kw)
        row["trainable"], row["total"] = count_parameters(model)
        return model

    def measuring_save(trainer, tokenizer, output_dir, meta):  # the trained model, before it is written
        losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
        row.update(first_loss=losses[0], last_loss=losses[-1])
        held = tokenize_cached(load_data([f"demo_test:{args.heldout}"])[0], tokenizer,
                               get_template(meta["template"]), args.cutoff_len)[0]
        config = getattr(trainer.model, "peft_config", {}).get("default")
        reg = getattr(config, "orth_reg_weight", None)
        if reg is not None:  # AdaLoRA adds its regulariser to every loss it returns
            config.orth_reg_weight = 0.0
        row["heldout_loss"] = trainer.evaluate(eval_dataset=held)["eval_loss"]
        if reg is not None:
            config.orth_reg_weight = reg
        save(trainer, tokenizer, output_dir, meta)

    train.wrap_model, train.save_final = counting_wrap, measuring_save
    with tempfile.TemporaryDirectory(prefix=f"bench-{args.worker}-") as out:
        started = time.time()
        metrics = train.run(
            ModelArguments(model_name_or_path=args.model_name_or_path, compute_dtype=args.compute_dtype),
            DataArguments(data=[f"demo:{args.steps * args.batch_size}"], cutoff_len=args.cutoff_len),
            PeftArguments(peft_type=args.worker),
            FinetuneArguments(output_dir=out, max_steps=args.steps, per_gpu_train_batch_size=args.batch_size,
                              learning_rate=args.learning_rate, logging_steps=1, save_steps=10 ** 9, seed=42))
    row.update(seconds_per_step=metrics["train_runtime"] / metrics["global_step"], packed=bool(metrics.get("packing")),
               wall_seconds=time.time() - started,
               peak_rss_mib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)  # Linux: KiB
    return row


def run_all(args) -> list[tuple[str, dict]]:
    from alpaca_cot.peft_methods import PEFT_METHODS

    methods = args.methods or list(PEFT_METHODS)
    unknown = [m for m in methods if m not in PEFT_METHODS]
    if unknown:
        sys.exit(f"error: unknown method(s) {unknown}; known: {', '.join(PEFT_METHODS)}")
    rows = []
    for method in methods:
        with tempfile.NamedTemporaryFile(suffix=".json") as result:
            argv = [sys.executable, __file__, "--worker", method, "--result", result.name, "--steps", str(args.steps),
                    "--batch_size", str(args.batch_size), "--learning_rate", str(args.learning_rate),
                    "--cutoff_len", str(args.cutoff_len), "--heldout", str(args.heldout),
                    "--compute_dtype", args.compute_dtype]
            if args.model_name_or_path:
                argv += ["--model_name_or_path", args.model_name_or_path]
            print(f"[{method}] training {args.steps} steps ...", file=sys.stderr, flush=True)
            proc = subprocess.run(argv, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
            if proc.returncode == 0:
                rows.append((method, json.loads(Path(result.name).read_text())))
            else:
                tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
                rows.append((method, {"error": tail}))
                print(f"[{method}] failed: {proc.stderr[-2000:]}", file=sys.stderr)
        print(f"[{method}] {rows[-1][1]}", file=sys.stderr, flush=True)
    return rows


def table(rows: list[tuple[str, dict]], args) -> str:
    from alpaca_cot.loader import resolve_dtype

    dtype = str(resolve_dtype(args.compute_dtype, training=True)).replace("torch.", "")
    head = (f"{args.steps} steps x batch {args.batch_size} of `demo` (cutoff {args.cutoff_len}), learning rate "
            f"{args.learning_rate:g}, seed 42, compute dtype {args.compute_dtype} (training: {dtype}), "
            f"{os.cpu_count()} CPU cores; held-out loss on "
            f"{args.heldout} `demo_test` records; base: {args.model_name_or_path or 'smollm2-135m-instruct'}; "
            f"load average at the start {args.load:.1f}.\n\n")
    lines = ["| method | trainable params | % of total | peak RSS (MiB) | s/step | batches | loss step 1 "
             "| loss last step | held-out loss |", "|---|---:|---:|---:|---:|---|---:|---:|---:|"]
    for method, r in rows:
        if "error" in r:
            lines.append(f"| {method} | failed: {r['error']} | | | | | | | |")
            continue
        lines.append(f"| {method} | {r['trainable']:,} | {100 * r['trainable'] / r['total']:.3f} | "
                     f"{r['peak_rss_mib']:.0f} | {r['seconds_per_step']:.2f} | "
                     f"{'packed' if r['packed'] else 'padded'} | {r['first_loss']:.3f} | "
                     f"{r['last_loss']:.3f} | {r['heldout_loss']:.3f} |")
    return head + "\n".join(lines) + "\n"


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.worker:
        Path(args.result).write_text(json.dumps(run_one(args)))
        return
    started, args.load = time.time(), os.getloadavg()[0]
    text = table(run_all(args), args)
    text += f"\nTotal wall time: {(time.time() - started) / 60:.1f} min.\n"
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text, encoding="utf-8")
    print(text)


if __name__ == "__main__":
    main()
