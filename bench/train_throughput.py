"""Training throughput: the original Alpaca-CoT recipe (A) against our defaults (B), alternating A/B/A/B.

    python bench/train_throughput.py                      # the full run (about 12 min on 2 idle cores)
    python bench/train_throughput.py --bench512_records 8 --demo_records 4 --repeats 1   # a quick check

Both arms train the embedded SmolLM2-135M model with LoRA r=8 on q_proj, v_proj, micro-batch 4,
learning rate 3e-4, seed 42, for the same optimizer steps (one epoch) over the same records in
the same order (the Trainer's seeded sampler over the same number of samples), so step k of A
and step k of B see the same samples.

A, a faithful re-implementation of the original recipe (its ``uniform_finetune.py``, built on
alpaca-lora): the Alpaca prompt; each record tokenized on its own (``datasets.map``), the full
text truncated at ``cutoff_len``, EOS appended when there is room, prompt tokens masked by
the length of the separately tokenized prompt; ``DataCollatorForSeq2Seq`` padding every batch to
its longest sample; no length grouping; fp32; gradient checkpointing on, as the original's
``prepare_model_for_int8_training`` turned it on (``--baseline_gradient_checkpointing false``
for the variant without it).

B, ``uniform_finetune.py`` with its defaults (``alpaca_cot.train.run``): packed micro-batches
where the model isolates packed samples, bf16 autocast on CPUs with bf16 units, logits only at
label positions.

Every arm runs in a fresh process. Printed per run and as medians with min-max over the
repeats: useful tokens/s (tokens that are not padding), padded tokens/s (every position the
model computes), pad fraction, peak RSS, mean loss over the last steps, and the B/A ratios.
Times are the Trainer's ``train_runtime`` (the training loop: data, forward, backward, optimizer,
one checkpoint at the end); model loading and tokenization are outside it. Workload: the first
``--demo_records`` of the bundled demo data plus the first ``--bench512_records`` of
``../shared/bench/bench512.json`` when present (read at run time, never copied). Timings need an
otherwise idle machine: the load average is printed with the table.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCH512 = ROOT.parent / "shared" / "bench" / "bench512.json"
SEED = 42
LAST = 5  # "final loss": the mean over the last steps (one step's loss depends on its batch)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--demo_records", type=int, default=40, help="first N records of data/demo/train.json (40)")
    p.add_argument("--bench512_records", type=int, default=80, help="first N records of bench512.json (80)")
    p.add_argument("--repeats", type=int, default=2, help="A/B pairs (2)")
    p.add_argument("--arms", nargs="+", default=["A", "B"], choices=["A", "B", "B32"],
                   help="B32: our defaults in fp32, to separate the bf16 effect on the loss")
    p.add_argument("--batch_size", type=int, default=4)
    p.add_argument("--cutoff_len", type=int, default=512)
    p.add_argument("--baseline_gradient_checkpointing", type=lambda s: s.lower() in ("1", "true", "yes"),
                   default=True, help="A with gradient checkpointing, as the original (true)")
    p.add_argument("--arm", help=argparse.SUPPRESS)  # internal: run one arm, write JSON
    p.add_argument("--data_file", help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    return p.parse_args(argv)


# ---------------------------------------------------------------- counting what the model computes


class Counting:
    """Wraps a collator; counts useful (non-padding) and computed positions of every batch."""

    def __init__(self, inner):
        self.inner, self.useful, self.padded, self.labels = inner, 0, 0, 0

    def __call__(self, features):
        batch = self.inner(features)
        ids = batch["input_ids"]
        self.padded += ids.numel()
        self.useful += int(batch["attention_mask"].sum()) if "attention_mask" in batch else ids.numel()
        self.labels += int((batch["labels"][..., 1:] != -100).sum())
        return batch


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ---------------------------------------------------------------- A: the original recipe


def generate_prompt(data_point: dict, with_output: bool = True) -> str:
    """The original's Alpaca prompt (alpaca-lora / Alpaca-CoT ``generate_prompt``)."""
    output = data_point["output"] if with_output else ""
    if data_point.get("input"):
        return ("Below is an instruction that describes a task, paired with an input that provides further "
                "context. Write a response that appropriately completes the request.\n\n"
                f"### Instruction:\n{data_point['instruction']}\n\n### Input:\n{data_point['input']}\n\n"
                f"### Response:\n{output}")
    return ("Below is an instruction that describes a task. Write a response that appropriately completes the "
            f"request.\n\n### Instruction:\n{data_point['instruction']}\n\n### Response:\n{output}")


