"""Matched trainable-parameter counts: pick each PEFT method's size knob to match a reference method.

A study with ``match_params: true`` compares methods at (about) the same number of trainable
parameters: for every cell, the method's size knob (LoRA rank, number of virtual tokens,
bottleneck width, trained layers) is set so that its count is within ``TOLERANCE`` of the
reference cell's. Counts are exact: the model is built on PyTorch's ``meta`` device (shapes, no
memory, no weights read) and wrapped with the real PEFT config, as training would. The count
of every method we have grows linearly in its knob, so two counts give the line, and the
integers next to where it crosses the target are checked exactly.
"""

from __future__ import annotations

import logging
import math

from .cli_args import DataArguments, FinetuneArguments, ModelArguments, PeftArguments, flag_tokens, parse

logger = logging.getLogger("alpaca_cot")
TOLERANCE = 0.10
# --peft_type -> the flag that sizes it. ia3 and full have no size knob.
KNOBS = {"lora": "lora_r", "dora": "lora_r", "loha": "lora_r", "lokr": "lora_r", "adalora": "adalora_init_r",
         "prompt": "num_virtual_tokens", "prefix": "num_virtual_tokens", "p_tuning": "num_virtual_tokens",
         "sadapter_h": "bottleneck_size", "sadapter_p": "bottleneck_size", "padapter": "bottleneck_size",
         "freeze": "freeze_trainable_layers"}


def _meta_model(model_args: ModelArguments):
    import torch
    import transformers
    from transformers import AutoConfig

    from .loader import resolve_spec

    spec, path = resolve_spec(model_args.model_type, model_args.model_name_or_path, model_args.trust_remote_code)
    config = AutoConfig.from_pretrained(path, trust_remote_code=spec.trust_remote_code)
    with torch.device("meta"):
        model = getattr(transformers, spec.model_class).from_config(config, trust_remote_code=spec.trust_remote_code)
    return model, spec


def trainable_count(flags: dict) -> int:
    """Trainable parameters of a fine-tune with these ``uniform_finetune.py`` flags (nothing is trained)."""
    import torch
    from peft import get_peft_model

    from .peft_methods import count_parameters, get_method, method_params, resolve_method_targets

    model_args, _, peft_args, _ = parse((ModelArguments, DataArguments, PeftArguments, FinetuneArguments),
                                        flag_tokens({k: v for k, v in flags.items() if k != "output_dir"}))
    method = get_method(peft_args.peft_type)
    params = method_params(peft_args)
    model, spec = _meta_model(model_args)
    with torch.device("meta"):
        if method.build is None:
            method.trainable(model, params)
        else:
            targets = resolve_method_targets(method, model, spec, peft_args.lora_target_modules)
            model = get_peft_model(model, method.build(params, targets, model))
    return int(count_parameters(model)[0])


def _knob_flags(peft_type: str, value: int, flags: dict) -> dict:
    knob = KNOBS[peft_type]
    out = {knob: int(value)}
    if peft_type == "adalora":  # keep the preset's target/initial rank ratio (8/12): target_r <= init_r
        from .peft_methods import load_preset

        preset = load_preset("adalora", flags.get("peft_config"))
        out["lora_r"] = max(1, round(value * preset["target_r"] / preset["init_r"]))
    return out


def match_knob(flags: dict, target: int, upper: int = 4096) -> dict:
    """The knob setting of ``flags``' method whose count is nearest ``target``.

    Returns ``{"knob", "value", "params", "target", "ratio", "within"}``; ``knob`` None when the
    method has no size knob (its count is reported as it is).
    """
    peft_type = flags.get("peft_type", "lora")
    if peft_type not in KNOBS:
        count = trainable_count(flags)
        return {"knob": None, "value": None, "flags": {}, "params": count, "target": target, "ratio": count / target,
                "within": abs(count / target - 1) <= TOLERANCE}
    if peft_type == "freeze":
        model, _ = _meta_model(ModelArguments(**{k: v for k, v in flags.items()
                                                 if k in ("model_type", "model_name_or_path", "trust_remote_code")}))
        from .peft_methods import decoder_layers

        upper = len(decoder_layers(model))

    def count(v):
        return trainable_count({**flags, **_knob_flags(peft_type, v, flags)})

    c1, c2 = count(1), count(2)
    slope = max(c2 - c1, 1)
    guess = 1 + (target - c1) / slope
    candidates = {min(upper, max(1, v)) for v in (math.floor(guess), math.ceil(guess), math.floor(guess) - 1,
                                                 math.ceil(guess) + 1)}
    counted = {1: c1, 2: c2, **{v: count(v) for v in candidates if v not in (1, 2)}}
    best = min(counted, key=lambda v: (abs(counted[v] - target), v))
    ratio = counted[best] / target
    return {"knob": KNOBS[peft_type], "value": best, "flags": _knob_flags(peft_type, best, flags),
            "params": counted[best], "target": target, "ratio": ratio, "within": abs(ratio - 1) <= TOLERANCE}
