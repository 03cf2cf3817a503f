"""Preference tuning after instruction tuning: DPO, ORPO, SimPO, KTO and reward models, on TRL's trainers.

``uniform_finetune.py --stage dpo|orpo|simpo|kto|rm`` comes here (``--stage sft``, the default, is
``train.run``). This module is an adapter: model loading, PEFT wrapping, the Ctrl-C and plot callbacks,
the final save and the metadata are ``train.py``'s; the losses, reference handling and metrics are TRL's
(``trl`` >= 1.16: ``DPOTrainer``, ``KTOTrainer``, ``RewardTrainer``; ``trl.experimental``'s
``ORPOTrainer`` and ``CPOTrainer``, whose ``loss_type="simpo"`` with ``cpo_alpha=0`` is SimPO).

Data is tokenized by our renderer (``alpaca_cot.pairs``), never by TRL: each trainer is handed the ids
through a small subclass that skips its own text processing.

The reference model of DPO and KTO, in order of preference:

- ``--ref_model PATH``: that model, loaded like the base (a second model in memory);
- a new adapter (every ``--peft_type`` but full/freeze): the policy with its adapter disabled, so no
  second copy (TRL passes ``peft_config`` through ``get_peft_model`` and disables the adapter for the
  reference pass);
- ``--lora_dir SFT --sft_adapter train``: the SFT adapter trains further and TRL keeps a frozen copy of
  it, as an adapter named "ref", as the reference (the SFT model; an adapter's size, not a model's);
- ``--lora_dir SFT --sft_adapter merge``: the SFT adapter is merged into the base first (saved in
  ``OUTPUT_DIR/sft_merged``, which then is the fine-tune's base) and a new adapter trains on top, so the
  reference (adapter disabled) is the SFT model;
- ``full``/``freeze``: a separate copy of the starting model (its own weights change).
"""

from __future__ import annotations

import json
import logging
import random
import time
from pathlib import Path

import torch
from transformers import TrainerCallback

from .budget import RunTotals
from .cli_args import DataArguments, FinetuneArguments, ModelArguments, PeftArguments, PreferenceArguments
from .data.preference import load_preference_data
from .data.schema import DataError
from .guards import FiniteGuard
from .loader import load_model, load_tokenizer, resolve_dtype, resolve_spec, upcast_trainable
from .metadata import METADATA_FILE
from .pairs import encode_pairs, encode_unpaired
from .peft_methods import get_method, method_callbacks, method_params, resolve_method_targets
from .preference_trl import stage_config, trainer_class
from .templates import get_template
from .tokenize import TruncationReport
from .train import (ConfigError, InterruptCallback, LossPlotCallback, _interrupted, _versions, default_output_dir,
                    interrupt_handler, log_trainable, peft_config_for, prepare_base, resolve_checkpoint,
                    save_final, setup_logging, split_records, training_arguments, validate)

logger = logging.getLogger("alpaca_cot")

# Flags (PreferenceArguments fields) each stage uses; any other one given is refused, not ignored.
STAGE_FLAGS = {
    "dpo": {"pref_loss", "pref_beta", "pref_label_smoothing", "ref_model"},
    "orpo": {"pref_beta"},
    "simpo": {"pref_beta", "pref_label_smoothing", "simpo_gamma"},
    "kto": {"pref_beta", "kto_desirable_weight", "kto_undesirable_weight", "ref_model"},
    "rm": set(),
}
OPTIONAL_FLAGS = ("pref_loss", "pref_beta", "pref_label_smoothing", "simpo_gamma", "kto_desirable_weight",
                  "kto_undesirable_weight", "ref_model", "lora_dir")
DEFAULT_BETA = {"dpo": 0.1, "kto": 0.1, "orpo": 0.1, "simpo": 2.0}
DEFAULT_SIMPO_GAMMA = 0.5
PROMPT_TOKEN_METHODS = ("prompt", "p_tuning")  # PEFT prepends virtual tokens to the sequence
REWARD_MODEL_CLASS = "AutoModelForSequenceClassification"


