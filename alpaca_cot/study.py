"""Reproducible ablation studies: a grid of fine-tunes, each evaluated, as one resumable command.

A study file (YAML) names a grid of flag values, shared training and evaluation settings:

    output_dir: studies_out/cot_ablation
    grid:                          # flag -> values; the cells are every combination
      data: {with_cot: demo, without_cot: demo_nocot}   # a mapping gives each value a label
      peft_type: [lora, {label: lora_r16, peft_type: lora, lora_r: 16}]  # a value may set several flags
    train: {max_steps: 150, learning_rate: 1.0e-3}     # uniform_finetune.py flags, every cell
    evaluate:                      # name -> evaluate.py flags (task, data, generation flags, ...)
      cot_math: {task: cot_math, data: demo_test, max_new_tokens: 96}
    baseline: true                 # also score each base model untuned (one extra row per base model)
    seeds: [1, 2, 3]               # every cell once per seed (training seed and data order)
    reference: without_cot         # the cell every other is compared with (default: the first)
    alpha: 0.05                    # significance level of the paired comparisons (bold in the table)
    budget: {tokens: 20000}        # every cell trains on this many supervised tokens ({flops: N}: FLOPs)
    lr_search: [1.0e-4, 3.0e-4, 1.0e-3]  # per cell: the rate with the lowest validation loss (first seed)
    match_params: true             # size each method to the reference's trainable parameters (+-10%)
    contamination: {word_ngram: 13, char_ngram: 8}     # the overlap check's n-gram sizes (false: off)
    smoke: {train.max_steps: 2}    # --smoke applies these overrides (dotted keys) for a quick check

Every run (a cell and a seed) fine-tunes into ``OUT/cells/<cell>/seed<S>/train`` and evaluates
into ``.../eval/<name>``, beside ``manifest.json`` (what reproducing it needs) and ``run.json``
(its times and memory). Finished work is found on disk and skipped, so a study that was stopped
resumes where it stopped: an interrupted fine-tune continues from its last checkpoint. A run
whose training settings changed is refused rather than mixed up; changed evaluation settings
are simply re-evaluated (cached generations are reused). Before anything runs, the study's cost
is estimated (``alpaca_cot.estimate``) and printed. ``OUT/results.md``, ``OUT/results.json``
and ``OUT/plots/`` are rewritten after every run.
"""

from __future__ import annotations

import itertools
import json
import logging
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import yaml

from . import estimate as cost
from .cli_args import (DataArguments, FinetuneArguments, ModelArguments, PeftArguments, PreferenceArguments,
                       flag_tokens, parse)
from .evaluation.cache import content_key
from .evaluation.report import write_report
from .evaluation.runner import EvalGenerationArguments, EvaluateArguments, run_evaluation

logger = logging.getLogger("alpaca_cot")
KEYS = {"name", "description", "output_dir", "grid", "train", "evaluate", "baseline", "smoke", "seeds", "reference",
        "alpha", "budget", "lr_search", "match_params", "contamination"}
TRAIN_GROUPS = (ModelArguments, DataArguments, PeftArguments, FinetuneArguments, PreferenceArguments)
CELL_REF = re.compile(r"\{cell:([^}]+)\}")  # a flag value naming another cell's fine-tune (same seed)
EVAL_GROUPS = (EvaluateArguments, EvalGenerationArguments)
MODEL_FLAGS = ("model_name_or_path", "model_type", "template", "quantization_bit", "compute_dtype")


class StudyError(ValueError):
    """A study file that cannot run as written; the message says what to change."""


class StudyInterrupted(RuntimeError):
    """Stopped by the user; running the same command again resumes."""


@dataclass
class Cell:
    """One grid point: its label (also its folder name), axis labels and the flags it sets."""

    name: str
    labels: dict[str, str]
    flags: dict
    baseline: bool = False
    folder: Path = field(default=Path("."))


@dataclass
class Run:
    """One fine-tune and its evaluations: a cell at a seed (a baseline: no seed, no fine-tune)."""

    cell: Cell
    seed: int | None
    folder: Path
    lr: float | None = None  # a learning rate replacing the study's (searched, or chosen by the search)
    search: bool = False

    @property
    def id(self) -> str:
        if self.cell.baseline:
            return self.cell.name
        return f"{self.cell.name}/lr{self.lr:g}" if self.search else f"{self.cell.name}/seed{self.seed}"


