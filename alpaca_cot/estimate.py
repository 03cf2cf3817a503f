"""A study's cost before it runs: a few timed steps and items per configuration, extrapolated.

``study.py STUDY.yaml --estimate`` (and every run, before it starts) fine-tunes each distinct
training configuration for ``PROBE_STEPS`` optimizer steps, through the real training path and
with the real flags, and scores one batch of each evaluation with the result. From that:

    train time = probe wall time (loading, tokenizing, the first steps, one validation pass,
                 one checkpoint, the final save)
               + (expected input tokens - the probe's) x seconds per input token of steps 2..P
               + the remaining validation passes and checkpoints, each as long as the probe's
    eval time  = loading the fine-tune + items x seconds per item of the probe batch, scaled for
                 generating tasks by (mean response tokens of the training data) / (the probe's)

Input tokens are expected from the planned steps (the Trainer's own count, which a budget or
``--epochs`` decides) times the samples per step times the mean sample length. Time per token
rather than per step, because batches of short records are fast. Peak memory is the process's
peak resident set size (``ru_maxrss``) after the probes, plus the GPU's peak allocation on a
GPU. Generation time is the weakest part: a fine-tune is assumed to answer as long as the
responses it was trained on, which a model that has not learned yet may not do.
"""

from __future__ import annotations

import json
import resource
import shutil
import time
from pathlib import Path

from transformers import TrainerCallback

PROBE_STEPS = 4
GENERATING = ("cot_math", "judged")  # evaluation tasks that generate answers (their time grows with the answers)
SKIP_FLAGS = ("seed", "output_dir", "learning_rate", "logging_steps", "save_total_limit", "resume_from_checkpoint",
              "report_to")


def config_key(flags: dict) -> str:
    """The training configuration of a run, for sharing probes: its flags without seed, folder and rate."""
    from .evaluation.cache import content_key

    return content_key({k: v for k, v in sorted(flags.items()) if k not in SKIP_FLAGS})


def peak_memory_mib() -> float:
    """Peak resident memory of this process so far (MiB), plus the GPU's peak allocation if there is one."""
    import torch

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB
    if torch.cuda.is_available():
        rss += torch.cuda.max_memory_allocated() / 2 ** 20
    return round(rss, 1)


class StopAfter(TrainerCallback):
    """Stops training after ``steps`` optimizer steps and times the checkpoint written at that step."""

    def __init__(self, steps: int):
        self.steps = steps
        self.marks: dict[str, float] = {}

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step >= self.steps:
            control.should_training_stop = True
            self.marks["last_step"] = time.perf_counter()

    def on_evaluate(self, args, state, control, **kwargs):
        self.marks.setdefault("evaluated", time.perf_counter())

    def on_save(self, args, state, control, **kwargs):
        self.marks.setdefault("saved", time.perf_counter())


def probe_train(flags: dict, folder: Path, steps: int = PROBE_STEPS) -> dict:
    """Train ``steps`` steps with ``flags`` into ``folder`` (removed first); the timings and sizes seen."""
    from .cli_args import flag_tokens, parse
    from .preference import finetune as run  # a preference stage's probe runs that stage
    from .study import TRAIN_GROUPS

    shutil.rmtree(folder, ignore_errors=True)
    probe_flags = {k: v for k, v in flags.items() if k != "resume_from_checkpoint"}
    probe_flags.update(output_dir=str(folder), save_steps=steps, save_total_limit=1)
    stop = StopAfter(steps)
    metrics = run(*parse(TRAIN_GROUPS, flag_tokens(probe_flags)), callbacks=(stop,))
    save_s = 0.0
    if "saved" in stop.marks:
        save_s = stop.marks["saved"] - max(stop.marks.get("evaluated", 0), stop.marks.get("last_step", 0))
    return {"wall_s": metrics["wall_seconds"], "first_steps": metrics.get("first_steps") or [],
            "steps_done": metrics.get("global_step", 0), "planned_steps": metrics.get("planned_steps") or 0,
            "samples_per_step": metrics.get("samples_per_step") or 1, "train_set": metrics.get("train_set") or {},
            "eval_s": metrics.get("eval_runtime") or 0.0, "evaluated": "eval_runtime" in metrics,
            "save_s": max(save_s, 0.0), "saved": "saved" in stop.marks, "save_steps": int(flags.get("save_steps", 200)),
            "has_val": "eval_loss" in metrics}