def finetune(model_args: ModelArguments, data_args: DataArguments, peft_args: PeftArguments,
             ft_args: FinetuneArguments, pref_args: PreferenceArguments | None = None, callbacks: tuple = ()) -> dict:
    """Run the stage ``pref_args.stage`` asks for: instruction tuning (``train.run``) or a preference stage.

    ``callbacks``: extra ``TrainerCallback``s for the Trainer (e.g. the study's cost probe).
    """
    pref_args = pref_args or PreferenceArguments()
    if pref_args.stage == "sft":
        given = [f"--{name}" for name in OPTIONAL_FLAGS if getattr(pref_args, name) is not None]
        if pref_args.sft_adapter != "train":
            given.append("--sft_adapter")
        if given:
            raise ConfigError(f"{', '.join(given)} belong to the preference stages; add --stage dpo (orpo, simpo, "
                              "kto, rm) or drop them")
        from .train import run as run_sft

        return run_sft(model_args, data_args, peft_args, ft_args, callbacks=callbacks)
    return run(model_args, data_args, peft_args, ft_args, pref_args, callbacks=callbacks)


# ---------------------------------------------------------------- settings


def validate_stage(pref: PreferenceArguments, peft_args: PeftArguments, data_args: DataArguments) -> None:
    """Checks of the preference flags that need no model and no data; ConfigError saying what to change."""
    stage = pref.stage
    if stage not in STAGE_FLAGS:
        raise ConfigError(f"--stage {stage}: unknown; use one of sft, {', '.join(STAGE_FLAGS)}")
    unused = [f"--{n}" for n in OPTIONAL_FLAGS if n != "lora_dir" and getattr(pref, n) is not None
              and n not in STAGE_FLAGS[stage]]
    if unused:
        users = {f: [s for s, flags in STAGE_FLAGS.items() if f[2:] in flags] for f in unused}
        raise ConfigError(f"--stage {stage} does not use {', '.join(unused)} (" + "; ".join(
            f"{f}: {', '.join(s) or 'no stage'}" for f, s in users.items()) + "); drop it")
    if pref.sft_adapter != "train" and not pref.lora_dir:
        raise ConfigError("--sft_adapter says what to do with the adapter of --lora_dir; give --lora_dir SFT_OUTPUT")
    if pref.pref_beta is not None and pref.pref_beta <= 0:
        raise ConfigError(f"--pref_beta must be > 0, got {pref.pref_beta:g}")
    if pref.pref_label_smoothing is not None:
        if not 0 <= pref.pref_label_smoothing < 0.5:
            raise ConfigError(f"--pref_label_smoothing is a share of flipped labels in [0, 0.5), got "
                              f"{pref.pref_label_smoothing:g}")
        if stage == "dpo" and (pref.pref_loss or "sigmoid") not in ("sigmoid", "robust"):
            raise ConfigError(f"--pref_loss {pref.pref_loss} has no label smoothing (sigmoid and robust have); "
                              "drop --pref_label_smoothing")
    for name in ("kto_desirable_weight", "kto_undesirable_weight"):
        if getattr(pref, name) is not None and getattr(pref, name) <= 0:
            raise ConfigError(f"--{name} must be > 0")
    if stage in ("orpo", "simpo") and peft_args.peft_type in PROMPT_TOKEN_METHODS:
        raise ConfigError(f"--stage {stage} with --peft_type {peft_args.peft_type}: TRL's ORPO/CPO trainers match "
                          "logits to labels position by position, and PEFT puts virtual tokens in front of the "
                          "sequence; use --peft_type prefix (or lora, ...), or --stage dpo")
    if data_args.packing:
        raise ConfigError(f"--stage {stage} pads each pair (chosen and rejected share the batch); drop --packing")
    if data_args.group_by_length:
        raise ConfigError(f"--stage {stage} does not group by length; drop --group_by_length")
    sft_only = [flag for flag, given in (
        ("--mix_weights", data_args.mix_weights is not None), ("--streaming", data_args.streaming),
        ("--decontaminate", data_args.decontaminate is not None),
        ("--preprocessing_num_workers", data_args.preprocessing_num_workers is not None)) if given]
    if sft_only:
        raise ConfigError(f"--stage {stage} does not use {', '.join(sft_only)}: they belong to the SFT data path; "
                          "preference pairs are read whole and tokenized in one process; drop "
                          + ("it" if len(sft_only) == 1 else "them"))
    if stage == "rm" and pref.lora_dir and pref.sft_adapter == "train" and _has_adapter(pref.lora_dir):
        raise ConfigError("--stage rm needs a new adapter beside its score head; start from --lora_dir with "
                          "--sft_adapter merge")


def _has_adapter(folder: str) -> bool:
    return (Path(folder) / "adapter_config.json").exists()


