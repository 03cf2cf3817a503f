"""The PEFT method registry: ``--peft_type`` name -> a PEFT config built from its preset.

Each method's default hyper-parameters live in one preset file, ``peft/<name>.yaml`` at the
top of the repository (no Python there: a package named ``peft`` would shadow the library).
Command-line flags override preset values; ``--peft_config FILE`` replaces the preset.
Importing this module also registers the bottleneck adapters with PEFT, so every script
that loads an adapter imports it first.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from . import bottleneck
from .models import ModelSpec, resolve_target_modules
from .suggest import did_you_mean

PRESET_DIR = Path(__file__).resolve().parents[1] / "peft"

# Flags of PeftArguments that set a method parameter -> the preset key they override, per
# method family. A flag left at None keeps the preset's value; a flag the method does not
# use is refused (see ``check_compatible``) rather than silently ignored.
LORA_FLAGS = {"lora_r": "r", "lora_alpha": "lora_alpha", "lora_dropout": "lora_dropout"}
ADALORA_FLAGS = {"lora_r": "target_r", "lora_alpha": "lora_alpha", "lora_dropout": "lora_dropout",
                 "adalora_init_r": "init_r", "adalora_tinit": "tinit", "adalora_tfinal": "tfinal",
                 "adalora_delta_t": "deltaT"}
LYCORIS_FLAGS = {"lora_r": "r", "lora_alpha": "alpha"}
PROMPT_FLAGS = {"num_virtual_tokens": "num_virtual_tokens"}
ENCODER_FLAGS = {**PROMPT_FLAGS, "prompt_encoder_hidden_size": "encoder_hidden_size"}
BOTTLENECK_FLAGS = {"bottleneck_size": "bottleneck_size", "non_linearity": "non_linearity",
                    "adapter_dropout": "adapter_dropout", "adapter_scaling": "scaling"}
FREEZE_FLAGS = {"freeze_trainable_layers": "trainable_layers"}


@dataclass(frozen=True)
class PeftMethod:
    """One ``--peft_type``.

    Attributes:
        name: the flag value (and preset file stem).
        build: ``(params, target_modules, model) -> peft.PeftConfig``; None: no adapter, the
            model's own weights train (see ``trainable``) and the whole model is saved.
        uses_targets: whether the method adapts named modules (``--lora_target_modules``).
        quantization: the ``--quantization_bit`` values it trains on (checked on the CPU).
        mergeable: whether ``merge.py`` can fold the adapter into the base weights.
        description: one line for the README and error messages.
        flags: ``PeftArguments`` field -> preset key, for the flags this method accepts.
        default_targets: ``(model) -> module names`` when they differ from the family's LoRA
            targets; None: the family's.
        trainable: for ``build=None``: ``(model, params)`` marks the weights that train.
        gradient_checkpointing: whether it trains with ``--gradient_checkpointing``.
        callbacks: ``(peft_args) -> [TrainerCallback]`` hooks the training loop must call.
    """

    name: str
    build: Callable | None
    uses_targets: bool = True
    quantization: tuple[int, ...] = (4, 8)
    mergeable: bool = True
    description: str = ""
    flags: dict[str, str] = field(default_factory=dict)
    default_targets: Callable | None = None
    trainable: Callable | None = None
    gradient_checkpointing: bool = True
    callbacks: Callable | None = None


PEFT_METHODS: dict[str, PeftMethod] = {}


def register_method(method: PeftMethod) -> None:
    if method.name in PEFT_METHODS:
        raise ValueError(f"PEFT method {method.name!r} is already registered")
    PEFT_METHODS[method.name] = method


def get_method(name: str) -> PeftMethod:
    if name not in PEFT_METHODS:
        raise ValueError(f"unknown --peft_type {name!r}{did_you_mean(name, PEFT_METHODS)}; "
                         f"known: {', '.join(PEFT_METHODS)}")
    return PEFT_METHODS[name]


def load_preset(name: str, path: str | None = None) -> dict:
    import yaml

    file = Path(path) if path else PRESET_DIR / f"{name}.yaml"
    if not file.exists():
        raise ValueError(f"preset file {file} not found")
    values = yaml.safe_load(file.read_text(encoding="utf-8")) or {}
    if not isinstance(values, dict):
        raise ValueError(f"{file}: a preset must be a mapping of parameter names to values")
    return values


def method_params(peft_args) -> dict:
    """The preset of ``peft_args.peft_type`` with command-line overrides applied."""
    method = get_method(peft_args.peft_type)
    params = load_preset(method.name, peft_args.peft_config)
    for flag, key in method.flags.items():
        value = getattr(peft_args, flag, None)
        if value is not None:
            params[key] = value
    return params


def all_method_flags() -> set[str]:
    return {flag for m in PEFT_METHODS.values() for flag in m.flags}


def check_compatible(method: PeftMethod, peft_args, quantization_bit: int | None,
                     gradient_checkpointing: bool) -> None:
    """Refuse flags the method cannot honour; raises ValueError saying what to change."""
    if quantization_bit and quantization_bit not in method.quantization:
        able = [m.name for m in PEFT_METHODS.values() if quantization_bit in m.quantization]
        raise ValueError(f"--peft_type {method.name} does not train on a {quantization_bit}-bit base; drop "
                         f"--quantization_bit or pick one of: {', '.join(able)}")
    unused = sorted(f for f in all_method_flags() - set(method.flags) if getattr(peft_args, f, None) is not None)
    if getattr(peft_args, "lora_target_modules", None) and not method.uses_targets:
        unused.insert(0, "lora_target_modules")
    if unused:
        accepted = [f"--{f}" for f in method.flags] + (["--lora_target_modules"] if method.uses_targets else [])
        raise ValueError(f"--peft_type {method.name} does not use {', '.join('--' + f for f in unused)}; "
                         f"drop it (flags this method accepts: {', '.join(accepted) or 'none'})")
    if gradient_checkpointing and not method.gradient_checkpointing:
        raise ValueError(f"--peft_type {method.name} does not work with --gradient_checkpointing; drop it")


def resolve_method_targets(method: PeftMethod, model, spec: ModelSpec, requested: list[str] | None):
    """Module names the method adapts: the request, else the method's default, else the family's.

    None for methods that adapt no modules. Raises ValueError when a name matches nothing.
    """
    if not method.uses_targets:
        return None
    if not requested and method.default_targets is not None:
        requested = method.default_targets(model)
    return resolve_target_modules(model, spec, requested)


def method_callbacks(method: PeftMethod, peft_args) -> list:
    return list(method.callbacks(peft_args)) if method.callbacks else []


def count_parameters(model) -> tuple[int, int]:
    """(trainable, total) parameters; PEFT's count for PEFT models (4-bit weights counted unpacked)."""
    if hasattr(model, "get_nb_trainable_parameters"):
        return model.get_nb_trainable_parameters()
    params = list(model.parameters())  # tied weights are listed once
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


