"""A "did you mean ...?" for a misspelt flag or name: one helper for every registry and the command lines.

Plain data at the bottom of the import graph (only the standard library): the model registry,
templates, PEFT methods, datasets and the argument parser all call :func:`did_you_mean`.
Close names are found with :func:`difflib.get_close_matches` (Ratcliff/Obershelp similarity),
case-insensitively; when none is close enough, names that start with the given one or that it
starts with (``--lora_rk`` -> ``--lora_r``).
"""

from __future__ import annotations

import difflib
from typing import Iterable

CUTOFF = 0.75  # difflib similarity ratio a close name must reach (difflib defaults to 0.6: too loose for flags)


def close_names(name: str, known: Iterable[str], limit: int = 3) -> list[str]:
    """Up to ``limit`` entries of ``known`` that look like ``name``, closest first."""
    known = list(dict.fromkeys(str(k) for k in known))
    lower = {k.lower(): k for k in known}
    found = [lower[k] for k in difflib.get_close_matches(name.lower(), list(lower), n=limit, cutoff=CUTOFF)]
    bare = name.lower().lstrip("-")
    if not found and len(bare) >= 3:  # "--lora_rk" -> "--lora_r": one name is the start of the other
        found += [k for k in known if k not in found and len(k.lstrip("-")) >= 3
                  and (k.lower().lstrip("-").startswith(bare) or bare.startswith(k.lower().lstrip("-")))]
    return found[:limit]


def did_you_mean(name: str, known: Iterable[str]) -> str:
    """``" (did you mean 'x'?)"``, ``" (did you mean 'x' or 'y'?)"`` or ``""`` when nothing is close.

    Meant to be appended to an error message: ``f"unknown --template {name!r}{did_you_mean(name, names)}"``.
    """
    found = close_names(name, known)
    if not found:
        return ""
    quoted = [repr(k) for k in found]
    return f" (did you mean {quoted[0] if len(quoted) == 1 else ', '.join(quoted[:-1]) + ' or ' + quoted[-1]}?)"