def stage_params(pref: PreferenceArguments) -> dict:
    """The stage's loss settings with defaults filled in (what the metadata records)."""
    stage = pref.stage
    params: dict = {}
    if stage in DEFAULT_BETA:
        params["beta"] = pref.pref_beta if pref.pref_beta is not None else DEFAULT_BETA[stage]
    if stage == "dpo":
        params["loss"] = pref.pref_loss or "sigmoid"
        params["label_smoothing"] = pref.pref_label_smoothing or 0.0
    if stage == "simpo":
        params["gamma"] = pref.simpo_gamma if pref.simpo_gamma is not None else DEFAULT_SIMPO_GAMMA
        params["label_smoothing"] = pref.pref_label_smoothing or 0.0
    if stage == "kto":
        params["desirable_weight"] = pref.kto_desirable_weight or 1.0
        params["undesirable_weight"] = pref.kto_undesirable_weight or 1.0
    return params


# ---------------------------------------------------------------- where the stage starts


def _starting_point(model_args: ModelArguments, peft_args: PeftArguments, pref: PreferenceArguments,
                    output_dir: str) -> dict:
    """Base checkpoint, family, template and the SFT adapter to train further (if any).

    Returns ``{"base", "model_type", "template", "adapter", "merged_from", "sft_meta"}``.
    """
    start = {"base": model_args.model_name_or_path, "model_type": model_args.model_type,
             "template": model_args.template, "adapter": None, "merged_from": None, "sft_meta": None}
    if not pref.lora_dir:
        return start
    from .infer import _pick_base, fine_tune_metadata

    try:
        meta = fine_tune_metadata(pref.lora_dir)
    except FileNotFoundError as e:
        raise ConfigError(str(e)) from e
    start.update(model_type=model_args.model_type or meta.get("model_type"),
                 template=model_args.template or meta.get("template"), sft_meta=meta)
    if not _has_adapter(pref.lora_dir):  # a full fine-tune or a merged model: the folder is the model
        start["base"] = model_args.model_name_or_path or pref.lora_dir
        return start
    start["base"] = _pick_base(model_args.model_name_or_path, meta)
    if pref.sft_adapter == "merge":
        merged = Path(output_dir) / "sft_merged"
        done = merged / METADATA_FILE
        if not (done.exists() and json.loads(done.read_text()).get("merged_from") == str(Path(pref.lora_dir))):
            from .merge import MergeError, merge

            logger.info("merging the SFT adapter of %s into its base (into %s)", pref.lora_dir, merged)
            try:
                merge(pref.lora_dir, str(merged), model_name_or_path=model_args.model_name_or_path,
                      model_type=start["model_type"], overwrite=True)
            except MergeError as e:
                raise ConfigError(f"--sft_adapter merge: {e}; use --sft_adapter train") from e
        start.update(base=str(merged.resolve()), merged_from=pref.lora_dir)
        return start
    sft_method = meta.get("peft_type")
    if peft_args.peft_type not in ("lora", sft_method):  # "lora" is the flag's default: not a choice
        raise ConfigError(f"--peft_type {peft_args.peft_type}: --lora_dir {pref.lora_dir} holds a {sft_method} "
                          "adapter, which trains further with --sft_adapter train; drop --peft_type, or use "
                          "--sft_adapter merge for a new adapter")
    shaped = [f"--{f}" for f, v in vars(peft_args).items() if f not in ("peft_type",) and v is not None]
    if shaped:
        raise ConfigError(f"{', '.join(shaped)}: the adapter of --lora_dir {pref.lora_dir} keeps its own settings "
                          "when it trains further; drop them, or use --sft_adapter merge for a new adapter")
    start["adapter"] = pref.lora_dir
    return start


# ---------------------------------------------------------------- data


