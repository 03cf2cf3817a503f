"""Alpaca-CoT: an instruction fine-tuning platform (the package behind the top-level scripts)."""

import logging

__version__ = "0.1.0"

# bitsandbytes warns at import on CPUs with AVX512-BF16 that an optional Hub-downloaded kernel
# is missing; it falls back to its built-in one, so the warning only adds noise to every script.
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
