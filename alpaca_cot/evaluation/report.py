"""A study's results as ``results.md``, ``results.json`` and PNG plots with error bars.

``results.md`` has, in order: the main table (per cell: each metric's mean over seeds with its
95% interval, the paired difference from the reference cell with its p-value, bold where
significant; supervised tokens, trained parameters, steps), per-category (e.g. per-language)
scores, per-source results for mixtures, matched parameter counts and the learning-rate search
when the study asked for them, the contamination check, the cost (estimated and actual), and
warnings. The numbers come from ``alpaca_cot.evaluation.aggregate``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from .aggregate import collect, metric_names
from .stats import LEVEL, RESAMPLES


def _fmt(value, kind: str) -> str:
    if value is None:
        return ""
    if kind == "item":
        return f"{100 * value:.1f}"
    if kind == "loss":
        return f"{value:.3f}"
    if kind == "int":
        return f"{value:,.0f}"
    return f"{value:.0f}"


def _p(p) -> str:
    return "" if p is None else ("p<0.001" if p < 0.001 else f"p={p:.3f}")


def _value(entry: dict | None, kind: str, alpha: float) -> str:
    if not entry:
        return ""
    text = _fmt(entry["mean"], kind)
    if entry.get("low") is not None:
        text += f" [{_fmt(entry['low'], kind)}, {_fmt(entry['high'], kind)}]"
    return f"**{text}**" if entry.get("p") is not None and entry["p"] < alpha else text


def _versus(entry: dict | None, kind: str) -> str:
    if not entry or entry.get("diff") is None:
        return ""
    scale = 100 if kind == "item" else 1
    digits = 1 if kind == "item" else 3
    return f"{scale * entry['diff']:+.{digits}f} ({_p(entry['p'])})" if entry.get("p") is not None else \
        f"{scale * entry['diff']:+.{digits}f}"


def _mean(values):
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def _caption(config: dict, metrics, reference: str, alpha: float) -> list[str]:
    seeds = config["seeds"]
    lines = [f"Mean over {len(seeds)} seed{'s' if len(seeds) > 1 else ''} ({', '.join(map(str, seeds))}) "
             f"with its {LEVEL:.0%} confidence interval in brackets; Δ: difference from the reference cell "
             f"`{reference}` with the two-sided p-value of a paired test."]
    if any(kind == "loss" for _, _, kind, _ in metrics):
        lines.append("Losses: interval from Student's t over seeds (none for one seed); Δ: paired t-test over seeds "
                     "(seed s against seed s: same data order and initialisation).")
    if any(kind == "item" for _, _, kind, _ in metrics):
        lines.append(f"Scores (x 100): percentile bootstrap interval resampling seeds and evaluation items; Δ: paired "
                     f"bootstrap over seeds and items ({RESAMPLES:,} resamples; an untuned model, scored once, is "
                     "paired with every seed of the reference).")
    lines.append(f"**Bold**: significantly different from the reference at p < {alpha:g} (no correction for "
                 "multiple comparisons). Supervised tokens: label tokens actually trained on, mean per run.")
    return [" ".join(lines)]


def _main_table(config: dict, cells: list[dict], metrics, alpha: float) -> list[str]:
    axes = list(config["grid"]) if len(config["grid"]) > 1 else []  # one axis: its labels are the cell names
    shown = [m for m in metrics if "/" not in m[0]]
    header = ["cell", *axes]
    for _, title, _, lower in shown:
        header += [f"{title} {'↓' if lower else '↑'}", "Δ"]
    header += ["supervised tokens", "trained params", "steps", "seeds"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for c in cells:
        row = [c["cell"] + (" (reference)" if c["reference"] else "")]
        row += [("(untuned)" if c["baseline"] else c["labels"].get(a, "")) for a in axes]
        for key, _, kind, _ in shown:
            entry = c["stats"].get(key)
            row += [_value(entry, kind, alpha), _versus(entry, kind)]
        runs = c["runs"]
        row += [_fmt(_mean([r["supervised_tokens"] for r in runs]), "int"),
                _fmt(_mean([r["trainable_params"] or r["params"] for r in runs]), "int"),
                _fmt(_mean([r["steps"] for r in runs]), "int"), str(len(runs))]
        lines.append("| " + " | ".join(row) + " |")
    return lines


def _category_tables(config: dict, cells: list[dict], metrics, alpha: float) -> list[str]:
    lines = []
    for name in config.get("evaluate") or {}:
        keys = [m for m in metrics if m[0].startswith(name + "/")]
        if not keys:
            continue
        header = ["cell"] + [x for _, title, _, _ in keys for x in (title.split(" ", 1)[1], "Δ")]
        lines += ["", f"{name} per category (x 100; intervals and tests as above):", "",
                  "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for c in cells:
            row = [c["cell"]]
            for key, _, kind, _ in keys:
                row += [_value(c["stats"].get(key), kind, alpha), _versus(c["stats"].get(key), kind)]
            lines.append("| " + " | ".join(row) + " |")
    return lines


def _source_table(cells: list[dict]) -> list[str]:
    rows = []
    for c in cells:
        shares = [r["supervised_tokens_by_source"] for r in c["runs"] if r.get("supervised_tokens_by_source")]
        losses = [r["eval_loss_by_source"] for r in c["runs"] if r.get("eval_loss_by_source")]
        sources = sorted({s for d in shares + losses for s in d})
        if len(sources) < 2:
            continue
        from .stats import t_interval

        for source in sources:
            share = _mean([d.get(source, 0) / max(sum(d.values()), 1) for d in shares]) if shares else None
            values = [d[source] for d in losses if d.get(source) is not None]
            loss = ""
            if values:
                mean, low, high = t_interval(values)
                loss = f"{mean:.3f}" + (f" [{low:.3f}, {high:.3f}]" if low is not None else "")
            rows.append(f"| {c['cell']} | {source} | {'' if share is None else f'{100 * share:.1f}%'} | {loss} |")
    if not rows:
        return []
    return ["", "Per source (cells trained on a mixture): each source's share of the supervised tokens trained on "
            "(mean over seeds) and the validation loss on that source's held-out records (Student t interval):", "",
            "| cell | source | share of supervised tokens | validation loss ↓ |", "|---|---|---|---|", *rows]


def _extras(matched: dict, config: dict, out: Path) -> list[str]:
    lines = []
    if matched:
        lines += ["", "Matched trainable parameters (`match_params`: each method's size knob set to within 10% of the "
                  "reference's count):", "", "| cell | size knob | value | trainable params | vs reference |",
                  "|---|---|---|---|---|"]
        for name, m in matched.items():
            vs = "reference" if m.get("reference") else f"{100 * (m['ratio'] - 1):+.1f}%" + (
                "" if m["within"] else " (not within 10%)")
            lines.append(f"| {name} | {m['knob'] or '(none)'} | {m['value'] or ''} | {m['params']:,} | {vs} |")
    searched = sorted(out.glob("cells/*/lr_search.json"))
    if searched:
        lines += ["", "Learning-rate search (`lr_search`, first seed; chosen on the validation loss, reported on "
                  "the evaluations):", "", "| cell | validation loss per learning rate | chosen |", "|---|---|---|"]
        for file in searched:
            data = json.loads(file.read_text())
            losses = ", ".join(f"{lr}: {loss:.3f}" for lr, loss in data["eval_loss"].items())
            lines.append(f"| {file.parent.name} | {losses} | {data['chosen']:g} |")
    return lines


def _contamination(results: list[dict]) -> list[str]:
    if not results:
        return []
    first = results[0]["ngrams"]
    lines = ["", f"Contamination check: evaluation items sharing a {first['english_words']}-word (English) or "
             f"{first['chinese_characters']}-character (Chinese) n-gram with a cell's training data "
             "(`python data/stats.py --overlap EVAL --data TRAIN` gives the same):", "",
             "| evaluation | training data (cells) | items | overlapping | exact duplicates | too short to check | "
             "training records overlapping |", "|---|---|---|---|---|---|---|"]
    for r in results:
        data = " ".join(r["training_data"]) + (f" minus overlap with {' '.join(r['decontaminated_with'])}"
                                               if r["decontaminated_with"] else "")
        by_language = "".join(f"; {lang} {n}" for lang, n in sorted((r.get("overlapping_by_language") or {}).items()))
        lines.append(f"| {r['evaluation']} | {data} ({', '.join(r['cells'])}) | {r['items']} | {r['overlapping']} "
                     f"({100 * r['overlapping'] / max(r['items'], 1):.0f}%{by_language}) | {r['exact_duplicates']} | "
                     f"{r['too_short']} | {r['training_records_overlapping']} of {r['training_records']} |")
    examples = [(r, e) for r in results for e in r["examples"][:1]]
    if examples:
        lines += ["", "Examples (item, the shared n-gram, the training record):", ""]
        for r, e in examples:
            lines.append(f"- {r['evaluation']} item {e['item']} vs {' '.join(r['training_data'])} record "
                         f"{e['training_record']}: \"{e['ngram']}\" (item: {json.dumps(e.get('text', ''), ensure_ascii=False)})")
    return lines


def _cost(cells: list[dict]) -> tuple[list[str], float, float]:
    lines = ["", "Cost per run (mean over seeds; estimated before the run from a few timed steps and items, see "
             "`--estimate`; peak memory: the process's peak resident set size when the run ended):", "",
             "| cell | runs | train s (est. / actual) | eval s (est. / actual) | peak memory MiB |",
             "|---|---|---|---|---|"]
    est_total = act_total = 0.0
    for c in cells:
        runs = c["runs"]
        if not runs:
            continue
        est = [r["estimate"] for r in runs if r["estimate"]]
        train_est, eval_est = _mean([e["train_s"] for e in est]), _mean([e["eval_s"] for e in est])
        train_act, eval_act = _mean([r["train_seconds"] for r in runs]), _mean([r["eval_seconds"] for r in runs])
        act_total += sum((r["train_seconds"] or 0) + r["eval_seconds"] for r in runs)
        est_total += sum(e["train_s"] + e["eval_s"] for e in est)
        lines.append(f"| {c['cell']} | {len(runs)} | {_fmt(train_est, 's') or '-'} / {_fmt(train_act, 's') or '-'} | "
                     f"{_fmt(eval_est, 's') or '-'} / {_fmt(eval_act, 's')} | "
                     f"{_fmt(max((r['peak_rss_mib'] or 0) for r in runs), 'int')} |")
    return lines, est_total, act_total


def markdown(config: dict, cells: list[dict], context: dict) -> str:
    alpha = float(config.get("alpha", 0.05))
    metrics = metric_names(config, cells)
    lines = [f"# Study: {config['name']}", ""]
    if config.get("description"):
        lines += [str(config["description"]).strip(), ""]
    cost_lines, est_total, act_total = _cost(cells)
    estimate = f"; estimated beforehand: {est_total / 60:.1f} min" if est_total else ""
    lines += [f"Reproduce: `{context['command']}` (recorded run time of the runs below: {act_total / 60:.1f} min"
              f"{estimate}). One cell alone: `--cell NAME --seed S` (each run folder's `manifest.json` has the exact "
              "command, versions, data digests and settings).", ""]
    lines += _main_table(config, cells, metrics, alpha) + [""] + _caption(config, metrics, context["reference"], alpha)
    lines += _category_tables(config, cells, metrics, alpha) + _source_table(cells)
    lines += _extras(context.get("matched") or {}, config, Path(config["output_dir"]))
    lines += _contamination(context.get("contamination") or []) + cost_lines
    warnings = collect_warnings(cells, context)
    if warnings:
        lines += ["", f"Warnings ({len(warnings)}):", ""] + [f"- {w}" for w in warnings]
    lines += ["", "Plots: " + ", ".join(f"`plots/{p}`" for p in plot_names(config, cells)), ""]
    return "\n".join(lines)


def collect_warnings(cells: list[dict], context: dict) -> list[str]:
    """What a reader of the table must know: unmatched sizes, repeated data, dropped samples, overlap."""
    out = []
    for name, m in (context.get("matched") or {}).items():
        if not m["within"]:
            out.append(f"{name}: {m['params']:,} trainable parameters, {100 * (m['ratio'] - 1):+.0f}% from the "
                       f"reference's {m['target']:,} ({'no size knob' if not m['knob'] else m['knob'] + ' ' + str(m['value'])})")
    for c in cells:
        for r in c["runs"]:
            budget = r.get("budget") or {}
            if budget.get("passes", 1) > 1:
                out.append(f"{c['cell']} seed {r['seed']}: its budget took {budget['passes']} passes over the data "
                           "(samples repeat)")
    for r in context.get("contamination") or []:
        if r["overlapping"]:
            out.append(f"{r['overlapping']} of {r['items']} items of {r['evaluation']} share an n-gram with "
                       f"{' '.join(r['training_data'])} ({r['exact_duplicates']} exact duplicates): see the "
                       "contamination check")
    return out


def plot_names(config: dict, cells: list[dict]) -> list[str]:
    names = [f"{key.replace('/', '_')}.png" for key, _, _, _ in metric_names(config, cells)]
    if any(r["history"] for c in cells for r in c["runs"]):
        names.append("loss_curves.png")
    return names


def _save(fig, path: Path) -> None:
    import matplotlib.pyplot as plt

    tmp = path.with_name(f".{path.stem}.tmp.png")
    fig.savefig(tmp, dpi=100, bbox_inches="tight")
    plt.close(fig)
    os.replace(tmp, path)


def plots(config: dict, cells: list[dict], folder: Path) -> None:
    """A bar chart per metric (error bars: the 95% intervals) and every run's training-loss curve."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    for key, title, kind, _ in metric_names(config, cells):
        scale = 100 if kind == "item" else 1
        points = [(c["cell"], c["stats"][key]) for c in cells if key in c["stats"]]
        fig, ax = plt.subplots(figsize=(max(4, 1.1 * len(points) + 1), 3.6))
        means = [scale * e["mean"] for _, e in points]
        errors = [[scale * (e["mean"] - e["low"]) if e.get("low") is not None else 0 for _, e in points],
                  [scale * (e["high"] - e["mean"]) if e.get("high") is not None else 0 for _, e in points]]
        bars = ax.bar(range(len(points)), means, yerr=errors, capsize=4, color="#4c72b0", ecolor="#333333")
        for bar, v in zip(bars, means):
            ax.annotate(f"{v:.4g}", (bar.get_x() + bar.get_width() / 2, 0), ha="center", va="bottom", fontsize=8,
                        color="white")
        ax.set_xticks(range(len(points)), [cell for cell, _ in points], rotation=30, ha="right", fontsize=8)
        ax.set_title(f"{config['name']}: {title}{' (x 100)' if scale == 100 else ''}, {LEVEL:.0%} CI")
        ax.grid(axis="y", alpha=0.3)
        _save(fig, folder / f"{key.replace('/', '_')}.png")
    if any(r["history"] for c in cells for r in c["runs"]):
        fig, ax = plt.subplots(figsize=(7, 4))
        for c in cells:
            color = None
            for i, r in enumerate(c["runs"]):
                train = [(h["step"], h["loss"]) for h in r["history"] if "loss" in h]
                held = [(h["step"], h["eval_loss"]) for h in r["history"] if "eval_loss" in h]
                if train:
                    # a marker on every point of a short curve: a one-point curve (a smoke run) draws no line
                    (line,) = ax.plot(*zip(*train), marker="o" if len(train) < 30 else None, markersize=4,
                                      color=color, alpha=0.8, label=c["cell"] if i == 0 else None)
                    color = line.get_color()
                    if held:
                        ax.plot(*zip(*held), linestyle="--", marker="o", color=color)
        ax.set_xlabel("optimizer step")
        ax.set_ylabel("training loss (dashed: held-out)")
        ax.set_title(f"{config['name']}: loss curves (one line per seed)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        _save(fig, folder / "loss_curves.png")


def write_report(config: dict, cells, out: Path, context: dict, with_plots: bool = True,
                 redraw: bool = False) -> list[dict]:
    """``results.md``, ``results.json`` and (``with_plots``) ``plots/*.png`` in ``out``.

    ``context``: ``reference`` (cell name), ``command``, and optionally ``matched``,
    ``contamination`` and ``warnings``. Plots are redrawn only when the results changed since
    they were drawn, or with ``redraw``.
    """
    from .. import estimate as cost

    estimates = cost.load_cache(out / "estimate.json").get("runs", {})
    rows = collect(config, cells, context["reference"], estimates)
    public = [{**c, "runs": [{k: v for k, v in r.items() if k not in ("history", "items")} for r in c["runs"]]}
              for c in rows]
    summary = {"study": config["name"], "reference": context["reference"], "seeds": config["seeds"],
               "alpha": float(config.get("alpha", 0.05)), "cells": public,
               "contamination": context.get("contamination") or [], "matched_params": context.get("matched") or {},
               "warnings": collect_warnings(rows, context)}
    table = json.dumps(summary, indent=1, ensure_ascii=False, default=str)
    source = out / "plots" / ".rows.json"  # what the plots on disk were drawn from
    drawn = json.loads(json.dumps(public, default=str))
    fresh = _read(source) == drawn and all((out / "plots" / name).exists() for name in plot_names(config, rows))
    if with_plots and (redraw or not fresh):
        plots(config, rows, out / "plots")
        source.write_text(json.dumps(drawn))
    for name, text in (("results.md", markdown(config, rows, context)), ("results.json", table)):
        tmp = out / f".{name}.tmp"
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, out / name)
    return rows


def _read(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None