# ---------------------------------------------------------------- the study file


def set_dotted(config: dict, dotted: str, value) -> None:
    """``set_dotted(c, "train.max_steps", 3)`` sets ``c["train"]["max_steps"] = 3``."""
    *parents, last = dotted.split(".")
    node = config
    for key in parents:
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise StudyError(f"--set {dotted}: {key} is not a mapping")
    node[last] = value


def _check_keys(config: dict, path: str) -> None:
    """The study-level settings of the reviewer's kind (seeds, budget, ...) are well-formed."""
    seeds = config["seeds"]
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) for s in seeds) \
            or len(set(seeds)) != len(seeds):
        raise StudyError(f"{path}: seeds must be a list of distinct integers, e.g. [1, 2, 3]; got {seeds!r}")
    if not 0 < float(config.get("alpha", 0.05)) < 1:
        raise StudyError(f"{path}: alpha is a significance level in (0, 1), e.g. 0.05")
    budget = config.get("budget")
    if budget is not None and (not isinstance(budget, dict) or len(budget) != 1
                               or next(iter(budget)) not in ("tokens", "flops") or not float(next(iter(
                                   budget.values()))) > 0):
        raise StudyError(f"{path}: budget is {{tokens: N}} (supervised tokens) or {{flops: N}}, N > 0; got {budget!r}")
    rates = config.get("lr_search")
    if rates is not None and (not isinstance(rates, list) or len(rates) < 2 or not all(
            isinstance(r, (int, float)) and r > 0 for r in rates)):
        raise StudyError(f"{path}: lr_search lists at least two learning rates > 0, e.g. [1.0e-4, 3.0e-4, 1.0e-3]")
    check = config.get("contamination", True)
    if not isinstance(check, bool) and not (isinstance(check, dict) and set(check) <= {"word_ngram", "char_ngram"}):
        raise StudyError(f"{path}: contamination is false, true, or {{word_ngram: 13, char_ngram: 8}}")


def load_study(path: str, overrides: list[str] = (), smoke: bool = False) -> dict:
    """The study file with ``--smoke`` and ``--set KEY=VALUE`` overrides applied, checked."""
    config = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    if not isinstance(config, dict):
        raise StudyError(f"{path}: a study file is a mapping (grid, train, evaluate, ...)")
    unknown = set(config) - KEYS
    if unknown:
        raise StudyError(f"{path}: unknown keys {sorted(unknown)}; known: {sorted(KEYS)}")
    if smoke:
        if not config.get("smoke"):
            raise StudyError(f"{path}: --smoke needs a 'smoke' section of overrides")
        for key, value in config["smoke"].items():
            set_dotted(config, key, value)
        # The full study's description would describe numbers this run does not produce.
        changes = ", ".join(f"{k}={v}" for k, v in config["smoke"].items())
        config["description"] = (f"Smoke run (--smoke) of {Path(path).name}: the same grid, shrunk ({changes}). It "
                                 "checks that every cell trains, evaluates and reports; its numbers mean nothing.")
        config["output_dir"] = str(config.get("output_dir") or f"studies_out/{Path(path).stem}") + "_smoke"
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep:
            raise StudyError(f"--set {item}: use KEY=VALUE (e.g. train.max_steps=10)")
        set_dotted(config, key.strip(), yaml.safe_load(value))
    config.setdefault("name", Path(path).stem)
    config.setdefault("output_dir", f"studies_out/{config['name']}")
    if "seed" in (config.get("train") or {}):  # a single seed, as before 'seeds' existed
        if "seeds" in config:
            raise StudyError(f"{path}: give the seeds once: 'seeds: [...]' (drop train.seed)")
        config["seeds"] = [config["train"].pop("seed")]
    config.setdefault("seeds", [42])
    if not config.get("grid") or not isinstance(config["grid"], dict):
        raise StudyError(f"{path}: 'grid' must map at least one flag to its values")
    if not isinstance(config.get("evaluate") or {}, dict):
        raise StudyError(f"{path}: 'evaluate' maps a name to evaluate.py flags")
    _check_keys(config, path)
    return config


def _label(value) -> str:
    text = Path(value).stem if isinstance(value, str) and ("/" in value or Path(value).suffix) else str(value)
    return re.sub(r"[^A-Za-z0-9_.+-]+", "-", text).strip("-") or "x"


