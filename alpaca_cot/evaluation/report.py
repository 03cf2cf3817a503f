"""A study's results as ``results.md`` (one row per cell, best per column marked) and PNG plots.

Everything is read back from the cells' folders (``train/alpaca_cot.json``, ``log_history.json``,
``eval/<name>/summary.json``), so the report can be rebuilt at any time, also mid-study.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

LOSSES = (("train_loss", "train loss"), ("eval_loss", "held-out loss"))


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


def collect(config: dict, cells) -> list[dict]:
    """One row per cell: labels, losses, evaluation scores (0-1), sizes and times; None where missing."""
    rows = []
    for cell in cells:
        meta = _json(cell.folder / "train" / "alpaca_cot.json") or {}
        metrics = meta.get("metrics") or {}
        row = {"cell": cell.name, "labels": cell.labels, "baseline": cell.baseline,
               "train_loss": metrics.get("train_loss"), "eval_loss": metrics.get("eval_loss"),
               "steps": metrics.get("global_step"), "params": adapter_params(cell.folder / "train"),
               "train_seconds": metrics.get("wall_seconds"), "eval_seconds": 0.0, "scores": {}, "categories": {},
               "history": _json(cell.folder / "log_history.json") or []}
        for name in config.get("evaluate") or {}:
            summary = _json(cell.folder / "eval" / name / "summary.json")
            if summary:
                row["scores"][name] = summary.get("score")
                row["categories"][name] = {c: b.get("score") for c, b in summary.get("per_category", {}).items()}
                row["eval_seconds"] += summary.get("seconds") or 0
        rows.append(row)
    return rows


def _best(values: list, lower: bool) -> set[int]:
    present = [(v, i) for i, v in enumerate(values) if v is not None]
    if not present:
        return set()
    target = min(present)[0] if lower else max(present)[0]
    best = {i for v, i in present if abs(v - target) < 1e-12}
    return set() if len(best) == len(present) else best  # all equal: nothing stands out


def _fmt(value, kind: str) -> str:
    if value is None:
        return ""
    if kind == "score":
        return f"{100 * value:.1f}"
    if kind == "loss":
        return f"{value:.3f}"
    if kind == "int":
        return f"{value:,}"
    return f"{value:.0f}"


def markdown(config: dict, rows: list[dict], command: str) -> str:
    axes = list(config["grid"])
    evals = list(config.get("evaluate") or {})
    metric_cols = [(key, title, "loss", True) for key, title in LOSSES if any(r[key] is not None for r in rows)]
    metric_cols += [(name, name, "score", False) for name in evals]
    header = ["cell", *axes, *[f"{title} {'↓' if lower else '↑'}" for _, title, _, lower in metric_cols],
              "trained params", "steps", "train s", "eval s"]
    values = {key: [r["scores"].get(key) if kind == "score" else r[key] for r in rows]
              for key, _, kind, _ in metric_cols}
    best = {key: _best(values[key], lower) for key, _, _, lower in metric_cols}
    lines = [f"# Study: {config['name']}", ""]
    if config.get("description"):
        lines += [str(config["description"]).strip(), ""]
    total = sum((r["train_seconds"] or 0) + r["eval_seconds"] for r in rows)
    lines += [f"Reproduce: `{command}` (recorded run time of all cells: {total / 60:.1f} min).",
              "Scores x 100 (accuracy in %, or the mean 0-1 score); **bold**: best in its column.", "",
              "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for i, r in enumerate(rows):
        cells = [r["cell"]] + [("(untuned)" if r["baseline"] else r["labels"].get(a, "")) for a in axes]
        for key, _, kind, _ in metric_cols:
            text = _fmt(values[key][i], kind)
            cells.append(f"**{text}**" if text and i in best[key] else text)
        cells += [_fmt(r["params"], "int"), _fmt(r["steps"], "int"), _fmt(r["train_seconds"], "s"),
                  _fmt(r["eval_seconds"] if r["scores"] else None, "s")]
        lines.append("| " + " | ".join(cells) + " |")
    for name in evals:
        categories = sorted({c for r in rows for c in r["categories"].get(name, {})})
        if 1 < len(categories) <= 16:
            lines += ["", f"{name} per category (x 100):", "",
                      "| cell | " + " | ".join(categories) + " |", "|" + "---|" * (len(categories) + 1)]
            for r in rows:
                scores = r["categories"].get(name, {})
                lines.append(f"| {r['cell']} | " + " | ".join(_fmt(scores.get(c), "score") for c in categories) + " |")
    lines += ["", "Plots: " + ", ".join(f"`plots/{p}`" for p in plot_names(config, rows)), ""]
    return "\n".join(lines)


def plot_names(config: dict, rows: list[dict]) -> list[str]:
    names = [f"{key}.png" for key, _ in LOSSES if any(r[key] is not None for r in rows)]
    names += [f"{name}.png" for name in config.get("evaluate") or {}]
    if any(r["history"] for r in rows):
        names.append("loss_curves.png")
    return names


def _save(fig, path: Path) -> None:
    import matplotlib.pyplot as plt

    tmp = path.with_name(f".{path.stem}.tmp.png")
    fig.savefig(tmp, dpi=100, bbox_inches="tight")
    plt.close(fig)
    os.replace(tmp, path)


def plots(config: dict, rows: list[dict], folder: Path) -> None:
    """A bar chart per metric and the training-loss curves of all cells on one axis."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    metrics = [(key, title, 1) for key, title in LOSSES if any(r[key] is not None for r in rows)]
    metrics += [(name, f"{name} (x 100)", 100) for name in config.get("evaluate") or {}]
    for key, title, scale in metrics:
        points = [(r["cell"], r["scores"].get(key) if scale == 100 else r[key]) for r in rows]
        points = [(cell, scale * v) for cell, v in points if v is not None]  # untuned rows have no losses
        fig, ax = plt.subplots(figsize=(max(4, 1.1 * len(points) + 1), 3.6))
        bars = ax.bar(range(len(points)), [v for _, v in points], color="#4c72b0")
        for bar, (_, v) in zip(bars, points):
            ax.annotate(f"{v:.4g}", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                        ha="center", va="bottom", fontsize=8)
        ax.set_xticks(range(len(points)), [cell for cell, _ in points], rotation=30, ha="right", fontsize=8)
        ax.set_title(f"{config['name']}: {title}")
        ax.grid(axis="y", alpha=0.3)
        _save(fig, folder / f"{key}.png")
    if any(r["history"] for r in rows):
        fig, ax = plt.subplots(figsize=(7, 4))
        for r in rows:
            train = [(h["step"], h["loss"]) for h in r["history"] if "loss" in h]
            held = [(h["step"], h["eval_loss"]) for h in r["history"] if "eval_loss" in h]
            if train:
                (line,) = ax.plot(*zip(*train), marker="." if len(train) < 30 else None, label=r["cell"])
                if held:
                    ax.plot(*zip(*held), linestyle="--", marker="o", color=line.get_color())
        ax.set_xlabel("optimizer step")
        ax.set_ylabel("training loss (dashed: held-out)")
        ax.set_title(f"{config['name']}: loss curves")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        _save(fig, folder / "loss_curves.png")


def write_report(config: dict, cells, out: Path, command: str, with_plots: bool = True,
                 redraw: bool = False) -> list[dict]:
    """``results.md``, ``results.json`` and (``with_plots``) ``plots/*.png`` in ``out``.

    Plots are redrawn only when the results changed since they were drawn, or with ``redraw``.
    """
    rows = collect(config, cells)
    table = json.dumps([{k: v for k, v in r.items() if k != "history"} for r in rows], indent=1, ensure_ascii=False)
    source = out / "plots" / ".rows.json"  # what the plots on disk were drawn from
    fresh = _json(source) == json.loads(json.dumps(rows)) and all(
        (out / "plots" / name).exists() for name in plot_names(config, rows))
    if with_plots and (redraw or not fresh):
        plots(config, rows, out / "plots")
        source.write_text(json.dumps(rows))
    for name, text in (("results.md", markdown(config, rows, command)), ("results.json", table)):
        tmp = out / f".{name}.tmp"
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, out / name)
    return rows
