"""Alpaca-CoT: an instruction fine-tuning platform (the package behind the top-level scripts)."""

__version__ = "0.1.0"
