"""The legacy-family registry: one ``LegacyFamily`` per architecture (see the package docstring).

The published checkpoints of ChatGLM-6B, ChatGLM2-6B, ChatGLM3-6B, Baichuan(2), InternLM v1 and MOSS
ship modeling and tokenizer code written for transformers 4.2x-4.3x, which does not run on
transformers 5 (see DESIGN.md, "Older model families"). A folder in that *legacy layout* is converted
once into a *native* folder: a config of a transformers class (or of our own small module,
registered with the Auto classes, where transformers has none), the weights renamed/split to it,
and a fast tokenizer built from the checkpoint's own vocabulary files.

Plain data at the bottom of the package: family modules import it, nothing here imports them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping

import torch


@dataclass(frozen=True)
class LegacyFamily:
    """How one legacy architecture becomes a native checkpoint.

    Attributes:
        name: the registry ``--model_type`` the converted folder belongs to (``alpaca_cot.models``).
        detect: ``(legacy config.json dict, {file name: path} of the folder's files) -> bool``; a
            membership test (``"tokenizer.model" in files``) needs only the names, the paths let a
            detector read a file where the config alone does not decide (ChatGLM2 vs ChatGLM3).
        convert_config: legacy config.json dict -> the native ``PretrainedConfig``.
        convert_state_dict: ``(legacy state dict, legacy config dict) -> native state dict``; tensors
            keep their dtype; fused layers are split, renamed, heads folded as the family needs.
        build_tokenizer: ``(legacy folder, legacy config dict) -> PreTrainedTokenizerFast`` built from
            the folder's vocabulary files; None when the family's tokenizer files load as they are.
        native_class: the class the converted folder loads with (for messages and README).
        checkpoints: the published checkpoints this conversion covers (README's Models table).
        register: called before a converted folder loads (our own modules register their classes
            with the Auto classes here); None for native transformers classes.
    """

    name: str
    detect: Callable[[dict, Mapping[str, Path]], bool]
    convert_config: Callable[[dict], object]
    convert_state_dict: Callable[[dict[str, torch.Tensor], dict], dict[str, torch.Tensor]]
    build_tokenizer: Callable[[Path, dict], object] | None
    native_class: str
    checkpoints: tuple[str, ...] = ()
    register: Callable[[], None] | None = None
    notes: str = field(default="", compare=False)


LEGACY_FAMILIES: dict[str, LegacyFamily] = {}


def register_family(family: LegacyFamily) -> LegacyFamily:
    if family.name in LEGACY_FAMILIES:
        raise ValueError(f"legacy family {family.name!r} is already registered")
    LEGACY_FAMILIES[family.name] = family
    return family
