"""Fast tokenizers built from a legacy checkpoint's own vocabulary files.

``build(family, folder, config)`` is what every ``LegacyFamily.build_tokenizer`` calls. It returns
None when the folder has no vocabulary files (a bare weights folder), else a
``PreTrainedTokenizerFast`` giving the same ids as the family's own tokenizer.
"""

from __future__ import annotations

from pathlib import Path

# family -> builder(folder, config) -> PreTrainedTokenizerFast; filled below, one builder per family.
BUILDERS: dict = {}


def build(family: str, folder: str | Path, config: dict):
    """The family's fast tokenizer from ``folder``'s vocabulary files, or None when it has none."""
    if family not in BUILDERS:
        raise ValueError(f"no tokenizer builder for legacy family {family!r}; known: {', '.join(sorted(BUILDERS))}")
    return BUILDERS[family](Path(folder), config)