def _axis_values(axis: str, values) -> list[tuple[str, dict]]:
    """``(label, flags)`` per value of one grid axis."""
    if isinstance(values, dict):
        pairs = [(str(k), v) for k, v in values.items()]
    elif isinstance(values, list):
        pairs = [(None, v) for v in values]
    else:
        pairs = [(None, values)]
    out = []
    for label, value in pairs:
        if isinstance(value, dict):
            flags = {k: v for k, v in value.items() if k != "label"}
            label = label or value.get("label") or _label(flags.get(axis, "-".join(f"{k}{v}" for k, v in flags.items())))
        else:
            flags = {axis: value}
            label = label or _label(value)
        out.append((_label(label), flags))
    return out


def expand_cells(config: dict, out: Path) -> list[Cell]:
    """Every combination of the grid's values, in file order."""
    axes = [(axis, _axis_values(axis, values)) for axis, values in config["grid"].items()]
    cells = []
    for combo in itertools.product(*(values for _, values in axes)):
        labels = {axis: label for (axis, _), (label, _) in zip(axes, combo)}
        flags = {}
        for _, cell_flags in combo:
            flags.update(cell_flags)
        name = "__".join(labels.values())
        cells.append(Cell(name, labels, flags, folder=out / "cells" / name))
    if len({c.name for c in cells}) != len(cells):
        raise StudyError("two grid cells get the same label; give the values distinct labels (a mapping)")
    if config.get("baseline"):
        bases = {}
        for cell in cells:
            model = {k: v for k, v in {**(config.get("train") or {}), **cell.flags}.items() if k in MODEL_FLAGS}
            bases.setdefault(json.dumps(model, sort_keys=True), model)
        for model in bases.values():
            name = "base_" + _label(model.get("model_name_or_path") or "default") + \
                ("_" + _label(model["template"]) if model.get("template") else "")
            cells.append(Cell(name, {"cell": "untuned base model"}, model, baseline=True,
                              folder=out / "baselines" / name))
    reference = config.get("reference")
    if reference is not None and reference not in {c.name for c in cells}:
        raise StudyError(f"reference: {reference!r} is not a cell; cells: {', '.join(c.name for c in cells)}")
    return cells


def reference_cell(config: dict, cells: list[Cell]) -> str:
    return config.get("reference") or next(c.name for c in cells if not c.baseline)


def _parse(groups, values: dict, where: str):
    try:
        return parse(groups, flag_tokens(values))
    except SystemExit as e:  # argparse has printed which flag is wrong
        raise StudyError(f"{where}: invalid flags {values} (see the error above)") from e


def cell_refs(config: dict, cell) -> dict[str, str]:
    """``{flag: cell name}`` for the flags of ``cell`` that name another cell's fine-tune ("{cell:NAME}")."""
    flags = {**(config.get("train") or {}), **cell.flags}
    return {k: m.group(1) for k, v in flags.items() if isinstance(v, str) for m in [CELL_REF.fullmatch(v)] if m}


def train_flags(config: dict, run: Run) -> dict:
    """The ``uniform_finetune.py`` flags of a run: shared, budget, the cell's, its seed, rate and folder."""
    flags = dict(config.get("train") or {})
    for kind, value in (config.get("budget") or {}).items():
        flags[f"budget_{kind}"] = value
    flags.update(run.cell.flags)
    for key, name in cell_refs(config, run.cell).items():  # that cell's fine-tune at this seed (DPO from SFT)
        flags[key] = str(run.cell.folder.parent / name / f"seed{run.seed}" / "train")
    flags["seed"] = run.seed
    if run.lr is not None:
        flags["learning_rate"] = run.lr
    flags["output_dir"] = str(run.folder / "train")
    return flags


def in_dependency_order(config: dict, cells: list, wanted: set[str]) -> list:
    """The ``wanted`` cells and every cell whose fine-tune they start from ("{cell:NAME}"), each after
    the cells it starts from, otherwise in the study file's order.

    Raises:
        StudyError: a ``{cell:NAME}`` that names no cell, or cells that start from each other in a circle.
    """
    by_name = {c.name: c for c in cells}
    starts_from = {}
    for c in cells:
        refs = list(cell_refs(config, c).values())
        for ref in refs:
            if ref not in by_name:
                raise StudyError(f"cell {c.name}: {{cell:{ref}}} names no cell; cells: {', '.join(by_name)}")
        starts_from[c.name] = refs
    order, placed = [], set()

    def visit(name: str, path: list[str]) -> None:
        if name in path:
            raise StudyError(f"cells start from each other's fine-tunes in a circle: {' -> '.join(path + [name])}")
        if name not in placed:
            for ref in starts_from[name]:
                visit(ref, path + [name])
            placed.add(name)
            order.append(by_name[name])

    for c in cells:
        if c.name in wanted:
            visit(c.name, [])
    return order


