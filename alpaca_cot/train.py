"""Fine-tuning: registry model + instruction data + PEFT method -> HF Trainer -> output directory.

``run()`` is what ``uniform_finetune.py`` calls. Settings that cannot work together are refused
before the model loads. The output directory ends up holding the adapter (PEFT format), the
tokenizer, ``loss.png``, resumable ``checkpoint-N`` folders and ``alpaca_cot.json``.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

import torch

from transformers import TrainerCallback

from . import datacache
from .budget import TokenCounter, apply_budget, check_budget, data_totals, source_losses
from .cli_args import DataArguments, FinetuneArguments, ModelArguments, PeftArguments
from .data.schema import DataError
from .guards import FiniteGuard
from .legacy.convert import conversion_info
from .loader import load_model, load_tokenizer, resolve_dtype, resolve_spec, upcast_trainable
from .metadata import METADATA_FILE, write_metadata
from .models import get_spec
from .packing import plan_batching, restore_attention, with_lengths
from .peft_methods import (check_compatible, count_parameters, get_method, method_callbacks, method_params,
                           resolve_method_targets)
from .templates import get_template

logger = logging.getLogger("alpaca_cot")


class ConfigError(ValueError):
    """Settings that cannot work together; the message says what to change."""


def setup_logging() -> None:
    if not logging.getLogger().handlers:
        logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S",
                            level=logging.INFO, stream=sys.stderr)


def default_output_dir(model_args: ModelArguments, data_args: DataArguments, peft_args: PeftArguments,
                       ft_args: FinetuneArguments) -> str:
    """``saved_models/<model>_<data>_<lr>_<peft>`` as the original derived it."""
    model = Path(model_args.model_name_or_path or model_args.model_type or "smollm2-135m-instruct").name
    data = "+".join(Path(d).stem if os.sep in d or os.path.exists(d) else d for d in data_args.data)
    name = re.sub(r"[^A-Za-z0-9_.+:-]+", "-", f"{model}_{data}_{ft_args.learning_rate:g}_{peft_args.peft_type}")
    return str(Path("saved_models") / name.replace(":", "-"))


def split_records(records: list, val_set_size: float, seed: int) -> tuple[list, list]:
    """Seeded split into (train, validation); refuses a validation set as large as the data.

    The draw is ``data.mixing.split_indices``, the one the Arrow data path uses.
    """
    from .data.mixing import split_indices

    try:
        train_idx, val_idx = split_indices(len(records), val_set_size, seed)
    except ValueError as e:
        raise ConfigError(str(e)) from e
    if not val_idx:
        return records, []
    return [records[i] for i in train_idx], [records[i] for i in val_idx]


def resolve_checkpoint(resume: str | None, output_dir: str) -> str | None:
    if not resume:
        return None
    if resume == "latest":
        from transformers.trainer_utils import get_last_checkpoint

        last = get_last_checkpoint(output_dir) if os.path.isdir(output_dir) else None
        if last is None:
            raise ConfigError(f"--resume_from_checkpoint: no checkpoint-N folder in {output_dir} to resume from")
        return last
    if not os.path.isdir(resume):
        raise ConfigError(f"--resume_from_checkpoint {resume}: no such checkpoint folder")
    return resume


def validate(model_args, data_args, peft_args, ft_args) -> None:
    """Checks that need no model and no data, run first."""
    try:  # registry lookups: unknown names are settings errors
        method = get_method(peft_args.peft_type)
        if model_args.model_type:
            get_spec(model_args.model_type)
        if model_args.template:
            get_template(model_args.template)
    except ValueError as e:
        raise ConfigError(str(e)) from e
    if model_args.quantization_bit not in (None, 4, 8):
        raise ConfigError(f"--quantization_bit must be 4 or 8, got {model_args.quantization_bit}")
    try:  # quantization, method-specific flags, gradient checkpointing, the preset file
        check_compatible(method, peft_args, model_args.quantization_bit, ft_args.gradient_checkpointing)
        method_params(peft_args)
    except ValueError as e:
        raise ConfigError(str(e)) from e
    for name in ("per_gpu_train_batch_size", "gradient_accumulation_steps", "logging_steps", "save_steps"):
        if getattr(ft_args, name) < 1:
            raise ConfigError(f"--{name} must be >= 1")
    if data_args.cutoff_len < 2:
        raise ConfigError("--cutoff_len must be >= 2")
    if ft_args.max_steps <= 0 and ft_args.epochs <= 0:
        raise ConfigError("set --epochs > 0 or --max_steps > 0")
    if not 0 <= ft_args.warmup_ratio < 1:
        raise ConfigError("--warmup_ratio must be in [0, 1)")
    if ft_args.learning_rate <= 0:
        raise ConfigError("--learning_rate must be > 0")
    if data_args.streaming:  # an iterable dataset has no length: no epochs, no length-grouped sampler
        if ft_args.max_steps <= 0:
            raise ConfigError("--streaming needs --max_steps (a stream has no length to count epochs by)")
        if data_args.group_by_length:
            raise ConfigError("--group_by_length needs the whole dataset's lengths; it does not work with --streaming")
        if getattr(ft_args, "budget_tokens", None) is not None or getattr(ft_args, "budget_flops", None) is not None:
            raise ConfigError("--budget_tokens/--budget_flops select from the whole training set; not with --streaming")
    try:  # --budget_tokens / --budget_flops / --decontaminate
        check_budget(data_args, ft_args)
    except ValueError as e:
        raise ConfigError(str(e)) from e


def default_workers(n_records: int) -> int:
    """Tokenization processes when --preprocessing_num_workers is not given.

    The fast tokenizer encodes a batch on every core by itself unless TOKENIZERS_PARALLELISM is
    off (``make`` turns it off). bench/preprocess.py, 50k records, 2 cores: with it on, 1 process
    8.8 s and 2 processes 8.9 s; with it off, 1 process 13.1 s and 2 processes 9.3 s.
    """
    if n_records < 5000 or os.environ.get("TOKENIZERS_PARALLELISM", "").lower() not in ("false", "0", "no", "off"):
        return 1
    return max(1, min(4, os.cpu_count() or 1))


MIN_VAL_KEPT = 0.5  # a validation set keeping less than this share of the asked records is refused


def _by_source(dataset) -> dict[str, int]:
    """Samples per ``source`` of a tokenized dataset (counted in Arrow, no Python pass over the rows)."""
    if dataset is None or "source" not in getattr(dataset, "column_names", []) or len(dataset) == 0:
        return {}
    import pyarrow.compute as pc

    column = dataset.data.column("source") if dataset._indices is None else dataset.with_format("arrow")["source"]
    return {str(c["values"]): int(c["counts"]) for c in pc.value_counts(column).to_pylist()}


def report_splits(report, val_report, cutoff_len: int, how: str) -> None:
    """Log both splits the same way (samples, truncated, dropped, by source) and refuse an unusable validation set.

    Raises ConfigError before training when no training sample is left, or when the validation set
    is empty or keeps less than ``MIN_VAL_KEPT`` of the records asked for. A report that is None
    (no validation split; a streamed training set, counted while training reads it) is skipped.
    """
    for name, r in (("training", report), ("validation", val_report)):
        if r is None:
            continue
        logger.info("%s data: %s (%s)", name, r.summary(cutoff_len), how)
        if r.dropped:
            by_source = ", ".join(f"{s} {n}" for s, n in sorted(r.dropped_by_source.items()))
            logger.warning("%s: %d samples had no response token left after truncation and were dropped (record "
                           "indices %s...%s); raise --cutoff_len to keep them", name, r.dropped, r.dropped_examples,
                           f"; by source: {by_source}" if by_source else "")
    if report is not None and report.total - report.dropped == 0:
        raise ConfigError(f"no training sample keeps a response token at --cutoff_len {cutoff_len}; raise it")
    if val_report is not None:
        kept = val_report.total - val_report.dropped
        if kept == 0 or kept < MIN_VAL_KEPT * val_report.total:
            raise ConfigError(
                f"--val_set_size: only {kept} of the {val_report.total} validation records keep a response token at "
                f"--cutoff_len {cutoff_len} ({val_report.dropped} dropped); the validation loss would describe "
                "almost nothing. Raise --cutoff_len, or use --val_set_size 0 to train without a validation set")


def _decontaminate(parts, data_args):
    """Drop the training records that share an n-gram with an evaluation item (``--decontaminate``)."""
    import numpy as np

    from .data.mixing import Part, _concat, digest
    from .data.overlap import check_overlap

    words, chars = data_args.decontaminate_ngrams
    everything, _ = _concat([p.dataset for p in parts], [p.key for p in parts])
    overlap, _ = check_overlap(data_args.decontaminate, everything, words, chars)
    hit = np.zeros(len(everything), dtype=bool)
    hit[list(overlap.records_hit)] = True
    out, start = [], 0
    for p in parts:
        keep = np.flatnonzero(~hit[start:start + len(p.dataset)])
        start += len(p.dataset)
        out.append(p if len(keep) == len(p.dataset)
                   else Part(p.spec, p.dataset.select(keep), digest(p.key, "decontaminate", keep), p.weight))
    logger.warning("--decontaminate: dropped %d of %d training records sharing a %d-word or %d-character "
                   "n-gram with %d of the %d items of %s", len(overlap.records_hit), overlap.records_scanned, words,
                   chars, len(overlap.hits), overlap.items, " ".join(data_args.decontaminate))
    if not sum(len(p.dataset) for p in out):
        raise DataError("--decontaminate dropped every training record")
    return out, len(overlap.records_hit)


def prepare_data(data_args: DataArguments, seed: int, model_path: str, spec, template):
    """The tokenizer, the tokenized (train, validation or None) sets and the training truncation report.

    The data path is Arrow throughout (``data.records``, ``data.mixing``, ``tokenize.tokenize_dataset``):
    files are read and validated once into memory-mapped tables, sampled, split and mixed by
    index, and tokenized by worker processes that write to disk, so memory stays bounded for
    millions of records; every step keeps the ``source`` column. Unchanged data files skip all
    of it (``datacache``). Data errors come before the tokenizer loads. The validation split's
    report is ``report.validation`` (None without one); both splits are logged the same way and
    an unusable validation set is refused (``report_splits``). With ``--streaming`` the training
    set is an IterableDataset tokenized as it is read (``data.streaming``).
    """
    if data_args.streaming:
        return _prepare_streaming(data_args, seed, model_path, spec, template)
    key = datacache.data_key(data_args.data, seed=seed, skip_invalid=data_args.skip_invalid,
                             val_set_size=data_args.val_set_size, model_path=model_path, template=template,
                             cutoff_len=data_args.cutoff_len, mix_weights=data_args.mix_weights)
    key = None if data_args.decontaminate else key  # the index does not know the evaluation sets
    cached = datacache.lookup(key)
    if cached:
        train_set, val_set, report, val_report, skipped = cached
        if skipped:
            logger.warning("skipped %d invalid records (unchanged files; see the first run's log)", skipped)
        tokenizer = load_tokenizer(model_path, spec)
        how = "cached, data files unchanged"
        decontaminated = None
    else:
        from .data.loading import LoadReport
        from .data.mixing import load_parts, mix, split_parts
        from .tokenize import tokenize_dataset

        load_report = LoadReport()
        parts = load_parts(data_args.data, seed=seed, skip_invalid=data_args.skip_invalid, report=load_report)
        if not load_report.kept:
            raise DataError(f"--data {' '.join(data_args.data)}: no records to train on")
        if load_report.skipped:
            logger.warning("skipped %d invalid records (first: %s)", len(load_report.skipped), load_report.skipped[0])
        decontaminated = None
        if data_args.decontaminate:
            parts, decontaminated = _decontaminate(parts, data_args)
        try:
            train_parts, val_records, val_key = split_parts(parts, data_args.val_set_size, seed)
        except ValueError as e:
            raise ConfigError(str(e)) from e
        train_records, train_key, mixed = mix(train_parts, seed, data_args.mix_weights)
        if len(mixed) > 1 or "(x" in mixed[0]:
            logger.info("training mixture: %s", "; ".join(mixed))
        workers = data_args.preprocessing_num_workers
        workers = default_workers(len(train_records)) if workers is None else workers
        if workers < 1:
            raise ConfigError("--preprocessing_num_workers must be >= 1")
        tokenizer = load_tokenizer(model_path, spec)
        train_set, report, hit = tokenize_dataset(train_records, tokenizer, template, data_args.cutoff_len,
                                                  key=train_key, num_workers=workers)
        val_set, val_report = None, None
        if val_records is not None:
            val_set, val_report, _ = tokenize_dataset(val_records, tokenizer, template, data_args.cutoff_len,
                                                      key=val_key, num_workers=workers)
        skipped = len(load_report.skipped)
        how = "cached" if hit else "tokenized"
    report.validation = val_report
    report.decontaminated = decontaminated  # read by run() into the metrics
    report_splits(report, val_report, data_args.cutoff_len, how)
    for name, dataset in (("training", train_set), ("validation", val_set)):
        counts = _by_source(dataset)
        if len(counts) > 1:
            logger.info("%s samples by source: %s", name, ", ".join(f"{s} {n}" for s, n in sorted(counts.items())))
    if not cached:
        datacache.remember(key, train_set, val_set, skipped)
    return tokenizer, train_set, val_set, report


def _prepare_streaming(data_args: DataArguments, seed: int, model_path: str, spec, template):
    """``prepare_data`` for ``--streaming``: the training set tokenized on the fly, counted as it streams."""
    from .data.mixing import digest
    from .data.streaming import stream_data
    from .tokenize import BatchEncoder, tokenize_dataset

    if data_args.decontaminate:
        raise ConfigError("--decontaminate needs the whole training set up front; it does not work with --streaming")
    train_records, val_records = stream_data(data_args.data, seed=seed, skip_invalid=data_args.skip_invalid,
                                             mix_weights=data_args.mix_weights, val_set_size=data_args.val_set_size,
                                             buffer_size=data_args.streaming_buffer_size)
    tokenizer = load_tokenizer(model_path, spec)
    encoder = BatchEncoder(tokenizer, template, data_args.cutoff_len)
    train_set = train_records.map(encoder, batched=True, batch_size=1000,
                                  remove_columns=list(train_records.features))
    val_set = val_report = None
    if val_records is not None:
        import json

        val_key = digest("streamed-validation", json.dumps(val_records.to_list(), ensure_ascii=False))
        val_set, val_report, _ = tokenize_dataset(val_records, tokenizer, template, data_args.cutoff_len, key=val_key)
    report = encoder.report  # filled while training reads the stream (the dataloader runs in this process)
    report.validation = val_report
    report.decontaminated = None
    report_splits(None, val_report, data_args.cutoff_len, "tokenized")
    logger.info("training data: streamed (%s); truncation is counted as training reads it", " ".join(data_args.data))
    return tokenizer, train_set, val_set, report


def run(model_args: ModelArguments, data_args: DataArguments, peft_args: PeftArguments,
        ft_args: FinetuneArguments, callbacks: tuple = ()) -> dict:
    """Fine-tune and write the output directory; returns the final metrics.

    ``callbacks``: more ``TrainerCallback``s (``study.py --estimate`` times a few steps with one).
    """
    setup_logging()
    started = time.time()
    validate(model_args, data_args, peft_args, ft_args)
    method = get_method(peft_args.peft_type)
    params = method_params(peft_args)
    output_dir = ft_args.output_dir or default_output_dir(model_args, data_args, peft_args, ft_args)
    checkpoint = resolve_checkpoint(ft_args.resume_from_checkpoint, output_dir)
    try:
        spec, model_path = resolve_spec(model_args.model_type, model_args.model_name_or_path,
                                        model_args.trust_remote_code)
    except ValueError as e:  # custom code without --trust_remote_code, an unreadable or unconvertible checkpoint
        raise ConfigError(str(e)) from e
    template = get_template(model_args.template or spec.template)

    tokenizer, train_set, val_set, report = prepare_data(data_args, ft_args.seed, model_path, spec, template)

    # auto: bf16 autocast for training on CPUs with bf16 matrix units (not for a quantized base)
    # Not for full/freeze either: their trained (and saved) weights would start from bf16-rounded ones.
    dtype = resolve_dtype(model_args.compute_dtype,
                          training=not model_args.quantization_bit and method.build is not None)
    from transformers import set_seed

    set_seed(ft_args.seed)  # adapter initialisation depends on the seed, not on what ran before
    model = load_model(model_path, spec, quantization_bit=model_args.quantization_bit, dtype=dtype)
    model.config.use_cache = False  # a cache in train mode would also break packed-sample isolation
    train_set, budget, ft_args = apply_budget(train_set, model, ft_args)  # --budget_tokens / --budget_flops
    try:
        targets = resolve_method_targets(method, model, spec, peft_args.lora_target_modules)
    except ValueError as e:
        raise ConfigError(str(e)) from e
    model = wrap_model(model, method, params, targets, model_args, ft_args)
    upcast_trainable(model)  # trainable weights and optimizer state stay fp32 over a bf16/fp16 base
    try:
        batching = plan_batching(model, spec.trust_remote_code, len(tokenizer), data_args.packing,
                                 False if data_args.streaming else data_args.group_by_length)
    except ValueError as e:
        raise ConfigError(str(e)) from e
    logger.info("batches: %s", batching.message)
    if batching.group_by_length:  # the sampler reads a length column instead of every row
        train_set = with_lengths(train_set)
        val_set = with_lengths(val_set) if val_set is not None else None

    from transformers import Trainer, set_seed

    counter = TokenCounter(batching.collator(tokenizer))  # what actually trained: label and input tokens
    counter.attach(model)
    set_seed(ft_args.seed)
    trainer = Trainer(
        # No periodic evaluation on a 4-bit CPU model: an eval-mode forward there repacks the
        # bitsandbytes weights into an inference-only layout and breaks later backward passes.
        model=model, args=training_arguments(ft_args, output_dir, dtype, group_by_length=batching.group_by_length,
                                             has_eval=val_set is not None and not (
            model_args.quantization_bit == 4 and not torch.cuda.is_available()),
            # A streamed set is read by every process itself: accelerate's default of dispatching an iterable
            # dataset's batches from the main process slices every tensor on dim 0, logits_to_keep included.
            **({"accelerator_config": {"dispatch_batches": False}} if data_args.streaming else {})),
        train_dataset=train_set, eval_dataset=val_set, processing_class=tokenizer,
        # Packed rows or padding (input_ids with pad, labels with -100); labels are never rewritten.
        data_collator=counter, compute_loss_func=batching.loss_func(),
        callbacks=[InterruptCallback(), LossPlotCallback(output_dir), FiniteGuard(output_dir),
                   *method_callbacks(method, peft_args), counter, *callbacks])
    counter.trainer = trainer
    if checkpoint:
        import json

        counter.restore(checkpoint, trainer.args.process_index)
        state = json.loads((Path(checkpoint) / "trainer_state.json").read_text())
        logger.info("resuming from %s at step %d (optimizer, scheduler and data position restored)",
                    checkpoint, state["global_step"])
    with interrupt_handler(trainer):
        result = trainer.train(resume_from_checkpoint=checkpoint)
    metrics = dict(result.metrics)
    # the Trainer's train_loss averages this call's steps only; a resumed run reports its whole mean
    metrics["train_loss"] = counter.whole_run_loss(metrics.get("train_loss"), trainer.state.global_step)
    if val_set is not None:
        last_eval = [h for h in trainer.state.log_history if "eval_loss" in h]
        if last_eval and last_eval[-1].get("step") == trainer.state.global_step:  # the last step evaluated already
            metrics.update({k: v for k, v in last_eval[-1].items() if k.startswith("eval_")})
        else:
            metrics.update(trainer.evaluate())
    metrics.update(source_losses(trainer, val_set))  # eval_loss_by_source, for a mixture of sources
    interrupted = _interrupted(trainer)
    metrics.update(counter.totals(), budget=budget, decontaminated=getattr(report, "decontaminated", None),
                   trainable_params=count_parameters(trainer.model)[0],
                   train_set=None if data_args.streaming else data_totals(train_set))
    val_report = getattr(report, "validation", None)
    if data_args.streaming:
        logger.info("training data: %s (streamed)", report.summary(data_args.cutoff_len))
    # Streamed: the samples tokenized so far (reading runs ahead of training by the shuffle buffer and a batch).
    metrics.update(train_samples=report.total - report.dropped if data_args.streaming else len(train_set),
                   train_samples_by_source=_by_source(None if data_args.streaming else train_set),
                   val_truncated=val_report.truncated if val_report else None,
                   val_dropped=val_report.dropped if val_report else None,
                   truncated=report.truncated, dropped=report.dropped,
                   packing=batching.packing, group_by_length=batching.group_by_length,
                   global_step=trainer.state.global_step, interrupted=interrupted,
                   wall_seconds=round(time.time() - started, 1))
    if trainer.is_world_process_zero():
        meta = {"base_model": model_args.model_name_or_path or spec.default_checkpoint,
                "base_model_path": model_path, "converted_from": (conversion_info(model_path) or {}).get("source"),
                "model_type": spec.name, "template": template.name,
                "peft_type": method.name, "peft_params": params, "target_modules": targets,
                "quantization_bit": model_args.quantization_bit, "data": data_args.data,
                "cutoff_len": data_args.cutoff_len, "metrics": metrics,
                "args": {k: v for a in (model_args, data_args, peft_args, ft_args) for k, v in vars(a).items()},
                "versions": _versions()}
        restore_attention(trainer.model)  # a saved full model's config names a standard attention
        save_final(trainer, tokenizer, output_dir, meta)
        logger.info("saved the %s fine-tune (%s, tokenizer, alpaca_cot.json, loss.png) to %s", method.name,
                    "adapter" if getattr(trainer.model, "peft_config", None) else "model weights", output_dir)
    return metrics


def prepare_base(model, model_args, ft_args):
    """k-bit preparation (which also turns on gradient checkpointing when asked), or gradient checkpointing."""
    from peft import prepare_model_for_kbit_training

    if model_args.quantization_bit:
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=ft_args.gradient_checkpointing)
    elif ft_args.gradient_checkpointing:
        model.gradient_checkpointing_enable()
        model.enable_input_require_grads()
    return model


def peft_config_for(method, params, targets, model):
    """The PEFT config of ``method`` for ``model``; a settings error when the parameters do not fit."""
    try:
        return method.build(params, targets, model)
    except (TypeError, ValueError) as e:  # e.g. an unknown key in a --peft_config file
        raise ConfigError(f"--peft_type {method.name}: invalid parameters {params}: {e}") from e


def log_trainable(model) -> None:
    trainable, total = count_parameters(model)
    logger.info("trainable params: %s || all params: %s || trainable%%: %.4f",
                f"{trainable:,}", f"{total:,}", 100 * trainable / total)


def wrap_model(model, method, params, targets, model_args, ft_args):
    """Apply the PEFT method (after k-bit preparation or gradient checkpointing when asked)."""
    from peft import get_peft_model

    model = prepare_base(model, model_args, ft_args)
    if method.build is None:  # full / freeze: the model's own weights train, no adapter
        try:
            method.trainable(model, params)
        except ValueError as e:
            raise ConfigError(str(e)) from e
    else:
        model = get_peft_model(model, peft_config_for(method, params, targets, model))
    log_trainable(model)
    return model


def training_arguments(ft_args: FinetuneArguments, output_dir: str, dtype, has_eval: bool,
                       group_by_length: bool = False, args_class=None, **extra):
    """``args_class`` (default ``TrainingArguments``; a TRL config for the preference stages) from our flags.

    ``extra`` sets or overrides single arguments (e.g. a TRL config's own fields).
    """
    import torch
    from transformers import TrainingArguments

    on_gpu = torch.cuda.is_available()
    eval_kwargs = {"eval_strategy": "steps", "eval_steps": ft_args.save_steps} if has_eval else {}
    if ft_args.deepspeed:
        import importlib.util

        if not os.path.isfile(ft_args.deepspeed):
            raise ConfigError(f"--deepspeed {ft_args.deepspeed}: no such config file (see configs/)")
        if importlib.util.find_spec("deepspeed") is None:
            raise ConfigError("--deepspeed needs the deepspeed package: pip install deepspeed (on the GPU machines)")
    # --fsdp true: settings from --fsdp_config; legacy strategy strings ("full_shard auto_wrap") pass through
    fsdp = True if (ft_args.fsdp or "").strip().lower() in ("true", "1", "yes") else ft_args.fsdp or None
    if fsdp and not on_gpu:
        logger.warning("--fsdp: accelerate shards models on GPUs only; on the CPU this runs as plain DDP")
    kwargs = dict(
        output_dir=output_dir, per_device_train_batch_size=ft_args.per_gpu_train_batch_size,
        per_device_eval_batch_size=ft_args.per_gpu_train_batch_size,
        gradient_accumulation_steps=ft_args.gradient_accumulation_steps, num_train_epochs=ft_args.epochs,
        # transformers 5 has no warmup_ratio: a warmup_steps below 1 is the share of the steps (validated < 1 above)
        max_steps=ft_args.max_steps, learning_rate=ft_args.learning_rate, warmup_steps=ft_args.warmup_ratio,
        lr_scheduler_type=ft_args.lr_scheduler_type, weight_decay=ft_args.weight_decay,
        logging_steps=ft_args.logging_steps, logging_first_step=True,
        logging_nan_inf_filter=False,  # never log a NaN step as the average of earlier ones (FiniteGuard stops) save_strategy="steps",
        save_steps=ft_args.save_steps, save_total_limit=ft_args.save_total_limit, seed=ft_args.seed,
        report_to=[] if ft_args.report_to == "none" else [ft_args.report_to],
        # bf16 autocast on the CPU too (see resolve_dtype); fp16 only on GPUs.
        bf16=dtype == torch.bfloat16, fp16=on_gpu and dtype == torch.float16,
        train_sampling_strategy="group_by_length" if group_by_length else "random",
        deepspeed=ft_args.deepspeed, fsdp=fsdp, fsdp_config=ft_args.fsdp_config,
        ddp_find_unused_parameters=False,  # PEFT freezes most weights; the search costs a pass per step
        remove_unused_columns=False, use_cpu=not on_gpu, dataloader_num_workers=0, **eval_kwargs)
    kwargs.update(extra)
    return (args_class or TrainingArguments)(**kwargs)


# ---------------------------------------------------------------- Ctrl-C, loss plot, final save

class InterruptCallback(TrainerCallback):
    """On Ctrl-C: finish the current step, write a resumable checkpoint, stop training."""

    interrupted = False

    def on_step_end(self, args, state, control, **kwargs):
        if self.interrupted:
            control.should_save = True
            control.should_training_stop = True
        return control


def _interrupted(trainer) -> bool:
    return any(getattr(cb, "interrupted", False) for cb in trainer.callback_handler.callbacks
               if isinstance(cb, InterruptCallback))


class interrupt_handler:
    """First Ctrl-C stops training gracefully (adapter saved); a second one aborts at once."""

    def __init__(self, trainer):
        self.callback = next(cb for cb in trainer.callback_handler.callbacks if isinstance(cb, InterruptCallback))
        self.previous = None

    def _handle(self, signum, frame):
        logger.warning("interrupted: finishing this step, saving a checkpoint and the adapter "
                       "(press Ctrl-C again to abort without saving)")
        self.callback.interrupted = True
        signal.signal(signal.SIGINT, signal.default_int_handler)

    def __enter__(self):
        import threading

        if threading.current_thread() is threading.main_thread():
            self.previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc):
        if self.previous is not None:
            signal.signal(signal.SIGINT, self.previous)
        return False


class LossPlotCallback(TrainerCallback):
    """Writes ``loss.png`` (training and validation loss by step) when training ends."""

    def __init__(self, output_dir: str):
        self.output_dir = output_dir

    def on_train_end(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            plot_loss(state.log_history, Path(self.output_dir) / "loss.png")


def plot_loss(log_history: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [(h["step"], h["loss"]) for h in log_history if "loss" in h]
    val = [(h["step"], h["eval_loss"]) for h in log_history if "eval_loss" in h]
    if not train and not val:
        return
    fig, ax = plt.subplots(figsize=(6, 4))
    for points, label in ((train, "train"), (val, "validation")):
        if points:
            ax.plot(*zip(*points), marker="o" if len(points) < 30 else None, label=label)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    ax.legend()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp.png")
    fig.savefig(tmp, dpi=100, bbox_inches="tight")
    plt.close(fig)
    os.replace(tmp, path)


def save_final(trainer, tokenizer, output_dir: str, meta: dict) -> None:
    """Write adapter + tokenizer + metadata so a reader never sees a half-written output dir.

    Files are saved into a temporary folder, the old metadata file is removed, the files are
    renamed into place, and the metadata is written last.
    """
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out, prefix=".final-") as tmp:
        trainer.model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (out / METADATA_FILE).unlink(missing_ok=True)
        for item in Path(tmp).iterdir():
            target = out / item.name
            if target.is_dir():
                shutil.rmtree(target)
            os.replace(item, target)
    write_metadata(out, meta)


def _versions() -> dict:
    import peft
    import torch
    import transformers

    return {"torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__}