def arm_a(args, records: list[dict], out_dir: str) -> tuple[dict, Counting]:
    import torch
    from datasets import Dataset
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer, DataCollatorForSeq2Seq, Trainer, TrainingArguments
    from transformers import set_seed

    from alpaca_cot.embedded import DEFAULT_MODEL, resolve_embedded

    path = resolve_embedded(DEFAULT_MODEL)
    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    cutoff = args.cutoff_len

    def tokenize(prompt: str, add_eos: bool = True) -> dict:
        result = tokenizer(prompt, truncation=True, max_length=cutoff, padding=False)
        if add_eos and result["input_ids"][-1] != tokenizer.eos_token_id and len(result["input_ids"]) < cutoff:
            result["input_ids"].append(tokenizer.eos_token_id)
            result["attention_mask"].append(1)
        return result

    def generate_and_tokenize_prompt(data_point: dict) -> dict:
        full = tokenize(generate_prompt(data_point))
        user_len = len(tokenize(generate_prompt(data_point, with_output=False), add_eos=False)["input_ids"])
        full["labels"] = [-100] * user_len + full["input_ids"][user_len:]
        return full

    from datasets.utils.logging import disable_progress_bar

    disable_progress_bar()
    train_data = Dataset.from_list(records).map(generate_and_tokenize_prompt,
                                                remove_columns=list(records[0].keys()))
    set_seed(SEED)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    model.config.use_cache = False
    if args.baseline_gradient_checkpointing:  # what prepare_model_for_int8_training did
        model.gradient_checkpointing_enable()
        model.enable_input_require_grads()
    model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.05, bias="none",
                                             target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"))
    collator = Counting(DataCollatorForSeq2Seq(tokenizer, return_tensors="pt", padding=True))
    steps = math.ceil(len(train_data) / args.batch_size)
    trainer = Trainer(
        model=model, train_dataset=train_data, data_collator=collator,
        args=TrainingArguments(output_dir=out_dir, per_device_train_batch_size=args.batch_size, max_steps=steps,
                               learning_rate=3e-4, logging_steps=1, save_strategy="steps", save_steps=steps,
                               report_to=[], use_cpu=True, seed=SEED, dataloader_num_workers=0,
                               train_sampling_strategy="random"))
    result = trainer.train()
    return {"metrics": result.metrics, "log_history": trainer.state.log_history, "steps": steps}, collator


# ---------------------------------------------------------------- B: our defaults


def arm_b(args, records: list[dict], out_dir: str, fp32: bool = False) -> tuple[dict, Counting]:
    import alpaca_cot.packing as packing
    from alpaca_cot.cli_args import DataArguments, FinetuneArguments, ModelArguments, PeftArguments
    from alpaca_cot.train import run

    counters = []
    collator = packing.Batching.collator

    def counting(self, tokenizer):
        counters.append(Counting(collator(self, tokenizer)))
        return counters[-1]

    packing.Batching.collator = counting
    steps = math.ceil(len(records) / args.batch_size)
    metrics = run(ModelArguments(compute_dtype="fp32" if fp32 else "auto"),
                  DataArguments(data=[args.data_file], cutoff_len=args.cutoff_len), PeftArguments(),
                  FinetuneArguments(output_dir=out_dir, per_gpu_train_batch_size=args.batch_size, max_steps=steps,
                                    learning_rate=3e-4, logging_steps=1, save_steps=steps, seed=SEED))
    state = json.loads((Path(out_dir) / f"checkpoint-{steps}" / "trainer_state.json").read_text())
    return {"metrics": metrics, "log_history": state["log_history"], "steps": steps}, counters[0]


def worker(args) -> None:
    sys.path.insert(0, str(ROOT))
    records = json.loads(Path(args.data_file).read_text(encoding="utf-8"))
    with tempfile.TemporaryDirectory(prefix="alpaca_cot_tp_") as out_dir:
        if args.arm == "A":
            result, counter = arm_a(args, records, out_dir)
        else:
            result, counter = arm_b(args, records, out_dir, fp32=args.arm == "B32")
    seconds = result["metrics"]["train_runtime"]
    losses = [h["loss"] for h in result["log_history"] if "loss" in h]
    row = {"arm": args.arm, "seconds": seconds, "steps": result["steps"], "useful": counter.useful,
           "padded": counter.padded, "label_tokens": counter.labels, "useful_per_s": counter.useful / seconds,
           "padded_per_s": counter.padded / seconds, "pad_fraction": 1 - counter.useful / counter.padded,
           "peak_rss_mb": peak_rss_mb(), "losses": losses, "final_loss": statistics.mean(losses[-LAST:]),
           "packing": result["metrics"].get("packing", False)}
    Path(args.result).write_text(json.dumps(row))


# ---------------------------------------------------------------- orchestration


def workload(args) -> list[dict]:
    demo = json.loads((ROOT / "data" / "demo" / "train.json").read_text(encoding="utf-8"))[:args.demo_records]
    bench = json.loads(BENCH512.read_text(encoding="utf-8"))[:args.bench512_records] if BENCH512.exists() else []
    return [{k: r.get(k, "") for k in ("instruction", "input", "output")} for r in demo + bench]