def eval_flags(config: dict, run: Run, name: str) -> dict:
    flags = {**config["evaluate"][name], "output_dir": str(run.folder / "eval" / name)}
    if not run.cell.baseline:
        flags["lora_dir"] = str(run.folder / "train")
    return flags


# ---------------------------------------------------------------- the runs of each cell


def _trained(train_dir: Path) -> dict | None:
    """The final metrics of a finished (not interrupted) fine-tune, else None."""
    meta = train_dir / "alpaca_cot.json"
    if not meta.exists():
        return None
    metrics = json.loads(meta.read_text()).get("metrics") or {}
    return None if metrics.get("interrupted") else metrics


def search_runs(config: dict, cell: Cell) -> list[Run]:
    if cell.baseline or not config.get("lr_search"):
        return []
    return [Run(cell, config["seeds"][0], cell.folder / "lr_search" / f"lr{lr:g}", lr=float(lr), search=True)
            for lr in config["lr_search"]]


def chosen_rate(config: dict, cell: Cell) -> float | None:
    """The searched learning rate with the lowest validation loss (None until every search run finished)."""
    losses = {}
    for run in search_runs(config, cell):
        metrics = _trained(run.folder / "train")
        if metrics is None:
            return None
        if metrics.get("eval_loss") is None:
            raise StudyError(f"lr_search needs a validation loss: set train.val_set_size (cell {cell.name})")
        losses[run.lr] = metrics["eval_loss"]
    best = min(losses, key=lambda lr: (losses[lr], lr))
    (cell.folder / "lr_search.json").write_text(json.dumps({"eval_loss": {f"{k:g}": v for k, v in losses.items()},
                                                            "chosen": best}, indent=1))
    return best


def final_runs(config: dict, cell: Cell) -> list[Run]:
    """The runs whose evaluations are reported: one per seed (a baseline: one); [] while a search is unfinished."""
    if cell.baseline:
        return [Run(cell, None, cell.folder)]
    if not config.get("lr_search"):
        return [Run(cell, s, cell.folder / f"seed{s}") for s in config["seeds"]]
    best = chosen_rate(config, cell)
    if best is None:
        return []
    first = next(r for r in search_runs(config, cell) if r.lr == best)
    first.search = False  # the search run at the chosen rate is the first seed's run
    return [first] + [Run(cell, s, cell.folder / f"seed{s}", lr=best) for s in config["seeds"][1:]]


# ---------------------------------------------------------------- running


def _check_unchanged(config: dict, run: Run) -> None:
    """Refuse to mix a run's earlier fine-tune with new training settings."""
    record = run.folder / "cell.json"
    if not run.cell.baseline and record.exists():
        before = json.loads(record.read_text())["train"]
        if before != train_flags(config, run):
            raise StudyError(f"cell {run.cell.name} in {run.folder} was trained with other settings ({before}); "
                             "use another output_dir, or delete that folder to redo it")


def _train(config: dict, run: Run) -> None:
    from .preference import finetune  # --stage sft: train.run; a preference stage: preference.run

    flags = train_flags(config, run)
    record = run.folder / "cell.json"
    if _trained(run.folder / "train") is not None:
        logger.info("[%s] fine-tune already done, skipped", run.id)
        return
    run.folder.mkdir(parents=True, exist_ok=True)
    record.write_text(json.dumps({"name": run.cell.name, "labels": run.cell.labels, "seed": run.seed,
                                  "train": flags}, indent=1))
    if any((run.folder / "train").glob("checkpoint-*")):
        flags = {**flags, "resume_from_checkpoint": "latest"}
        logger.info("[%s] resuming the fine-tune from its last checkpoint", run.id)
    metrics = finetune(*_parse(TRAIN_GROUPS, flags, f"cell {run.cell.name}: train"))
    if metrics.get("interrupted"):
        raise StudyInterrupted(f"fine-tune of {run.id} interrupted (checkpoint saved)")
    states = sorted((run.folder / "train").glob("checkpoint-*/trainer_state.json"),
                    key=lambda p: int(p.parent.name.split("-")[-1]))
    if states:
        history = json.loads(states[-1].read_text()).get("log_history", [])
        (run.folder / "log_history.json").write_text(json.dumps(history))


