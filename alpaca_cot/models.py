"""The model registry: one entry per LLM family; every family quirk is a field, never a branch.

Adding a family is one ``register_model(ModelSpec(...))`` call. ``--model_type auto`` (and any
checkpoint whose config matches no entry) loads through the Auto classes with LoRA targets
found by inspecting the model's linear layers.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

from .embedded import DEFAULT_MODEL, resolve_embedded
from .suggest import did_you_mean

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelSpec:
    """How to load and tune one family.

    Attributes:
        name: the ``--model_type`` value.
        model_class: transformers Auto class that loads the checkpoint (remote-code families
            use the class their ``auto_map`` provides).
        trust_remote_code: whether the checkpoint's own code must be run.
        target_modules: default LoRA targets (module-name suffixes).
        template: default prompt template (``alpaca_cot.templates``).
        pad_token: what to use when the tokenizer has no pad token: "unk" or "eos".
        default_checkpoint: Hub id used when ``--model_name_or_path`` is not given.
        config_model_types: ``config.model_type`` values that identify the family.
        source: where the family's reference checkpoint lives.
    """

    name: str
    model_class: str = "AutoModelForCausalLM"
    trust_remote_code: bool = False
    target_modules: tuple[str, ...] = ()
    template: str = "alpaca"
    pad_token: str = "eos"
    default_checkpoint: str | None = None
    config_model_types: tuple[str, ...] = ()
    source: str = ""


MODEL_REGISTRY: dict[str, ModelSpec] = {}


def register_model(spec: ModelSpec) -> None:
    if spec.name in MODEL_REGISTRY:
        raise ValueError(f"model type {spec.name!r} is already registered")
    MODEL_REGISTRY[spec.name] = spec


register_model(ModelSpec(
    "llama", target_modules=("q_proj", "v_proj"), pad_token="unk", default_checkpoint=DEFAULT_MODEL,
    config_model_types=("llama", "mistral"), source="https://huggingface.co/meta-llama"))
register_model(ModelSpec(
    "bloom", target_modules=("query_key_value",), default_checkpoint="bigscience/bloomz-7b1-mt",
    config_model_types=("bloom",), source="https://huggingface.co/bigscience/bloomz-7b1-mt"))
register_model(ModelSpec(
    "qwen2", target_modules=("q_proj", "v_proj"), template="chat", default_checkpoint="Qwen/Qwen2.5-7B-Instruct",
    config_model_types=("qwen2",), source="https://huggingface.co/Qwen"))
register_model(ModelSpec(
    "gemma3", target_modules=("q_proj", "v_proj"), default_checkpoint="gemma3-270m",
    config_model_types=("gemma3_text", "gemma3"), source="https://huggingface.co/google/gemma-3-270m"))
# The original's older families: their published checkpoints (legacy layout, written for their own
# remote code) are converted once to native classes by alpaca_cot.legacy; these entries describe the
# converted models (module names after conversion), so no entry runs remote code.
register_model(ModelSpec(
    "chatglm", target_modules=("query_key_value",), template="chatglm", default_checkpoint="THUDM/chatglm-6b",
    config_model_types=("chatglm6b",), source="https://huggingface.co/THUDM/chatglm-6b"))
register_model(ModelSpec(
    "chatglm2", target_modules=("q_proj", "k_proj", "v_proj"), template="chatglm2",
    default_checkpoint="THUDM/chatglm2-6b", source="https://huggingface.co/THUDM/chatglm2-6b"))
register_model(ModelSpec(
    "chatglm3", target_modules=("q_proj", "k_proj", "v_proj"), template="chatglm3",
    default_checkpoint="THUDM/chatglm3-6b", source="https://huggingface.co/THUDM/chatglm3-6b"))
register_model(ModelSpec(
    "moss", target_modules=("qkv_proj",), template="moss", default_checkpoint="fnlp/moss-moon-003-sft",
    source="https://huggingface.co/fnlp/moss-moon-003-sft"))
register_model(ModelSpec(
    "baichuan", target_modules=("q_proj", "k_proj", "v_proj"), template="baichuan",
    default_checkpoint="baichuan-inc/Baichuan2-7B-Chat", config_model_types=("baichuan_alibi",),
    source="https://huggingface.co/baichuan-inc"))
register_model(ModelSpec(
    "internlm", target_modules=("q_proj", "v_proj"), template="internlm",
    default_checkpoint="internlm/internlm-chat-7b", source="https://huggingface.co/internlm/internlm-chat-7b"))
# Anything else: Auto classes, targets found from the model's linear layers.
register_model(ModelSpec("auto", source="transformers Auto classes"))


def get_spec(model_type: str) -> ModelSpec:
    if model_type not in MODEL_REGISTRY:
        raise ValueError(f"unknown --model_type {model_type!r}{did_you_mean(model_type, MODEL_REGISTRY)}; "
                         f"known: {', '.join(MODEL_REGISTRY)}")
    return MODEL_REGISTRY[model_type]


def resolve_model_path(name_or_path: str | None, spec: ModelSpec | None = None) -> str:
    """A local folder or Hub id for ``name_or_path``; embedded model names are converted once."""
    name = name_or_path or (spec.default_checkpoint if spec and spec.default_checkpoint else DEFAULT_MODEL)
    if os.path.isdir(name):
        return name
    return resolve_embedded(name) or name


def detect_model_type(config) -> str:
    """The registry family whose ``config_model_types`` include ``config``'s model_type (a config or
    a config.json dict); else "auto"."""
    model_type = config.get("model_type") if isinstance(config, dict) else getattr(config, "model_type", None)
    for spec in MODEL_REGISTRY.values():
        if model_type in spec.config_model_types:
            return spec.name
    return "auto"


def linear_module_names(model) -> list[str]:
    """Suffix names of the linear layers inside the transformer blocks (output head excluded)."""
    import torch.nn as nn

    output = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    names = set()
    for full_name, module in model.named_modules():
        is_linear = isinstance(module, nn.Linear) or type(module).__name__ in ("Linear4bit", "Linear8bitLt")
        if is_linear and module is not output and not full_name.endswith(("lm_head", "output_layer")):
            names.add(full_name.rsplit(".", 1)[-1])
    return sorted(names)


def resolve_target_modules(model, spec: ModelSpec, requested: list[str] | None) -> list[str]:
    """The LoRA targets to use: the request, else the family default, else every linear layer.

    Raises ValueError naming the model's linear layers when a requested name matches nothing.
    """
    available = linear_module_names(model)
    if requested == ["all-linear"]:
        return available
    targets = list(requested or spec.target_modules or available)
    present = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    unknown = [t for t in targets if t not in present]
    if unknown:
        raise ValueError(f"target module(s) {unknown} not found in the model; its linear layers are: "
                         f"{', '.join(available)} (set --lora_target_modules)")
    return targets
