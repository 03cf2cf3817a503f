"""Checkpoints of the original's older families, loaded through native code instead of their remote code.

The published checkpoints of ChatGLM-6B, ChatGLM2-6B, ChatGLM3-6B, Baichuan(2), InternLM v1 and MOSS
ship modeling and tokenizer code written for transformers 4.2x-4.3x, which does not run on
transformers 5 (see DESIGN.md, "Older model families"). A folder in that *legacy layout* is converted
once into a *native* folder: a config of a transformers class (or of our own small module,
registered with the Auto classes, where transformers has none), the weights renamed/split to it,
and a fast tokenizer built from the checkpoint's own vocabulary files.

Layout: ``registry.py`` (the ``LegacyFamily`` record and ``LEGACY_FAMILIES``), one module per
architecture that registers its family on import (listed in ``FAMILY_MODULES``), ``tokenizers.py``
(fast tokenizers from the checkpoints' vocabulary files) and ``convert.py`` (detection, conversion,
the conversion cache).
"""

from __future__ import annotations

import importlib

from .registry import LEGACY_FAMILIES, LegacyFamily, register_family

# Each module registers one or more families when imported.
FAMILY_MODULES: tuple[str, ...] = ("chatglm6b", "baichuan", "internlm", "moss", "chatglm2")

for _module in FAMILY_MODULES:
    importlib.import_module(f"{__name__}.{_module}")

__all__ = ["LEGACY_FAMILIES", "LegacyFamily", "register_family", "FAMILY_MODULES"]
