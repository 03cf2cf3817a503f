"""A study's runs read back from disk and summarised per cell: means, intervals, paired comparisons.

Everything comes from the run folders (``train/alpaca_cot.json``, ``log_history.json``,
``run.json``, ``eval/<name>/summary.json`` and ``results.jsonl``), so the summary can be rebuilt
at any time, also mid-study. Statistics: ``alpaca_cot.evaluation.stats``.
"""

from __future__ import annotations

import json
from pathlib import Path

from . import stats

LOSSES = (("train_loss", "train loss"), ("eval_loss", "held-out loss"))
MAX_CATEGORIES = 16


def _json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def adapter_params(train_dir: Path) -> int | None:
    """Number of trained parameters saved in the adapter file."""
    file = train_dir / "adapter_model.safetensors"
    if not file.exists():
        return None
    from safetensors import safe_open

    total = 0
    with safe_open(str(file), framework="pt") as f:
        for key in f.keys():
            n = 1
            for dim in f.get_slice(key).get_shape():
                n *= dim
            total += n
    return total


def _items(folder: Path) -> dict[str, tuple[float | None, str]]:
    """``{item id: (score, category)}`` of one evaluation's results.jsonl."""
    out = {}
    try:
        lines = (folder / "results.jsonl").read_text(encoding="utf-8").splitlines()
    except OSError:
        return out
    for line in lines:
        row = json.loads(line)
        out[str(row.get("id"))] = (row.get("score"), str(row.get("category", "")))
    return out


def read_run(config: dict, run, estimates: dict) -> dict | None:
    """One run's numbers, or None when it has not finished (training or any evaluation)."""
    meta = _json(run.folder / "train" / "alpaca_cot.json") or {}
    metrics = meta.get("metrics") or {}
    if not run.cell.baseline and (not metrics or metrics.get("interrupted")):
        return None
    record = _json(run.folder / "run.json") or {}
    row = {"seed": run.seed, "learning_rate": run.lr or (meta.get("args") or {}).get("learning_rate"),
           "train_loss": metrics.get("train_loss"), "eval_loss": metrics.get("eval_loss"),
           "steps": metrics.get("global_step"), "params": adapter_params(run.folder / "train"),
           "trainable_params": metrics.get("trainable_params"), "supervised_tokens": metrics.get("supervised_tokens"),
           "input_tokens": metrics.get("input_tokens"), "budget": metrics.get("budget"),
           "eval_loss_by_source": metrics.get("eval_loss_by_source"),
           "supervised_tokens_by_source": metrics.get("supervised_tokens_by_source"),
           "train_seconds": metrics.get("wall_seconds"), "eval_seconds": 0.0, "peak_rss_mib": record.get("peak_rss_mib"),
           "estimate": {k: v for k, v in (estimates.get(run.id) or {}).items() if k != "key"} or None,
           "scores": {}, "categories": {}, "items": {}, "history": _json(run.folder / "log_history.json") or []}
    for name in config.get("evaluate") or {}:
        summary = _json(run.folder / "eval" / name / "summary.json")
        if not summary:
            return None
        row["scores"][name] = summary.get("score")
        row["categories"][name] = {c: b.get("score") for c, b in summary.get("per_category", {}).items()}
        row["eval_seconds"] += summary.get("seconds") or 0
        row["items"][name] = _items(run.folder / "eval" / name)
    return row


def metric_names(config: dict, cells: list[dict]) -> list[tuple[str, str, str, bool]]:
    """``(key, title, kind, lower_is_better)``: kind "loss" (one number per run) or "item" (per-item scores)."""
    runs = [r for c in cells for r in c["runs"]]
    names = [(key, title, "loss", True) for key, title in LOSSES if any(r[key] is not None for r in runs)]
    for name in config.get("evaluate") or {}:
        names.append((name, name, "item", False))
        categories = sorted({cat for r in runs for _, cat in r["items"].get(name, {}).values()})
        if 1 < len(categories) <= MAX_CATEGORIES:
            names += [(f"{name}/{cat}", f"{name} {cat}", "item", False) for cat in categories]
    return names