# ---------------------------------------------------------------- builders


def _model_type(model) -> str:
    return getattr(getattr(model, "config", None), "model_type", "") or ""


def _lora(params: dict, targets: list[str], model=None):
    from peft import LoraConfig

    return LoraConfig(task_type="CAUSAL_LM", target_modules=targets, **params)


def _adalora(params: dict, targets: list[str], model=None):
    from peft import AdaLoraConfig

    params = dict(params)
    # total_step is only known once the Trainer has sized the dataloader; AdaLoraCallback sets it
    # (and fits tinit/tfinal into it) before the first step. This placeholder passes the config check.
    params.setdefault("total_step", params.get("tinit", 0) + params.get("tfinal", 0) + 1)
    return AdaLoraConfig(task_type="CAUSAL_LM", target_modules=targets, **params)


def _peft_config(class_name: str) -> Callable:
    def build(params: dict, targets, model=None):
        import peft

        kwargs = {"target_modules": targets} if targets is not None else {}
        return getattr(peft, class_name)(task_type="CAUSAL_LM", **kwargs, **params)

    return build


def _ia3_targets(model) -> list[str] | None:
    from peft.utils import TRANSFORMERS_MODELS_TO_IA3_TARGET_MODULES_MAPPING as TARGETS

    names = TARGETS.get(_model_type(model))
    return [n.rsplit(".", 1)[-1] for n in names] if names else None


def _ia3(params: dict, targets: list[str], model=None):
    from peft import IA3Config
    from peft.utils import TRANSFORMERS_MODELS_TO_IA3_FEEDFORWARD_MODULES_MAPPING as FEEDFORWARD

    # IA3 scales a feed-forward layer's input and any other layer's output, so PEFT must be told
    # which targets are feed-forward; the family's own list when PEFT knows it, else common names.
    known = FEEDFORWARD.get(_model_type(model)) or ["down_proj", "dense_4h_to_h", "fc2", "fc_out", "w2", "wo"]
    ff = {n.rsplit(".", 1)[-1] for n in known}
    params = {"feedforward_modules": [t for t in targets if t in ff], **params}
    return IA3Config(task_type="CAUSAL_LM", target_modules=targets, **params)