def run_arm(arm: str, args, data_file: str, home: str) -> dict:
    with tempfile.NamedTemporaryFile(suffix=".json") as result:
        cmd = [sys.executable, __file__, "--arm", arm, "--data_file", data_file, "--result", result.name,
               "--batch_size", str(args.batch_size), "--cutoff_len", str(args.cutoff_len),
               "--baseline_gradient_checkpointing", str(args.baseline_gradient_checkpointing)]
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "ALPACA_COT_HOME": home}
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if proc.returncode:
            raise SystemExit(f"arm {arm} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
        return json.loads(Path(result.name).read_text())


def summary(rows: list[dict], arms: list[str]) -> str:
    def stat(values, fmt):
        return f"{fmt.format(statistics.median(values))} ({fmt.format(min(values))}-{fmt.format(max(values))})"

    lines = ["| arm | useful tok/s | padded tok/s | pad fraction | peak RSS MB | final loss | seconds |",
             "|---|---|---|---|---|---|---|"]
    for arm in arms:
        r = [x for x in rows if x["arm"] == arm]
        lines.append(f"| {arm} | {stat([x['useful_per_s'] for x in r], '{:.1f}')} "
                     f"| {stat([x['padded_per_s'] for x in r], '{:.1f}')} "
                     f"| {stat([x['pad_fraction'] for x in r], '{:.1%}')} "
                     f"| {stat([x['peak_rss_mb'] for x in r], '{:.0f}')} | {stat([x['final_loss'] for x in r], '{:.4f}')} "
                     f"| {stat([x['seconds'] for x in r], '{:.1f}')} |")
    lines.append("")
    for base, arm in (("A", "B"), ("A", "B32"), ("B32", "B")):  # B32 vs B: the effect of bf16 alone
        pairs = list(zip([x for x in rows if x["arm"] == base], [x for x in rows if x["arm"] == arm]))
        if base not in arms or arm not in arms or not pairs:
            continue
        speed = [b["useful_per_s"] / a["useful_per_s"] for a, b in pairs]
        rss = [b["peak_rss_mb"] / a["peak_rss_mb"] for a, b in pairs]
        step_diff = [lb - la for a, b in pairs for la, lb in zip(a["losses"], b["losses"])]
        lines.append(f"{arm}/{base}: useful tokens/s {stat(speed, '{:.2f}x')}; peak RSS {stat(rss, '{:.2f}x')}; "
                     f"per-step loss {arm} - {base} (same batches): mean {statistics.mean(step_diff):+.4f}, "
                     f"max |diff| {max(abs(d) for d in step_diff):.4f} over {len(step_diff)} steps")
    return "\n".join(lines)


def main(argv=None) -> list[dict]:
    args = parse_args(argv)
    if args.arm:
        return worker(args)
    records = workload(args)
    rows = []
    with tempfile.TemporaryDirectory(prefix="alpaca_cot_tp_home_") as home:
        models = Path(home) / "models"
        models.mkdir()
        real = Path(os.environ.get("ALPACA_COT_HOME", Path.home() / ".cache" / "alpaca_cot")) / "models"
        for child in real.iterdir() if real.exists() else []:  # the converted model; a private tokenized cache
            (models / child.name).symlink_to(child)
        data_file = str(Path(home) / "records.json")
        Path(data_file).write_text(json.dumps(records, ensure_ascii=False), encoding="utf-8")
        print(f"workload: {len(records)} records ({args.demo_records} demo + "
              f"{len(records) - min(args.demo_records, len(records))} bench512), batch {args.batch_size}, "
              f"cutoff {args.cutoff_len}, {math.ceil(len(records) / args.batch_size)} steps per arm; "
              f"A with{'' if args.baseline_gradient_checkpointing else 'out'} gradient checkpointing; "
              f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}", flush=True)
        for rep in range(args.repeats):
            for arm in args.arms:
                row = run_arm(arm, args, data_file, home)
                rows.append(row)
                print(f"round {rep + 1} {arm}: {row['useful_per_s']:.1f} useful tok/s, {row['padded_per_s']:.1f} "
                      f"padded tok/s, pad {row['pad_fraction']:.1%}, peak RSS {row['peak_rss_mb']:.0f} MB, final "
                      f"loss {row['final_loss']:.4f}, {row['seconds']:.1f} s for {row['steps']} steps"
                      f"{' (packed)' if row['packing'] else ''}", flush=True)
    print(f"\nload average at the end: {os.getloadavg()[0]:.1f}\n")
    print(summary(rows, args.arms))
    return rows


if __name__ == "__main__":
    main()