def prepare_preference_data(data_args: DataArguments, stage: str, seed: int, tokenizer, template):
    """Tokenized (train, validation or None) lists for ``stage`` and the training split's truncation report."""
    unpaired = stage == "kto"
    records, load_report = load_preference_data(data_args.data, unpaired=unpaired, seed=seed,
                                                skip_invalid=data_args.skip_invalid)
    if not records:
        raise DataError(f"--data {' '.join(data_args.data)}: no records to train on")
    if load_report.skipped:
        logger.warning("skipped %d invalid records (first: %s)", len(load_report.skipped), load_report.skipped[0])
    train_records, val_records = split_records(records, data_args.val_set_size, seed)
    encode = encode_unpaired if unpaired else encode_pairs
    report = TruncationReport()
    train_rows = encode(train_records, tokenizer, template, data_args.cutoff_len, report)
    val_report = TruncationReport()
    val_rows = encode(val_records, tokenizer, template, data_args.cutoff_len, val_report) if val_records else None
    what = "labelled records" if unpaired else "pairs"
    logger.info("preference data (%s): %s", what, report.summary(data_args.cutoff_len))
    for name, part in (("training", report), ("validation", val_report)):
        if part.dropped:
            logger.warning("%d %s %s dropped: a response kept no token besides EOS, or chosen and rejected became "
                           "identical, after truncation (record indices %s...); raise --cutoff_len to keep them",
                           part.dropped, name, what, part.dropped_examples)
    if not train_rows:
        raise ConfigError(f"no training sample survives truncation at --cutoff_len {data_args.cutoff_len}; raise it")
    if val_records and not val_rows:
        raise ConfigError(f"every validation sample was dropped at --cutoff_len {data_args.cutoff_len}; raise it "
                          "or lower --val_set_size")
    if unpaired:
        # KTO estimates its KL term from each batch's rows paired with their neighbours' completions, and its
        # sampler is sequential: shuffle once (seeded) so a pair's two halves rarely share a batch.
        random.Random(seed).shuffle(train_rows)
        desirable = sum(r["label"] for r in train_rows)
        logger.info("kto: %d desirable and %d undesirable training records", desirable, len(train_rows) - desirable)
    if stage == "rm":  # the reward model reads whole sequences
        train_rows, val_rows = _whole(train_rows), _whole(val_rows) if val_rows else None
    return train_rows, val_rows, report, val_report


def _whole(rows: list[dict]) -> list[dict]:
    return [{"chosen_ids": r["prompt_ids"] + r["chosen_ids"], "rejected_ids": r["prompt_ids"] + r["rejected_ids"]}
            for r in rows]


# ---------------------------------------------------------------- the run