def _bottleneck(placement: str) -> Callable:
    def build(params: dict, targets: list[str], model=None):
        preset = bottleneck.PLACEMENTS[placement]
        kwargs = {"adapter_type": preset.adapter_type, "scaling": preset.scaling, **params}
        return bottleneck.BottleneckConfig(task_type="CAUSAL_LM", target_modules=targets, **kwargs)

    return build


def _placement_targets(placement: str) -> Callable:
    return lambda model: bottleneck.placement_targets(_model_type(model), placement)


def decoder_layers(model):
    """The model's transformer blocks: its longest ``nn.ModuleList``."""
    from torch import nn

    lists = [m for m in model.modules() if isinstance(m, nn.ModuleList)]
    if not lists:
        raise ValueError(f"cannot find the layer list of {type(model).__name__} to freeze")
    return max(lists, key=len)


def _train_all(model, params: dict) -> None:
    model.requires_grad_(True)


def _train_last_layers(model, params: dict) -> None:
    layers = decoder_layers(model)
    n = params.get("trainable_layers")
    if not isinstance(n, int) or not 1 <= n <= len(layers):
        raise ValueError(f"--freeze_trainable_layers must be a whole number from 1 to {len(layers)} "
                         f"(the model's layers), got {n!r}")
    model.requires_grad_(False)
    for layer in layers[len(layers) - n:]:
        layer.requires_grad_(True)


def _adalora_callbacks(peft_args) -> list:
    from .callbacks import AdaLoraCallback

    return [AdaLoraCallback()]


# ---------------------------------------------------------------- the methods

_PROMPT = dict(uses_targets=False, mergeable=False)
_ADAPTER = dict(mergeable=False, flags=BOTTLENECK_FLAGS)
_WHOLE = dict(build=None, uses_targets=False, quantization=(), mergeable=False)

for _method in (
    PeftMethod("lora", _lora, flags=LORA_FLAGS, description="LoRA: low-rank updates B·A beside the target "
               "layers (QLoRA: with --quantization_bit 4)"),
    PeftMethod("adalora", _adalora, flags=ADALORA_FLAGS, callbacks=_adalora_callbacks,
               description="AdaLoRA: SVD-form LoRA whose rank budget is re-allocated during training"),
    PeftMethod("dora", _lora, quantization=(4,), flags=LORA_FLAGS,
               description="DoRA: LoRA on the direction of each weight plus a trained magnitude"),
    PeftMethod("loha", _peft_config("LoHaConfig"), quantization=(8,), flags=LYCORIS_FLAGS,
               description="LoHa: low-rank Hadamard-product updates"),
    PeftMethod("lokr", _peft_config("LoKrConfig"), quantization=(8,), flags=LYCORIS_FLAGS,
               description="LoKr: low-rank Kronecker-product updates"),
    PeftMethod("ia3", _ia3, default_targets=_ia3_targets,
               description="IA3: learned scaling vectors on attention keys/values and the feed-forward input"),
    PeftMethod("prefix", _peft_config("PrefixTuningConfig"), flags=ENCODER_FLAGS, gradient_checkpointing=False,
               description="Prefix tuning: trained key/value prefixes in every layer (MLP-reparameterised)",
               **_PROMPT),
    PeftMethod("p_tuning", _peft_config("PromptEncoderConfig"), flags=ENCODER_FLAGS,
               description="P-tuning: virtual input tokens produced by a small prompt encoder", **_PROMPT),
    PeftMethod("prompt", _peft_config("PromptTuningConfig"), flags=PROMPT_FLAGS,
               description="Prompt tuning: trained virtual input token embeddings", **_PROMPT),
    PeftMethod("sadapter_h", _bottleneck("sadapter_h"), default_targets=_placement_targets("sadapter_h"),
               description="Sequential bottleneck adapter, Houlsby placement (after attention and "
               "feed-forward)", **_ADAPTER),
    PeftMethod("sadapter_p", _bottleneck("sadapter_p"), default_targets=_placement_targets("sadapter_p"),
               description="Sequential bottleneck adapter, Pfeiffer placement (after feed-forward)", **_ADAPTER),
    PeftMethod("padapter", _bottleneck("padapter"), default_targets=_placement_targets("padapter"),
               description="Parallel bottleneck adapter beside the feed-forward block, scaled", **_ADAPTER),
    PeftMethod("full", trainable=_train_all, description="Full fine-tuning: every weight trains", **_WHOLE),
    PeftMethod("freeze", trainable=_train_last_layers, flags=FREEZE_FLAGS,
               description="Only the last N transformer layers train (--freeze_trainable_layers)", **_WHOLE),
):
    register_method(_method)
