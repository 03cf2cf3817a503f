"""DPO against SFT on the same data, and DPO's reference without or with a second model in memory.

    python bench/preference.py                    # 3 arms x 16 steps on the embedded model (about 5 min)
    python bench/preference.py --steps 4          # a quick check

Arms, each in its own process (so its peak RSS is its own), all through ``uniform_finetune.py``'s
path on the embedded default model, LoRA (the preset: r 8 on q_proj, v_proj), micro-batch 4,
cutoff 256, the same seeded order of ``--data`` pairs (``demo_pref`` by default):

- ``sft``: instruction tuning on the pairs' chosen side (prompt + chosen: the SFT data of a DPO
  run), with the SFT defaults (packed batches, bf16 autocast where the CPU has bf16 units);
- ``dpo``: DPO on the pairs, the reference being the policy with its adapter disabled;
- ``dpo_ref``: the same DPO with ``--ref_model`` the same base, loaded as a second model.

Seconds per step are the Trainer's ``train_runtime`` over the steps, without the first step
(warm-up). The table goes to stdout and to ``--out``. Timings need an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

ARMS = ("sft", "dpo", "dpo_ref")


def child(arm: str, steps: int, data: str, folder: str) -> None:
    """Run one arm in this process and print its metrics as one JSON line."""
    from alpaca_cot.cli_args import (DataArguments, FinetuneArguments, ModelArguments, PeftArguments,
                                     PreferenceArguments)
    from alpaca_cot.data.preference import load_preference_data
    from alpaca_cot.embedded import DEFAULT_MODEL
    from alpaca_cot.preference import finetune
    from transformers import TrainerCallback

    class StepTimes(TrainerCallback):
        def __init__(self):
            self.times = []

        def on_step_end(self, args, state, control, **kwargs):
            import time

            self.times.append(time.perf_counter())

    spec = data
    if arm == "sft":
        pairs, _ = load_preference_data([data])
        path = Path(folder) / "chosen.json"
        chosen = [{**{k: v for k, v in p.items() if k not in ("chosen", "rejected")}, "output": p["chosen"]}
                  for p in pairs]
        path.write_text(json.dumps(chosen, ensure_ascii=False))
        spec = str(path)
    times = StepTimes()
    pref = PreferenceArguments(stage="sft" if arm == "sft" else "dpo",
                               ref_model=DEFAULT_MODEL if arm == "dpo_ref" else None)
    metrics = finetune(ModelArguments(), DataArguments(data=[spec], cutoff_len=256), PeftArguments(),
                       FinetuneArguments(output_dir=str(Path(folder) / "out"), max_steps=steps,
                                         per_gpu_train_batch_size=4, logging_steps=max(1, steps // 4),
                                         save_steps=10 ** 6, learning_rate=1e-4, seed=42),
                       pref, callbacks=(times,))
    per_step = [b - a for a, b in zip(times.times, times.times[1:])]
    print("RESULT " + json.dumps({"arm": arm, "steps": len(times.times),
                                  "seconds_per_step": sum(per_step) / len(per_step) if per_step else None,
                                  "train_loss": metrics.get("train_loss"),
                                  "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=ARMS)
    parser.add_argument("--steps", type=int, default=16, help="optimizer steps per arm (16)")
    parser.add_argument("--data", default="demo_pref:64", help="preference pairs (demo_pref:64)")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "preference.md"))
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args.child, args.steps, args.data, args.folder)
        return []
    rows = []
    for arm in args.arms:
        with tempfile.TemporaryDirectory() as folder:
            proc = subprocess.run([sys.executable, __file__, "--child", arm, "--folder", folder, "--steps",
                                   str(args.steps), "--data", args.data], capture_output=True, text=True,
                                  env={**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"})
        line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
        if proc.returncode or line is None:
            sys.exit(f"arm {arm} failed:\n{proc.stderr[-3000:]}")
        rows.append(json.loads(line[len("RESULT "):]))
        print(rows[-1], flush=True)
    base = next((r for r in rows if r["arm"] == "sft"), None)
    lines = [f"Embedded model, LoRA preset, micro-batch 4, cutoff 256, {args.steps} steps on {args.data} "
             f"(os.getloadavg at the end: {os.getloadavg()[0]:.2f})", "",
             "| arm | seconds/step | vs sft | peak RSS MiB | train loss |", "|---|---|---|---|---|"]
    for r in rows:
        ratio = f"{r['seconds_per_step'] / base['seconds_per_step']:.2f}x" if base and r["seconds_per_step"] else ""
        lines.append(f"| {r['arm']} | {r['seconds_per_step']:.2f} | {ratio} | {r['peak_rss_mib']:,.0f} | "
                     f"{r['train_loss']:.4f} |")
    text = "\n".join(lines)
    print(text)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text + "\n")
    return rows


if __name__ == "__main__":
    main()