def run(model_args: ModelArguments, data_args: DataArguments, peft_args: PeftArguments,
        ft_args: FinetuneArguments, pref: PreferenceArguments, callbacks: tuple = ()) -> dict:
    """Train the preference stage ``pref.stage`` and write the output directory; returns the final metrics."""
    setup_logging()
    started = time.time()
    stage = pref.stage
    validate_stage(pref, peft_args, data_args)
    budgets = [f"--{n}" for n in ("budget_tokens", "budget_flops") if getattr(ft_args, n, None)]
    if budgets:
        raise ConfigError(f"{', '.join(budgets)} sizes instruction tuning; give --stage {stage} --max_steps instead")
    output_dir = ft_args.output_dir or default_output_dir(model_args, data_args, peft_args, ft_args) + f"_{stage}"
    start = _starting_point(model_args, peft_args, pref, output_dir)
    if start["adapter"]:
        peft_args.peft_type = start["sft_meta"].get("peft_type") or peft_args.peft_type
    validate(model_args, data_args, peft_args, ft_args)
    checkpoint = resolve_checkpoint(ft_args.resume_from_checkpoint, output_dir)
    method = get_method(peft_args.peft_type)
    params = (start["sft_meta"].get("peft_params") or {}) if start["adapter"] else method_params(peft_args)
    spec, model_path = resolve_spec(start["model_type"], start["base"], model_args.trust_remote_code)
    template = get_template(start["template"] or spec.template)
    settings = stage_params(pref)

    tokenizer = load_tokenizer(model_path, spec)
    train_rows, val_rows, report, val_report = prepare_preference_data(data_args, stage, ft_args.seed, tokenizer,
                                                                       template)
    dtype = resolve_dtype(model_args.compute_dtype,
                          training=not model_args.quantization_bit and method.build is not None)
    from datasets import Dataset
    from transformers import set_seed

    set_seed(ft_args.seed)  # adapter (and score head) initialisation depends on the seed only
    model, peft_config, targets = _policy(model_path, spec, method, params, stage, model_args, peft_args, ft_args,
                                          start, tokenizer, dtype)
    ref_model, reference = _reference(stage, pref, method, start, model_path, spec, model_args, dtype)
    trainer_cls, config_cls = trainer_class(stage)
    has_eval = val_rows is not None and not (model_args.quantization_bit == 4 and not torch.cuda.is_available())
    args = training_arguments(ft_args, output_dir, dtype, has_eval=has_eval, args_class=config_cls,
                              **stage_config(stage, settings, data_args.cutoff_len))
    kwargs = {"ref_model": ref_model} if stage in ("dpo", "kto") else {}
    if peft_config is not None:
        kwargs["peft_config"] = peft_config
    set_seed(ft_args.seed)
    totals = RunTotals()  # train_loss over every step when resumed
    trainer = trainer_cls(
        model=model, args=args, train_dataset=Dataset.from_list(train_rows),
        eval_dataset=Dataset.from_list(val_rows) if has_eval else None, processing_class=tokenizer,
        callbacks=[InterruptCallback(), LossPlotCallback(output_dir), RewardPlotCallback(output_dir),
                   FiniteGuard(output_dir), *method_callbacks(method, peft_args), totals, *callbacks], **kwargs)
    totals.trainer = trainer
    upcast_trainable(trainer.model)  # TRL casts a quantized base's adapter to bf16; ours trains in fp32
    log_trainable(trainer.model)
    logger.info("%s: %s; reference: %s", stage, settings, reference)
    if checkpoint:
        totals.restore(checkpoint, trainer.args.process_index)
        state = json.loads((Path(checkpoint) / "trainer_state.json").read_text())
        logger.info("resuming from %s at step %d (optimizer, scheduler and data position restored)",
                    checkpoint, state["global_step"])
    with interrupt_handler(trainer):
        result = trainer.train(resume_from_checkpoint=checkpoint)
    metrics = dict(result.metrics)
    metrics["train_loss"] = totals.whole_run_loss(metrics.get("train_loss"), trainer.state.global_step)
    if has_eval:
        metrics.update(trainer.evaluate())
    last = next((h for h in reversed(trainer.state.log_history) if "loss" in h), {})
    metrics.update({k: v for k, v in last.items() if "/" in k or k in ("accuracy", "margin")})
    metrics.update(train_samples=len(train_rows), truncated=report.truncated, dropped=report.dropped,
                   val_dropped=val_report.dropped, global_step=trainer.state.global_step,
                   interrupted=_interrupted(trainer), wall_seconds=round(time.time() - started, 1))
    if trainer.is_world_process_zero():
        model_out = trainer.model
        if hasattr(model_out, "peft_config") and "ref" in model_out.peft_config:
            model_out.delete_adapter("ref")  # TRL's frozen copy of the SFT adapter: the reference, not the result
        meta = {"base_model": start["base"] or spec.default_checkpoint, "base_model_path": model_path,
                "model_type": spec.name, "template": template.name, "peft_type": method.name,
                "peft_params": params, "target_modules": targets, "quantization_bit": model_args.quantization_bit,
                "data": data_args.data, "cutoff_len": data_args.cutoff_len, "stage": stage,
                "stage_params": settings, "reference": reference if stage in ("dpo", "kto") else None,
                "started_from": {"lora_dir": pref.lora_dir, "sft_adapter": pref.sft_adapter,
                                 "merged_from": start["merged_from"]} if pref.lora_dir else None,
                "model_class": REWARD_MODEL_CLASS if stage == "rm" else None, "metrics": metrics,
                "args": {k: v for a in (model_args, data_args, peft_args, ft_args, pref) for k, v in vars(a).items()},
                "versions": {**_versions(), "trl": _trl_version()}}
        save_final(trainer, tokenizer, output_dir, meta)
        logger.info("saved the %s stage (%s) to %s", stage, method.name, output_dir)
    return metrics


def _trl_version() -> str:
    import trl

    return trl.__version__