def _matrix(runs: list[dict], key: str, ids: list[str]) -> list[list]:
    name = key.split("/", 1)[0]
    return [[r["items"][name].get(i, (None, ""))[0] for i in ids] for r in runs]


def _item_ids(reference_runs: list[dict], key: str) -> list[str]:
    name, _, category = key.partition("/")
    first = reference_runs[0]["items"].get(name, {})
    return [i for i, (_, cat) in first.items() if not category or cat == category]


def summarise(config: dict, cells: list[dict], reference: str) -> None:
    """Fill ``cell["stats"][metric]`` for every cell with finished runs (in place)."""
    ref = next((c for c in cells if c["cell"] == reference and c["runs"]), None)
    for key, _, kind, _ in metric_names(config, cells):
        ids = _item_ids(ref["runs"] if ref else next(c["runs"] for c in cells if c["runs"]), key) \
            if kind == "item" else None
        for cell in cells:
            runs = cell["runs"]
            if not runs:
                continue
            entry = _summary(key, kind, runs, ids)
            if entry is None:
                continue
            if ref is not None and cell is not ref:
                entry.update(_versus(key, kind, runs, ref["runs"], ids))
            cell["stats"][key] = entry


def _summary(key: str, kind: str, runs: list[dict], ids) -> dict | None:
    if kind == "loss":
        values = [r[key] for r in runs if r[key] is not None]
        if not values:
            return None
        mean, low, high = stats.t_interval(values)
        return {"mean": mean, "low": low, "high": high, "n": len(values), "interval": "t"}
    scores = _matrix(runs, key, ids)
    try:
        mean, low, high = stats.bootstrap_interval(scores)
    except ValueError:
        return None
    return {"mean": mean, "low": low, "high": high, "n": len(runs), "items": len(ids), "interval": "bootstrap"}


def _versus(key: str, kind: str, runs: list[dict], ref_runs: list[dict], ids) -> dict:
    """The paired comparison with the reference cell's runs (matched by seed; an untuned model pairs with all)."""
    if kind == "loss":
        ref_by_seed = {r["seed"]: r[key] for r in ref_runs}
        pairs = [(r[key], ref_by_seed[r["seed"]]) for r in runs
                 if r[key] is not None and ref_by_seed.get(r["seed"]) is not None]
        if not pairs:
            return {}
        diff, p = stats.paired_t([a for a, _ in pairs], [b for _, b in pairs])
        return {"diff": diff, "p": p, "test": "paired t", "pairs": len(pairs)}
    seeds = [r["seed"] for r in runs]
    if None in seeds or len(ref_runs) == 1:  # an untuned model (or a reference) scored once
        mine, theirs = runs, ref_runs
    else:
        common = [s for s in seeds if s in {r["seed"] for r in ref_runs}]
        if not common:
            return {}
        mine = [r for r in runs if r["seed"] in common]
        theirs = [next(r for r in ref_runs if r["seed"] == s) for s in common]
    try:
        result = stats.paired_bootstrap(_matrix(mine, key, ids), _matrix(theirs, key, ids))
    except ValueError:
        return {}
    return {"diff": result["diff"], "diff_low": result["low"], "diff_high": result["high"], "p": result["p"],
            "test": "paired bootstrap", "pairs": result["seeds"]}


def collect(config: dict, cells, reference: str, estimates: dict) -> list[dict]:
    """One entry per cell: its finished runs and, in ``stats``, every metric's summary."""
    from ..study import final_runs

    out = []
    for cell in cells:
        runs = [r for r in (read_run(config, run, estimates) for run in final_runs(config, cell)) if r is not None]
        out.append({"cell": cell.name, "labels": cell.labels, "baseline": cell.baseline,
                    "reference": cell.name == reference, "runs": runs, "stats": {}})
    summarise(config, out, reference)
    return out
