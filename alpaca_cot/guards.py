"""No silent NaN: stop training at the first non-finite loss or gradient, with the reason.

The Hugging Face ``Trainer`` by default replaces a NaN/inf step loss by the running average of
earlier ones (``logging_nan_inf_filter``), so a model that only ever produces NaN logs a loss of 0,
trains into NaN weights and is saved as if it were fine. ``FiniteGuard`` checks the model once
before training (a broken checkpoint: non-finite weights or buffers) and the trainable gradients
before every optimizer step (a NaN loss gives NaN gradients), and raises ``TrainingDiverged``;
``train.run`` then writes nothing as a finished fine-tune. Works with every Trainer subclass
(TRL's included), since it is a callback.
"""

from __future__ import annotations

import math

import torch
from transformers import TrainerCallback

LIKELY_CAUSES = ("likely causes: half-precision overflow (try --compute_dtype fp32, or bf16 instead of fp16), a "
                 "learning rate too high (--learning_rate), or a broken base checkpoint (weights or buffers that "
                 "are NaN/inf or were never initialised)")


class TrainingDiverged(RuntimeError):
    """Training produced a non-finite loss or gradient; the message names the step and likely causes."""


def non_finite_tensors(model, limit: int = 5) -> tuple[int, list[str]]:
    """How many floating-point parameters and buffers of ``model`` hold NaN/inf, and the first names."""
    count, names = 0, []
    for name, tensor in list(model.named_parameters()) + list(model.named_buffers()):
        if tensor.is_floating_point() and tensor.device.type != "meta" and not torch.isfinite(tensor).all():
            count += 1
            if len(names) < limit:
                names.append(name)
    return count, names


class FiniteGuard(TrainerCallback):
    """Raises ``TrainingDiverged`` on non-finite weights at the start or non-finite gradients at a step.

    Args:
        output_dir: named in the message (nothing there is marked finished).
    """

    def __init__(self, output_dir: str):
        self.output_dir = output_dir
        self.last_loss: tuple[int, float] | None = None  # (step, loss) of the last finite logged loss

    def _fail(self, what: str, step: int) -> None:
        last = (f"the last finite loss was {self.last_loss[1]:.4f} at step {self.last_loss[0]}"
                if self.last_loss else "no finite loss was logged before")
        raise TrainingDiverged(f"training stopped at step {step}: {what}; {last}. Nothing was saved as a finished "
                               f"fine-tune in {self.output_dir} (checkpoint-N folders of earlier steps are kept). "
                               f"{LIKELY_CAUSES}")

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        count, names = non_finite_tensors(model)
        if count:
            raise TrainingDiverged(f"the model holds NaN/inf values before training, in {count} tensors (first: "
                                   f"{', '.join(names)}): the checkpoint is broken or was loaded wrongly; nothing "
                                   "was trained or saved")

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        bad = [name for name, p in model.named_parameters()
               if p.requires_grad and p.grad is not None and not torch.isfinite(p.grad).all()]
        if bad:
            self._fail(f"the loss or its gradients are not finite (NaN/inf gradients in {len(bad)} trainable "
                       f"tensors, first: {bad[0]})", state.global_step + 1)

    def on_log(self, args, state, control, logs=None, **kwargs):
        loss = (logs or {}).get("loss")
        if loss is None:
            return
        if not math.isfinite(loss):
            self._fail(f"the logged loss is {loss}", state.global_step)
        self.last_loss = (state.global_step, loss)
