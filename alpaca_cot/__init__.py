"""Alpaca-CoT: an instruction fine-tuning platform (the package behind the top-level scripts)."""

import logging
import warnings

__version__ = "0.1.0"

# bitsandbytes warns at import on CPUs with AVX512-BF16 that an optional Hub-downloaded kernel
# is missing; it falls back to its built-in one, so the warning only adds noise to every script.
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)

# peft 0.21 reads ``model.is_gradient_checkpointing`` when it wraps a model, which transformers 5.24
# deprecates with a FutureWarning on every get_peft_model / PeftModel.from_pretrained: the call is
# PEFT's, not ours, and there is nothing for a user to change.
warnings.filterwarnings("ignore", message=r"`is_gradient_checkpointing` is deprecated", category=FutureWarning)

# AdaLoRA saves its rank budget as rank_pattern keys naming lora_E parameters; on reload peft 0.21
# matches those keys against module names and warns that none matched. The pruned ranks are
# stored as zeros in lora_E, so the reloaded adapter computes what was trained (tests/
# test_peft_methods.py: logits within 1e-5); the warning would only alarm users.
warnings.filterwarnings("ignore", message=r"The following rank_pattern keys did not match any targeted module",
                        category=RuntimeWarning)