def _eval_key(args, gen) -> str:
    return content_key({k: v for k, v in asdict(args).items() if k != "judge_api_key"}, asdict(gen))


def _evaluated(config: dict, run: Run, name: str) -> bool:
    args, gen = _parse(EVAL_GROUPS, eval_flags(config, run, name), f"cell {run.cell.name}: evaluate {name}")
    done = Path(args.output_dir) / "study.json"
    return done.exists() and (Path(args.output_dir) / "summary.json").exists() \
        and json.loads(done.read_text()).get("key") == _eval_key(args, gen)


def _evaluate(config: dict, run: Run) -> None:
    generator = None
    for name in config.get("evaluate") or {}:
        if _evaluated(config, run, name):
            logger.info("[%s] %s already evaluated, skipped", run.id, name)
            continue
        args, gen = _parse(EVAL_GROUPS, eval_flags(config, run, name), f"cell {run.cell.name}: evaluate {name}")
        if generator is None:
            from .infer import load_generator

            model = {k: v for k, v in run.cell.flags.items() if k in MODEL_FLAGS} if run.cell.baseline else {}
            generator = load_generator(None if run.cell.baseline else args.lora_dir, model.get("model_name_or_path"),
                                       model.get("model_type"), model.get("template"), model.get("quantization_bit"),
                                       model.get("compute_dtype", "auto"))
        logger.info("[%s] evaluating %s", run.id, name)
        run_evaluation(args, gen, generator=generator)
        (Path(args.output_dir) / "study.json").write_text(json.dumps({"key": _eval_key(args, gen)}))


def _done(config: dict, run: Run) -> tuple[bool, bool]:
    """(trained, every evaluation done) of a run."""
    trained = run.cell.baseline or _trained(run.folder / "train") is not None
    return trained, all(_evaluated(config, run, n) for n in config.get("evaluate") or {})


# ---------------------------------------------------------------- the whole study


def _execute(config: dict, run: Run, command: str) -> None:
    """Train (unless done), evaluate (unless done), then record times, memory and the manifest."""
    from .manifest import write_manifest

    before = _done(config, run)
    if not run.cell.baseline:
        _train(config, run)
    started = time.perf_counter()
    _evaluate(config, run)  # its wall time includes loading the fine-tune, as the estimate's does
    record_file = run.folder / "run.json"
    if before == (True, True) and record_file.exists():
        return
    record = json.loads(record_file.read_text()) if record_file.exists() else {}
    meta = run.folder / "train" / "alpaca_cot.json"
    metrics = (json.loads(meta.read_text()).get("metrics") or {}) if meta.exists() else {}
    eval_seconds = record.get("eval_seconds") if before[1] else round(time.perf_counter() - started, 1)
    run.folder.mkdir(parents=True, exist_ok=True)
    record_file.write_text(json.dumps({
        "seed": run.seed, "learning_rate": run.lr, "search": run.search, "train_seconds": metrics.get("wall_seconds"),
        "eval_seconds": eval_seconds, "peak_rss_mib": cost.peak_memory_mib(),
        "finished": time.strftime("%Y-%m-%d %H:%M:%S")}, indent=1))
    seed = "" if run.cell.baseline else f" --seed {run.seed}"
    write_manifest(run.folder, f"{command} --cell {run.cell.name}{seed} --output_dir {config['output_dir']}_rerun",
                   {k: v for k, v in config.items() if k not in ("grid", "smoke")},
                   None if run.cell.baseline else train_flags(config, run),
                   {n: eval_flags(config, run, n) for n in config.get("evaluate") or {}})


def _check_flags(config: dict, cells: list[Cell]) -> None:
    """Every run's flags parse, budgets fit, and no finished run would be mixed with new settings."""
    from .budget import check_budget

    for cell in cells:
        runs = search_runs(config, cell) + ([] if config.get("lr_search") and not cell.baseline else
                                            final_runs(config, cell))
        for run in runs or [Run(cell, config["seeds"][0], cell.folder)]:
            if not cell.baseline:
                model_args, data_args, peft_args, ft_args, _ = _parse(TRAIN_GROUPS, train_flags(config, run),
                                                                      f"cell {cell.name}: train")
                try:
                    check_budget(data_args, ft_args)
                except ValueError as e:
                    raise StudyError(f"cell {cell.name}: {e} (in the study file: train, budget or the grid)") from e
                if config.get("lr_search") and not data_args.val_set_size:
                    raise StudyError(f"cell {cell.name}: lr_search chooses on the validation loss; set "
                                     "train.val_set_size (e.g. 50)")
                _check_unchanged(config, run)
            for name in config.get("evaluate") or {}:
                _parse(EVAL_GROUPS, eval_flags(config, run, name), f"cell {cell.name}: evaluate {name}")


