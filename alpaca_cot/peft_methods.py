"""The PEFT method registry: ``--peft_type`` name -> a PEFT config built from its preset.

Each method's default hyper-parameters live in one preset file, ``peft/<name>.yaml`` at the
top of the repository (no Python there: a package named ``peft`` would shadow the library).
Command-line flags override preset values; ``--peft_config FILE`` replaces the preset.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

PRESET_DIR = Path(__file__).resolve().parents[1] / "peft"

# Command-line flag -> preset key (flags left at None keep the preset's value).
FLAG_KEYS = {"lora_r": "r", "lora_alpha": "lora_alpha", "lora_dropout": "lora_dropout"}


@dataclass(frozen=True)
class PeftMethod:
    """One ``--peft_type``.

    Attributes:
        name: the flag value (and preset file stem).
        build: ``(params, target_modules) -> peft.PeftConfig``; None builds nothing (full tuning).
        uses_targets: whether the method adapts named modules (LoRA-like) or not (prompt-like).
        quantization: whether it trains on a 4/8-bit base.
        mergeable: whether ``merge.py`` can fold it into the base weights.
        description: one line for the README and --help.
    """

    name: str
    build: Callable[[dict, list[str]], object] | None
    uses_targets: bool = True
    quantization: bool = True
    mergeable: bool = True
    description: str = ""


PEFT_METHODS: dict[str, PeftMethod] = {}


def register_method(method: PeftMethod) -> None:
    if method.name in PEFT_METHODS:
        raise ValueError(f"PEFT method {method.name!r} is already registered")
    PEFT_METHODS[method.name] = method


def get_method(name: str) -> PeftMethod:
    if name not in PEFT_METHODS:
        raise ValueError(f"unknown --peft_type {name!r}; known: {', '.join(PEFT_METHODS)}")
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
    params = load_preset(peft_args.peft_type, peft_args.peft_config)
    for flag, key in FLAG_KEYS.items():
        value = getattr(peft_args, flag, None)
        if value is not None:
            params[key] = value
    return params


def _lora(params: dict, targets: list[str]):
    from peft import LoraConfig

    return LoraConfig(task_type="CAUSAL_LM", target_modules=targets, **params)


register_method(PeftMethod("lora", _lora, description="Low-rank adaptation (QLoRA with --quantization_bit 4)"))