def train_seconds(probe: dict) -> float:
    """The whole fine-tune's expected wall time from its probe (see the module docstring)."""
    steps = probe["first_steps"]
    if probe["steps_done"] >= probe["planned_steps"] or not steps:
        return probe["wall_s"]  # the probe was the whole run
    timed = steps[1:] or steps
    rate = sum(s[0] for s in timed) / max(sum(s[1] for s in timed), 1)
    data = probe["train_set"]
    per_sample = data.get("input_tokens", 0) / max(data.get("samples", 1), 1)
    expected = probe["planned_steps"] * probe["samples_per_step"] * per_sample
    remaining_tokens = max(expected - sum(s[1] for s in steps), 0)
    every = max(probe["save_steps"], 1)
    planned = probe["planned_steps"]
    evals = (planned // every + (1 if planned % every else 0)) if probe["has_val"] else 0
    saves = planned // every
    return (probe["wall_s"] + rate * remaining_tokens + max(evals - probe["evaluated"], 0) * probe["eval_s"]
            + max(saves - probe["saved"], 0) * probe["save_s"])


def probe_eval(eval_flags: dict[str, dict], folder: Path, lora_dir: str | None, model: dict) -> dict:
    """Time loading the model and one batch of every evaluation; per evaluation: seconds per item, items."""
    from .cli_args import flag_tokens, parse
    from .evaluation.readers import load_items
    from .evaluation.runner import run_evaluation
    from .infer import load_generator
    from .study import EVAL_GROUPS

    started = time.perf_counter()
    generator = load_generator(lora_dir, model.get("model_name_or_path"), model.get("model_type"),
                               model.get("template"), model.get("quantization_bit"), model.get("compute_dtype", "auto"))
    out = {"load_s": time.perf_counter() - started, "evals": {}}
    for name, flags in eval_flags.items():
        args, gen = parse(EVAL_GROUPS, flag_tokens({**flags, "output_dir": str(folder / name)}))
        total = len(load_items(args.task, args.data, args.format))
        items = min(total, args.max_samples) if args.max_samples else total
        args.max_samples, args.no_cache = max(1, min(args.batch_size, items)), True
        t0 = time.perf_counter()
        run_evaluation(args, gen, generator=generator)
        out["evals"][name] = {"per_item_s": (time.perf_counter() - t0) / args.max_samples, "items": items}
        if args.task in GENERATING:  # how long the probe's answers were, to rescale to the finished fine-tune's
            rows = [json.loads(line) for line in (folder / name / "results.jsonl").read_text().splitlines()]
            lengths = [len(generator.tokenizer(r.get("output") or "", add_special_tokens=False)["input_ids"])
                       for r in rows]
            out["evals"][name].update(generated_tokens=sum(lengths) / max(len(lengths), 1),
                                      max_new_tokens=gen.max_new_tokens)
    shutil.rmtree(folder, ignore_errors=True)
    return out


def eval_seconds(probe: dict, names, response_tokens: float | None = None) -> float:
    """Expected evaluation time. ``response_tokens``: the mean response length of the fine-tune's training
    data; a generating evaluation's time is scaled from the probe's answer length to that (capped by
    ``max_new_tokens``, the scale kept within 0.1-10): a barely trained probe often talks until the cap,
    where the finished fine-tune answers as long as it was taught to. None (an untuned model): as probed."""
    total = probe["load_s"]
    for name in names:
        e = probe["evals"][name]
        scale = 1.0
        if response_tokens and e.get("generated_tokens"):
            scale = min(10.0, max(0.1, min(response_tokens, e["max_new_tokens"]) / max(e["generated_tokens"], 1)))
        total += e["per_item_s"] * e["items"] * scale
    return total


def load_cache(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {"train": {}, "eval": {}}


def minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.0f} s"