def run_study(path: str, overrides: list[str] = (), smoke: bool = False, report_only: bool = False,
              dry_run: bool = False, estimate_only: bool = False, cell: str | None = None,
              seed: int | None = None) -> Path:
    """Run (or resume) the study at ``path``; returns the output directory.

    ``cell``/``seed`` run one cell (one seed of it) alone; ``estimate_only`` prints the cost
    estimate and stops; ``report_only`` rebuilds the report; ``dry_run`` checks every flag.
    """
    from .study_checks import compare_runs, contamination, format_estimate, match_params, study_estimate

    config = load_study(path, overrides, smoke)
    out = Path(config["output_dir"])
    cells = expand_cells(config, out)
    reference = reference_cell(config, cells)
    if cell is not None and cell not in {c.name for c in cells}:
        raise StudyError(f"--cell {cell}: no such cell; cells: {', '.join(c.name for c in cells)}")
    if seed is not None and seed not in config["seeds"]:
        raise StudyError(f"--seed {seed}: the study's seeds are {config['seeds']}")
    try:
        matched = match_params(config, cells, reference)
    except ValueError as e:
        raise StudyError(str(e)) from e
    _check_flags(config, cells)
    # --cell NAME also runs (or finds finished) the cells NAME starts from, first
    chosen = in_dependency_order(config, cells, {c.name for c in cells} if cell is None else {cell})
    if dry_run:
        for c in cells:
            print(f"{c.name}: {json.dumps(c.flags, ensure_ascii=False)}")
        return out
    out.mkdir(parents=True, exist_ok=True)
    (out / "study.resolved.json").write_text(json.dumps(config, indent=1, ensure_ascii=False, default=str))
    command = "python study.py " + path + (" --smoke" if smoke else "") + "".join(
        f" --set {o}" for o in overrides if not o.startswith("output_dir="))
    context = {"reference": reference, "matched": matched, "contamination": [], "command": command}
    if not report_only:
        context["contamination"] = contamination(config, cells, out)
        plan = []
        for c in chosen:
            searched = search_runs(config, c)
            plan += searched + [r for r in final_runs(config, c) if (seed is None or r.seed in (seed, None))
                                and r.folder not in {s.folder for s in searched}]
        later = {c.name: (search_runs(config, c)[0], len(config["seeds"]) - 1 if seed is None else 1)
                 for c in chosen if search_runs(config, c) and not final_runs(config, c)}
        print(format_estimate(study_estimate(config, plan, out, later)), flush=True)
        if estimate_only:
            return out
    else:
        context["contamination"] = contamination(config, cells, out) if (out / "contamination.json").exists() else []
    try:
        for n, c in enumerate([] if report_only else chosen, 1):
            runs = search_runs(config, c)
            for run in runs:
                logger.info("== cell %d/%d: %s (learning-rate search) ==", n, len(chosen), run.id)
                _execute(config, run, command)
            for run in final_runs(config, c):
                if seed is not None and run.seed not in (seed, None):
                    continue
                logger.info("== cell %d/%d: %s ==", n, len(chosen), run.id)
                _execute(config, run, command)
                write_report(config, cells, out, context, with_plots=False)
    finally:  # also when stopped: the report shows every finished run
        write_report(config, cells, out, context, redraw=report_only)
    original = Path(load_study(path, [o for o in overrides if not o.startswith("output_dir=")], smoke)["output_dir"])
    if cell is not None and original.resolve() != out.resolve():
        for run in final_runs(config, next(c for c in cells if c.name == cell)):
            if seed is None or run.seed in (seed, None):
                twin = original / run.folder.relative_to(out)
                if (twin / "run.json").exists():
                    print(f"{run.id} against {twin}:\n  " + "\n  ".join(
                        compare_runs(twin, run.folder, list(config.get("evaluate") or {}))))
    return out
