"""Training-loop hooks that PEFT methods need (attached by ``peft_methods.method_callbacks``).

AdaLoRA re-allocates its rank budget from gradient statistics, which PEFT leaves to the
training loop: ``update_and_allocate`` must run after every optimizer step, before the
gradients are zeroed. The Hugging Face ``Trainer`` does not call it, so this callback does.
"""

from __future__ import annotations

import logging

from transformers import TrainerCallback

logger = logging.getLogger("alpaca_cot")


def fit_adalora_schedule(tinit: int, tfinal: int, total_step: int) -> tuple[int, int]:
    """``(tinit, tfinal)`` leaving a budgeting phase in ``total_step`` steps.

    Values that fit are kept. Otherwise the proportions of PEFT's documented example are used
    (10 % warm-up without pruning, 20 % final fine-tuning at the target budget).
    """
    if tinit + tfinal < total_step:
        return tinit, tfinal
    return total_step // 10, total_step // 5


class AdaLoraCallback(TrainerCallback):
    """Calls AdaLoRA's ``update_and_allocate`` after each optimizer step.

    At the start of training it sets ``total_step`` to the Trainer's step count (only known
    once the dataloader exists) and fits the ``tinit``/``tfinal`` schedule into it, with a
    warning when it had to shrink them (a run shorter than the preset's 1,200 steps).
    """

    @staticmethod
    def _tuner(model):
        tuner = getattr(model, "base_model", None)
        if not hasattr(tuner, "update_and_allocate"):
            raise TypeError(f"AdaLoraCallback needs a PEFT AdaLoRA model, got {type(model).__name__}")
        return tuner

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        tuner = self._tuner(model)
        config = tuner.peft_config[tuner.trainable_adapter_name]
        total = state.max_steps
        tinit, tfinal = fit_adalora_schedule(config.tinit, config.tfinal, total)
        if (tinit, tfinal) != (config.tinit, config.tfinal):
            logger.warning("AdaLoRA schedule tinit=%d + tfinal=%d leaves no rank-budgeting phase in %d training "
                           "steps; using tinit=%d, tfinal=%d (set --adalora_tinit + --adalora_tfinal below %d to "
                           "choose)", config.tinit, config.tfinal, total, tinit, tfinal, total)
        # The rank allocator holds this same config object, so the new values take effect at once.
        config.total_step, config.tinit, config.tfinal = total, tinit, tfinal

    def on_optimizer_step(self, args, state, control, model=None, **kwargs):
        # Gradients are still present here (the Trainer zeroes them after this event);
        # global_step counts the steps finished before this one, as PEFT's example expects.
        self._tuner(model).update_and_allocate(state.global_step)
