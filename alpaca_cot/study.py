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
    smoke: {train.max_steps: 2}    # --smoke applies these overrides (dotted keys) for a quick check

Every cell fine-tunes into ``OUT/cells/<cell>/train`` and evaluates into
``OUT/cells/<cell>/eval/<name>``. Finished work is found on disk and skipped, so a study that
was stopped (Ctrl-C, a crash) resumes where it stopped: an interrupted fine-tune continues from
its last checkpoint. A cell whose training settings changed is refused rather than mixed up;
changed evaluation settings are simply re-evaluated (cached generations are reused).
``OUT/results.md`` and ``OUT/plots/`` are rewritten after every cell.
"""

from __future__ import annotations

import itertools
import json
import logging
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

import yaml

from .cli_args import DataArguments, FinetuneArguments, ModelArguments, PeftArguments, flag_tokens, parse
from .evaluation.cache import content_key
from .evaluation.report import write_report
from .evaluation.runner import EvalGenerationArguments, EvaluateArguments, run_evaluation

logger = logging.getLogger("alpaca_cot")
KEYS = {"name", "description", "output_dir", "grid", "train", "evaluate", "baseline", "smoke"}
TRAIN_GROUPS = (ModelArguments, DataArguments, PeftArguments, FinetuneArguments)
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
        config["output_dir"] = str(config.get("output_dir") or f"studies_out/{Path(path).stem}") + "_smoke"
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep:
            raise StudyError(f"--set {item}: use KEY=VALUE (e.g. train.max_steps=10)")
        set_dotted(config, key.strip(), yaml.safe_load(value))
    config.setdefault("name", Path(path).stem)
    config.setdefault("output_dir", f"studies_out/{config['name']}")
    if not config.get("grid") or not isinstance(config["grid"], dict):
        raise StudyError(f"{path}: 'grid' must map at least one flag to its values")
    if not isinstance(config.get("evaluate") or {}, dict):
        raise StudyError(f"{path}: 'evaluate' maps a name to evaluate.py flags")
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
    return cells


def _parse(groups, values: dict, where: str):
    try:
        return parse(groups, flag_tokens(values))
    except SystemExit as e:  # argparse has printed which flag is wrong
        raise StudyError(f"{where}: invalid flags {values} (see the error above)") from e


def train_flags(config: dict, cell: Cell) -> dict:
    return {**(config.get("train") or {}), **cell.flags, "output_dir": str(cell.folder / "train")}


def eval_flags(config: dict, cell: Cell, name: str) -> dict:
    flags = {**config["evaluate"][name], "output_dir": str(cell.folder / "eval" / name)}
    if not cell.baseline:
        flags["lora_dir"] = str(cell.folder / "train")
    return flags


# ---------------------------------------------------------------- running


def _trained(train_dir: Path) -> dict | None:
    """The final metrics of a finished (not interrupted) fine-tune, else None."""
    meta = train_dir / "alpaca_cot.json"
    if not meta.exists():
        return None
    metrics = json.loads(meta.read_text()).get("metrics") or {}
    return None if metrics.get("interrupted") else metrics


def _check_unchanged(config: dict, cell: Cell) -> None:
    """Refuse to mix a cell's earlier fine-tune with new training settings."""
    record = cell.folder / "cell.json"
    if not cell.baseline and record.exists():
        before = json.loads(record.read_text())["train"]
        if before != train_flags(config, cell):
            raise StudyError(f"cell {cell.name} in {cell.folder} was trained with other settings ({before}); "
                             "use another output_dir, or delete that folder to redo it")


def _train(config: dict, cell: Cell) -> None:
    from .train import run

    flags = train_flags(config, cell)
    record = cell.folder / "cell.json"
    if _trained(cell.folder / "train") is not None:
        logger.info("[%s] fine-tune already done, skipped", cell.name)
        return
    cell.folder.mkdir(parents=True, exist_ok=True)
    record.write_text(json.dumps({"name": cell.name, "labels": cell.labels, "train": flags}, indent=1))
    if any((cell.folder / "train").glob("checkpoint-*")):
        flags = {**flags, "resume_from_checkpoint": "latest"}
        logger.info("[%s] resuming the fine-tune from its last checkpoint", cell.name)
    metrics = run(*_parse(TRAIN_GROUPS, flags, f"cell {cell.name}: train"))
    if metrics.get("interrupted"):
        raise StudyInterrupted(f"fine-tune of cell {cell.name} interrupted (checkpoint saved)")
    states = sorted((cell.folder / "train").glob("checkpoint-*/trainer_state.json"),
                    key=lambda p: int(p.parent.name.split("-")[-1]))
    if states:
        history = json.loads(states[-1].read_text()).get("log_history", [])
        (cell.folder / "log_history.json").write_text(json.dumps(history))


def _evaluate(config: dict, cell: Cell) -> None:
    generator = None
    for name in config.get("evaluate") or {}:
        args, gen = _parse(EVAL_GROUPS, eval_flags(config, cell, name), f"cell {cell.name}: evaluate {name}")
        key = content_key({k: v for k, v in asdict(args).items() if k != "judge_api_key"}, asdict(gen))
        done = Path(args.output_dir) / "study.json"
        if done.exists() and (Path(args.output_dir) / "summary.json").exists() \
                and json.loads(done.read_text()).get("key") == key:
            logger.info("[%s] %s already evaluated, skipped", cell.name, name)
            continue
        if generator is None:
            from .infer import load_generator

            model = {k: v for k, v in cell.flags.items() if k in MODEL_FLAGS} if cell.baseline else {}
            generator = load_generator(None if cell.baseline else args.lora_dir, model.get("model_name_or_path"),
                                       model.get("model_type"), model.get("template"), model.get("quantization_bit"),
                                       model.get("compute_dtype", "auto"))
        logger.info("[%s] evaluating %s", cell.name, name)
        run_evaluation(args, gen, generator=generator)
        done.write_text(json.dumps({"key": key}))


def run_study(path: str, overrides: list[str] = (), smoke: bool = False, report_only: bool = False,
              dry_run: bool = False) -> Path:
    """Run (or resume) every cell of the study at ``path``; returns the output directory."""
    config = load_study(path, overrides, smoke)
    out = Path(config["output_dir"])
    cells = expand_cells(config, out)
    for cell in cells:  # every flag is checked before anything runs
        if not cell.baseline:
            _parse(TRAIN_GROUPS, train_flags(config, cell), f"cell {cell.name}: train")
            _check_unchanged(config, cell)
        for name in config.get("evaluate") or {}:
            _parse(EVAL_GROUPS, eval_flags(config, cell, name), f"cell {cell.name}: evaluate {name}")
    if dry_run:
        for cell in cells:
            print(f"{cell.name}: {json.dumps(cell.flags, ensure_ascii=False)}")
        return out
    out.mkdir(parents=True, exist_ok=True)
    (out / "study.resolved.json").write_text(json.dumps(config, indent=1, ensure_ascii=False, default=str))
    command = "python study.py " + path + (" --smoke" if smoke else "") + "".join(f" --set {o}" for o in overrides)
    try:
        for n, cell in enumerate([] if report_only else cells, 1):
            logger.info("== cell %d/%d: %s ==", n, len(cells), cell.name)
            if not cell.baseline:
                _train(config, cell)
            _evaluate(config, cell)
            write_report(config, cells, out, command, with_plots=False)
    finally:  # also when stopped: the report shows every finished cell
        write_report(config, cells, out, command, redraw=report_only)
    return out
