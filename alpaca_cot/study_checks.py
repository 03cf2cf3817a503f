"""What a study checks besides its runs: contamination, matched parameter counts, its cost, reproductions.

- ``contamination``: n-gram overlap (``alpaca_cot.data.overlap``) of every evaluation set with
  the training data of every cell, after the cell's own ``--decontaminate`` if any.
- ``match_params``: each cell's size knob set to the reference cell's trainable-parameter count
  (``alpaca_cot.match_params``).
- ``study_estimate``: a probe per distinct configuration (``alpaca_cot.estimate``); each run's
  estimate is kept in ``OUT/estimate.json`` as first made, so the report can set it beside the
  actual time.
- ``compare_runs``: a re-run cell's numbers against the original's.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from . import estimate as cost
from .evaluation.cache import content_key
from .metadata import atomic_write_text

logger = logging.getLogger("alpaca_cot")


def _as_list(value, default) -> list:
    if value is None:
        return list(default)
    return list(value) if isinstance(value, (list, tuple)) else [value]


def contamination(config: dict, cells, out: Path) -> list[dict]:
    """Per evaluation set and distinct training data: how many items share an n-gram with it (cached)."""
    from .data.loading import load_data
    from .data.overlap import CHAR_N, WORD_N, check_overlap, decontaminate, item_text, record_text
    from .evaluation.readers import language
    from .manifest import digests

    setting = config.get("contamination", True)
    if setting is False or not config.get("evaluate"):
        return []
    setting = setting if isinstance(setting, dict) else {}
    word_n, char_n = int(setting.get("word_ngram", WORD_N)), int(setting.get("char_ngram", CHAR_N))
    trainings: dict[str, dict] = {}
    for cell in cells:
        if cell.baseline:
            continue
        flags = {**(config.get("train") or {}), **cell.flags}
        entry = {"data": _as_list(flags.get("data"), ["demo"]),
                 "decontaminate": _as_list(flags.get("decontaminate"), []),
                 "decontaminate_ngrams": _as_list(flags.get("decontaminate_ngrams"), [WORD_N, CHAR_N])}
        trainings.setdefault(json.dumps(entry, sort_keys=True), {**entry, "cells": []})["cells"].append(cell.name)
    cache_file = out / "contamination.json"
    try:
        cache = json.loads(cache_file.read_text())
    except (OSError, ValueError):
        cache = {}
    results = []
    for name, flags in config["evaluate"].items():
        specs = _as_list(flags.get("data"), ["demo_test"])
        for training in trainings.values():
            key = content_key(2, specs, flags.get("max_samples", 0), training["data"], training["decontaminate"],
                              training["decontaminate_ngrams"], word_n, char_n,
                              digests(specs + training["data"] + training["decontaminate"]))
            if key not in cache:
                records, _ = load_data(training["data"], seed=config["seeds"][0])
                if training["decontaminate"]:
                    records, _ = decontaminate(records, training["decontaminate"], *training["decontaminate_ngrams"])
                report, items = check_overlap(specs, records, word_n, char_n, int(flags.get("max_samples") or 0))
                summary = report.summary(examples=3, ids=[str(i) for i in range(len(items))],
                                         texts=[item_text(i) for i in items])
                for example in summary["examples"]:
                    example["training_text"] = record_text(records[example["training_record"]])[:160]
                by_language: dict[str, int] = {}  # English 13-grams and Chinese 8-grams find different things
                for index in report.hits:
                    lang = language(item_text(items[index]))
                    by_language[lang] = by_language.get(lang, 0) + 1
                summary["overlapping_by_language"] = by_language
                cache[key] = summary
                logger.info("contamination: %s vs %s: %d of %d items share an n-gram", name,
                            " ".join(training["data"]), summary["overlapping"], summary["items"])
            results.append({"evaluation": name, "eval_data": specs, "training_data": training["data"],
                            "decontaminated_with": training["decontaminate"], "cells": training["cells"], **cache[key]})
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(cache_file, json.dumps(cache, ensure_ascii=False, indent=1))
    return results


def match_params(config: dict, cells, reference: str) -> dict:
    """Set each cell's size knob to the reference's trainable count; ``{cell: match result}``."""
    from .match_params import match_knob, trainable_count

    if not config.get("match_params"):
        return {}
    budget = {f"budget_{k}": v for k, v in (config.get("budget") or {}).items()}
    ref = next(c for c in cells if c.name == reference)
    if ref.baseline:
        raise ValueError("match_params: the reference cell is an untuned model; name a fine-tuned cell as reference")
    target = trainable_count({**(config.get("train") or {}), **budget, **ref.flags})
    results = {ref.name: {"knob": None, "value": None, "params": target, "target": target, "ratio": 1.0,
                          "within": True, "reference": True}}
    for cell in cells:
        if cell.baseline or cell is ref:
            continue
        result = match_knob({**(config.get("train") or {}), **budget, **cell.flags}, target)
        cell.flags.update(result.pop("flags", {}))
        results[cell.name] = result
        if not result["within"]:
            what = f"its {result['knob']} at {result['value']}" if result["knob"] else "it has no size knob"
            logger.warning("match_params: %s has %s trainable parameters, %+.0f%% from the reference's %s (%s)",
                           cell.name, f"{result['params']:,}", 100 * (result["ratio"] - 1), f"{target:,}", what)
    return results


def _eval_key(config: dict, run, train_key: str | None) -> str:
    evals = {n: {k: v for k, v in f.items() if k not in ("output_dir", "lora_dir")}
             for n, f in (config.get("evaluate") or {}).items()}
    model = run.cell.flags if run.cell.baseline else None
    return content_key(train_key, model, evals)


def study_estimate(config: dict, plan: list, out: Path, extra_runs: dict) -> dict:
    """Probe what is left to run and return ``{"runs": {id: {...}}, "left_s", "total_s", "peak_mib"}``.

    Args:
        plan: the runs known now (``Run`` objects).
        extra_runs: ``{cell name: (a Run of that cell, count)}``: runs not planned yet (the seeds
            after a learning-rate search), estimated like the given run.
    """
    from .study import _done

    path = out / "estimate.json"
    cache = cost.load_cache(path)
    cache.setdefault("runs", {})
    names = list(config.get("evaluate") or {})
    rows, left, total = {}, 0.0, 0.0
    items = [(run, 1, run.id) for run in plan] + [(run, n, f"{name} (later seeds)")
                                                  for name, (run, n) in extra_runs.items()]
    for run, count, run_id in items:
        trained, evaluated = _done(config, run)
        train_key = None if run.cell.baseline else cost.config_key(timing_flags(config, run))
        eval_key = _eval_key(config, run, train_key)
        if not (trained and evaluated) and (eval_key not in cache["eval"] or (
                not trained and train_key not in cache["train"])):
            _probe(config, run, out, cache, train_key, eval_key)
            atomic_write_text(path, json.dumps(cache, indent=1))
        train_s = 0.0 if run.cell.baseline else cost.train_seconds(cache["train"][train_key]) \
            if train_key in cache["train"] else None
        data = cache["train"].get(train_key, {}).get("train_set") or {}
        response = data["supervised_tokens"] / data["samples"] if data.get("samples") else None
        eval_s = cost.eval_seconds(cache["eval"][eval_key], names, response) if eval_key in cache["eval"] else None
        if train_s is None or eval_s is None:  # finished before the estimate existed
            row = {"train_s": None, "eval_s": None, "done": True}
        else:
            stored = cache["runs"].get(run_id)
            if stored is None or stored.get("key") != eval_key:  # kept as first made, for estimate vs actual
                stored = cache["runs"][run_id] = {"train_s": round(train_s, 1), "eval_s": round(eval_s, 1),
                                                  "key": eval_key}
            row = {k: v for k, v in stored.items() if k != "key"}
            row = {**row, "done": trained and evaluated, "count": count}
            total += count * (row["train_s"] + row["eval_s"])
            left += count * ((0 if trained else row["train_s"]) + (0 if evaluated else row["eval_s"]))
        rows[run_id] = row
    atomic_write_text(path, json.dumps(cache, indent=1))
    return {"runs": rows, "left_s": left, "total_s": total, "peak_mib": cache.get("peak_mib"),
            "probe_s": cache.get("probe_s", 0.0)}


def timing_flags(config: dict, run) -> dict:
    """A run's training flags for timing it: those naming another cell's fine-tune ("{cell:NAME}", e.g.
    DPO from an SFT cell's adapter) left out.

    Such a run is timed on a fresh adapter of its own settings: a step costs the same whatever
    weights it starts from, so the estimate covers it before that cell is trained (and one probe
    serves every run that differs only in its starting adapter).
    """
    from .study import cell_refs, train_flags

    refs = cell_refs(config, run.cell)
    return {k: v for k, v in train_flags(config, run).items() if k not in refs}


def _probe(config: dict, run, out: Path, cache: dict, train_key: str | None, eval_key: str) -> None:
    import shutil
    import time

    from .study import MODEL_FLAGS, eval_flags

    started = time.perf_counter()
    folder = out / ".estimate" / (train_key or eval_key)
    lora_dir, model = None, {k: v for k, v in run.cell.flags.items() if k in MODEL_FLAGS}
    if train_key is not None:
        logger.info("estimate: timing %d steps of %s", cost.PROBE_STEPS, run.id)
        cache["train"][train_key] = cost.probe_train(timing_flags(config, run), folder / "train")
        lora_dir, model = str(folder / "train"), {}
    if config.get("evaluate"):
        evals = {n: {k: v for k, v in eval_flags(config, run, n).items() if k not in ("output_dir", "lora_dir")}
                 for n in config["evaluate"]}
        cache["eval"][eval_key] = cost.probe_eval(evals, folder / "eval", lora_dir, model)
    else:
        cache["eval"][eval_key] = {"load_s": 0.0, "evals": {}}
    shutil.rmtree(folder, ignore_errors=True)
    cache["peak_mib"] = max(cache.get("peak_mib") or 0, cost.peak_memory_mib())
    cache["probe_s"] = round(cache.get("probe_s", 0.0) + time.perf_counter() - started, 1)


def format_estimate(est: dict) -> str:
    lines = ["Cost estimate (a few timed steps and one batch of every evaluation per configuration):",
             f"  {'run':<40} {'train':>9} {'eval':>9}"]
    for run_id, row in est["runs"].items():
        if row.get("train_s") is None:
            lines.append(f"  {run_id:<40} {'done':>9}")
            continue
        times = f"{cost.minutes(row['train_s']):>9} {cost.minutes(row['eval_s']):>9}"
        count = f" x {row['count']}" if row.get("count", 1) > 1 else ""
        lines.append(f"  {run_id:<40} {times}{count}{'  (done)' if row['done'] else ''}")
    memory = f"; peak memory about {est['peak_mib'] / 1024:.1f} GiB" if est.get("peak_mib") else ""
    lines.append(f"  whole study: {cost.minutes(est['total_s'])}; left to run: {cost.minutes(est['left_s'])}{memory} "
                 f"(probes took {cost.minutes(est['probe_s'])})")
    return "\n".join(lines)


def compare_runs(original: Path, rerun: Path, names) -> list[str]:
    """Lines comparing a re-run's numbers with the original run's (losses, tokens, scores)."""
    def numbers(folder: Path) -> dict:
        meta = folder / "train" / "alpaca_cot.json"
        metrics = json.loads(meta.read_text()).get("metrics", {}) if meta.exists() else {}
        values = {k: metrics.get(k) for k in ("train_loss", "eval_loss", "supervised_tokens", "global_step")}
        for name in names:
            summary = folder / "eval" / name / "summary.json"
            values[name] = json.loads(summary.read_text()).get("score") if summary.exists() else None
        return values

    before, after = numbers(original), numbers(rerun)
    lines = []
    for key in before:
        if before[key] is None and after[key] is None:
            continue
        verdict = "identical" if before[key] == after[key] else "DIFFERENT"
        lines.append(f"{key}: original {before[key]} / re-run {after[key]}: {verdict}")
    return lines