def _policy(model_path, spec, method, params, stage, model_args, peft_args, ft_args, start, tokenizer, dtype):
    """The model to train, the PEFT config TRL should apply (DPO/KTO with a new adapter) and the targets."""
    from peft import PeftModel, get_peft_model

    extra = {"auto_class": REWARD_MODEL_CLASS, "num_labels": 1} if stage == "rm" else {}
    try:
        model = load_model(model_path, spec, quantization_bit=model_args.quantization_bit, dtype=dtype, **extra)
    except ValueError as e:  # e.g. a family without a sequence-classification class
        raise ConfigError(f"--stage {stage}: cannot load {model_path} as {extra.get('auto_class', 'a causal LM')}: "
                          f"{e}") from e
    model.config.use_cache = False
    if stage == "rm":  # the reward is read at the last token that is not padding
        model.config.pad_token_id = tokenizer.pad_token_id
    model = prepare_base(model, model_args, ft_args)
    if start["adapter"]:  # the SFT adapter trains further
        model = PeftModel.from_pretrained(model, start["adapter"], is_trainable=True)
        return model, None, (start["sft_meta"] or {}).get("target_modules")
    try:
        targets = resolve_method_targets(method, model, spec, peft_args.lora_target_modules)
    except ValueError as e:
        raise ConfigError(str(e)) from e
    if method.build is None:  # full / freeze: the weights themselves train
        try:
            method.trainable(model, params)
        except ValueError as e:
            raise ConfigError(str(e)) from e
        if stage == "rm":
            model.score.requires_grad_(True)  # the new scalar head always trains
        return model, None, targets
    config = peft_config_for(method, params, targets, model)
    if stage in ("dpo", "kto"):
        return model, config, targets  # TRL wraps it and disables the adapter for the reference pass
    if stage == "rm":
        from peft import TaskType

        config.task_type = TaskType.SEQ_CLS  # PEFT then also trains (and saves) the new score head
    return get_peft_model(model, config), None, targets


def _reference(stage, pref, method, start, model_path, spec, model_args, dtype):
    """``(ref_model or None, description)`` for DPO/KTO (see the module docstring)."""
    if stage not in ("dpo", "kto"):
        return None, "none (reference-free)" if stage != "rm" else "none"
    if pref.ref_model:
        ref_spec, ref_path = resolve_spec(None, pref.ref_model, model_args.trust_remote_code)
        ref = load_model(ref_path, ref_spec, quantization_bit=model_args.quantization_bit, dtype=dtype)
        return _frozen(ref), f"--ref_model {pref.ref_model} (a separate model)"
    if method.build is None:
        ref = load_model(model_path, spec, quantization_bit=model_args.quantization_bit, dtype=dtype)
        return _frozen(ref), f"a separate copy of {model_path} ({method.name} trains the weights themselves)"
    if start["adapter"]:
        return None, f"a frozen copy of the SFT adapter of {start['adapter']}"
    if start["merged_from"]:
        return None, f"the base with the SFT adapter of {start['merged_from']} merged in (new adapter disabled)"
    return None, "the base model (adapter disabled)"


def _frozen(model):
    model.config.use_cache = False
    model.requires_grad_(False)
    return model.eval()


# ---------------------------------------------------------------- rewards.png


class RewardPlotCallback(TrainerCallback):
    """Writes ``rewards.png`` beside ``loss.png`` when training ends: reward accuracy and margin, and the
    chosen/rejected log-probabilities (or rewards), as TRL logs them every ``--logging_steps``."""

    def __init__(self, output_dir: str):
        self.output_dir = output_dir

    def on_train_end(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            plot_rewards(state.log_history, Path(self.output_dir) / "rewards.png")


PANELS = ((("rewards/accuracies", "reward accuracy"), ("accuracy", "reward accuracy"),
           ("rewards/margins", "reward margin"), ("margin", "reward margin")),
          (("logps/chosen", "log p(chosen)"), ("logps/rejected", "log p(rejected)"),
           ("rewards/chosen", "reward (chosen)"), ("rewards/rejected", "reward (rejected)")))


def plot_rewards(log_history: list[dict], path: Path) -> bool:
    """Plot the logged preference metrics by step (training, and validation dashed); False if none were logged."""
    import os

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def series(key):
        return [(h["step"], h[key]) for h in log_history if key in h and "step" in h]

    panels = [[(key, label) for key, label in panel if series(key) or series("eval_" + key)] for panel in PANELS]
    panels = [p for p in panels if p]
    if not panels:
        return False
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4), squeeze=False)
    for ax, panel in zip(axes[0], panels):
        for key, label in panel:
            for prefix, style in (("", "-"), ("eval_", "--")):
                points = series(prefix + key)
                if points:
                    ax.plot(*zip(*points), style, marker="o" if len(points) < 30 else None,
                            label=label + (" (validation)" if prefix else ""))
        ax.set_xlabel("optimizer step")
        ax.grid(alpha=0.3)
        ax.legend()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp.png")
    fig.savefig(tmp, dpi=100, bbox_inches="tight")
    plt.close(fig)
    os.replace(tmp, path)
    return True
