"""Training budgets in supervised tokens or FLOPs, and counting what a fine-tune actually trained on.

``--budget_tokens N`` gives every run the same number of supervised tokens (label tokens: the
response tokens and their EOS, the tokens the loss is computed on) whatever its records'
lengths; ``--budget_flops F`` the same training compute. A budget is met with data, not with a
step count: the training samples are taken in a seeded random order (a fresh order for each
further pass when the budget exceeds the data) until their total reaches the budget, and the
run is one pass over exactly those samples. The overshoot is less than one sample, the learning
-rate schedule ends where the budget does, and no sample is repeated before all have been seen.

FLOPs follow the usual estimate for a decoder (Kaplan et al. 2020, "Scaling laws for neural
language models", C = 6 N D): 2 multiply-adds per weight and token forward, twice that
backward; N counts the weights of the model's linear layers (the output head included, the
embedding lookup not), D the tokens processed (prompt and response, no padding). With PEFT
the frozen weights get no weight gradients, so the true cost is nearer 4 N D; the same factor
is used for every method, so equal budgets stay equal.

``TokenCounter`` counts, during training, the supervised and input tokens of every micro-batch
that went through a training forward pass (per ``source`` too when the data carries that
column), so the metrics say what a run actually trained on, with or without a budget.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections import Counter

import numpy as np

from transformers import TrainerCallback

logger = logging.getLogger("alpaca_cot")
IGNORE_INDEX = -100
FLOPS_PER_PARAM_TOKEN = 6  # forward 2 + backward 4 (Kaplan et al. 2020)


class BudgetError(ValueError):
    """A budget that cannot be met as asked; the message says what to change."""


def token_counts(dataset) -> tuple[np.ndarray, np.ndarray]:
    """``(supervised, input)`` token counts per sample of a tokenized dataset (``labels``, ``input_ids``).

    Computed on the Arrow columns without a Python loop over samples, ``COUNT_BATCH`` rows at a time:
    flattening a million samples' labels at once held about 5 GB (215M tokens, measured).
    """
    import pyarrow.compute as pc

    if len(dataset) == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    supervised, inputs = [], []
    for table in dataset.select_columns(["input_ids", "labels"]).with_format("arrow").iter(batch_size=COUNT_BATCH):
        labels = table.column("labels").combine_chunks()
        parents = pc.list_parent_indices(labels).to_numpy()
        keep = pc.not_equal(pc.list_flatten(labels), IGNORE_INDEX).to_numpy(zero_copy_only=False)
        supervised.append(np.bincount(parents[keep], minlength=table.num_rows))
        inputs.append(pc.list_value_length(table.column("input_ids").combine_chunks()).to_numpy())
    return np.concatenate(supervised).astype(np.int64), np.concatenate(inputs).astype(np.int64)


COUNT_BATCH = 50_000  # rows per pass of token_counts


def linear_weights(model) -> int:
    """Weights of the model's linear layers (the N of C = 6 N D); tied or shared layers counted per use."""
    import torch

    total = 0
    for module in model.modules():
        if isinstance(module, torch.nn.Linear) and not hasattr(module, "base_layer"):
            total += module.weight.numel()
    return total


def select_budget(dataset, *, tokens: int | None = None, flops: float | None = None,
                  flops_per_token: float | None = None, seed: int = 42):
    """The samples of one run under a budget: ``(subset, info)``.

    Args:
        dataset: the tokenized training set (``input_ids``, ``labels``).
        tokens: supervised tokens to train on (exclusive with ``flops``).
        flops: training FLOPs to spend; needs ``flops_per_token`` (6 N).
        seed: the order in which samples are taken (a new permutation per pass).

    Returns:
        The selected samples (a ``datasets.Dataset``, repeats allowed after a full pass) and
        ``{"budget", "records", "passes", "supervised_tokens", "input_tokens", "flops"}``.

    Raises:
        BudgetError: both or neither budget given, a budget <= 0, or data without labels.
    """
    if (tokens is None) == (flops is None):
        raise BudgetError("give exactly one of --budget_tokens and --budget_flops")
    if (tokens is not None and tokens <= 0) or (flops is not None and flops <= 0):
        raise BudgetError("a budget must be > 0")
    supervised, inputs = token_counts(dataset)
    if flops is not None:
        if not flops_per_token:
            raise BudgetError("--budget_flops needs the model's FLOPs per token")
        cost, target, unit = inputs * float(flops_per_token), float(flops), "FLOPs"
    else:
        cost, target, unit = supervised.astype(float), float(tokens), "supervised tokens"
    total = float(cost.sum())
    if total <= 0:
        raise BudgetError(f"the training data has no {unit} to spend a budget on")
    rng = np.random.default_rng(seed)
    order, spent, passes = [], 0.0, 0
    while spent < target:
        perm = rng.permutation(len(cost))
        cumulative = spent + np.cumsum(cost[perm])
        stop = int(np.searchsorted(cumulative, target))  # first position reaching the budget
        take = perm[:stop + 1] if stop < len(perm) else perm
        order.append(take)
        spent = float(cumulative[len(take) - 1])
        passes += 1
    indices = np.concatenate(order)
    info = {"budget": {"tokens": int(tokens)} if tokens is not None else {"flops": float(flops)},
            "records": int(len(indices)), "passes": passes,
            "supervised_tokens": int(supervised[indices].sum()), "input_tokens": int(inputs[indices].sum())}
    if flops_per_token:
        info["flops"] = float(info["input_tokens"] * flops_per_token)
    if passes > 1:
        logger.warning("budget of %s %s is %.2f passes over the %d training samples: samples repeat",
                       f"{target:,.0f}", unit, target / total, len(cost))
    logger.info("budget %s %s: %d samples (%d pass%s), %s supervised tokens, %s input tokens", f"{target:,.0f}",
                unit, len(indices), passes, "es" if passes > 1 else "", f"{info['supervised_tokens']:,}",
                f"{info['input_tokens']:,}")
    return dataset.select(indices.tolist()), info


def data_totals(dataset) -> dict:
    """Sizes of a tokenized training set, for estimates: samples, supervised and input tokens."""
    supervised, inputs = token_counts(dataset)
    return {"samples": int(len(inputs)), "supervised_tokens": int(supervised.sum()), "input_tokens": int(inputs.sum())}


def _fingerprint(ids) -> bytes:
    array = ids.detach().cpu().numpy()
    return hashlib.blake2b(array.tobytes() + str(array.shape).encode(), digest_size=16).digest()


class RunTotals(TrainerCallback):
    """Totals of a run that survive a resume: the sum of the per-step training losses (and a subclass's
    counts), written beside every checkpoint and read back by :meth:`restore`.

    The Trainer's ``train_loss`` averages only the steps of the current ``train()`` call, so a run
    stopped and resumed would report the mean of its second part; :meth:`whole_run_loss` turns it
    into the mean over every step, as a run that went straight through reports. Set ``trainer``
    after building the Trainer: the loss sum at a checkpoint is read from it.
    """

    COUNTS_FILE = "alpaca_cot_counts.json"

    def __init__(self):
        self.trainer = None
        self.resumed_step = 0
        self.resumed_loss_sum = 0.0

    def saved_counts(self) -> dict:  # a subclass's own counts, saved with the loss sum
        return {}

    def restore_counts(self, counts: dict) -> None:
        pass

    @classmethod
    def counts_file(cls, process_index: int) -> str:
        return cls.COUNTS_FILE if process_index == 0 else cls.COUNTS_FILE.replace(".json", f"_{process_index}.json")

    def on_save(self, args, state, control, **kwargs):
        """Write the totals so far beside the checkpoint just saved (``checkpoint-<step>``), one file per
        process (as the Trainer's ``rng_state_<i>.pth``)."""
        import json
        import os

        folder = os.path.join(args.output_dir, f"checkpoint-{state.global_step}")
        if not os.path.isdir(folder):
            return
        # The Trainer keeps the losses of this call's steps as a drained sum plus a running tensor
        # (transformers 5.x private attributes; the mean train_loss it reports is made from them).
        trainer, session = self.trainer, None
        if trainer is not None and hasattr(trainer, "_total_loss_scalar") and hasattr(trainer, "_tr_loss"):
            session = trainer._total_loss_scalar + float(trainer._tr_loss.item())
        totals = {"step": state.global_step, **self.saved_counts(),
                  "loss_sum": None if session is None else self.resumed_loss_sum + session}
        with open(os.path.join(folder, self.counts_file(args.process_index)), "w", encoding="utf-8") as f:
            json.dump(totals, f)

    def restore(self, checkpoint: str, process_index: int = 0) -> None:
        """Continue the totals this process had in the run that wrote ``checkpoint`` (warns when it has none)."""
        import json
        from pathlib import Path

        path = Path(checkpoint) / self.counts_file(process_index)
        if not path.exists():
            logger.warning("%s has no %s (written by an older version): token counts and train_loss cover only "
                           "the steps after the resume", checkpoint, self.COUNTS_FILE)
            return
        totals = json.loads(path.read_text(encoding="utf-8"))
        self.restore_counts(totals)
        if totals.get("loss_sum") is not None:
            self.resumed_step, self.resumed_loss_sum = totals["step"], totals["loss_sum"]

    def whole_run_loss(self, session_loss: float | None, global_step: int) -> float | None:
        """The mean training loss over every step of a resumed run, from the Trainer's mean over this call's steps."""
        if session_loss is None or not self.resumed_step or global_step <= 0:
            return session_loss
        return (self.resumed_loss_sum + session_loss * (global_step - self.resumed_step)) / global_step


class TokenCounter(RunTotals):
    """Counts the tokens of the micro-batches that trained, per source when samples carry ``source``.

    It wraps the data collator (which sees every batch, with its labels and sources) and hooks
    the model's forward (which knows whether a batch trained): the collator files each batch's
    counts under a digest of its ``input_ids``, and a training-mode forward with those ids takes
    them. Batches built but never trained (the data loader reads one ahead; evaluation batches)
    are therefore never counted, and labels the loss function takes out of the forward's
    arguments do not matter. Also records the wall time and tokens of the first steps, which
    ``study.py --estimate`` uses.

    A resumed run continues the counts (see :class:`RunTotals`): a run stopped and resumed reports
    the same totals and mean training loss as one that ran through.
    """

    FIRST_STEPS = 16

    def __init__(self, collator):
        super().__init__()
        self.collator = collator
        self.pending: dict[bytes, list] = {}
        self.supervised = 0
        self.inputs = 0
        self.by_source: Counter = Counter()
        self.unmatched = 0
        self.planned_steps = None
        self.samples_per_step = None
        self.steps: list[list] = []  # [seconds, input tokens, supervised tokens] of the first steps
        self._step_start = None
        self._step_tokens = (0, 0)

    # ---- the collator side
    def __call__(self, features: list[dict]) -> dict:
        batch = self.collator(features)
        labels = batch["labels"]
        supervised = int((labels != IGNORE_INDEX).sum())
        mask = batch.get("attention_mask")
        inputs = int(mask.sum()) if mask is not None else int(batch["input_ids"].numel())
        sources = Counter()
        for f in features:
            if f.get("source") is not None:
                sources[str(f["source"])] += sum(1 for x in f["labels"][1:] if x != IGNORE_INDEX)
        self.pending.setdefault(_fingerprint(batch["input_ids"]), []).append((supervised, inputs, sources))
        return batch

    # ---- the model side
    def attach(self, model):
        """Hook ``model``'s forward; returns the hook handle."""
        return model.register_forward_pre_hook(self._forward_hook, with_kwargs=True)

    def _forward_hook(self, module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        if ids is None:
            return None
        queue = self.pending.get(_fingerprint(ids))
        entry = queue.pop(0) if queue else None
        if queue is not None and not queue:
            del self.pending[_fingerprint(ids)]
        if not module.training:
            return None  # an evaluation batch: its counts are dropped
        if entry is None:  # a batch that did not come through our collator
            self.unmatched += 1
            labels = kwargs.get("labels")
            entry = (int((labels != IGNORE_INDEX).sum()) if labels is not None else 0, int(ids.numel()), Counter())
        supervised, inputs, sources = entry
        self.supervised += supervised
        self.inputs += inputs
        self.by_source.update(sources)
        return None

    # ---- the trainer side (timings of the first steps)
    def on_train_begin(self, args, state, control, **kwargs):
        self.planned_steps = state.max_steps
        self.samples_per_step = args.per_device_train_batch_size * args.gradient_accumulation_steps * args.world_size

    def on_step_begin(self, args, state, control, **kwargs):
        self._step_start = time.perf_counter()
        self._step_tokens = (self.inputs, self.supervised)

    def on_step_end(self, args, state, control, **kwargs):
        if self._step_start is not None and len(self.steps) < self.FIRST_STEPS:
            self.steps.append([round(time.perf_counter() - self._step_start, 4), self.inputs - self._step_tokens[0],
                               self.supervised - self._step_tokens[1]])

    def saved_counts(self) -> dict:
        return {"supervised_tokens": self.supervised, "input_tokens": self.inputs,
                "supervised_tokens_by_source": dict(self.by_source)}

    def restore_counts(self, counts: dict) -> None:
        self.supervised, self.inputs = counts["supervised_tokens"], counts["input_tokens"]
        self.by_source = Counter(counts.get("supervised_tokens_by_source") or {})

    def totals(self) -> dict:
        """The counts over all processes (summed when training is distributed)."""
        supervised, inputs, by_source = self.supervised, self.inputs, dict(self.by_source)
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            import torch

            t = torch.tensor([supervised, inputs], dtype=torch.long)
            dist.all_reduce(t)
            supervised, inputs = int(t[0]), int(t[1])
            gathered = [None] * dist.get_world_size()
            dist.all_gather_object(gathered, by_source)
            by_source = sum((Counter(g) for g in gathered), Counter())
        out = {"supervised_tokens": supervised, "input_tokens": inputs, "planned_steps": self.planned_steps,
               "samples_per_step": self.samples_per_step, "first_steps": self.steps}
        if by_source:
            out["supervised_tokens_by_source"] = dict(sorted(by_source.items()))
        if self.unmatched:
            logger.warning("%d training batches did not come through the token counter's collator; their tokens "
                           "were counted from the forward's arguments", self.unmatched)
            out["uncounted_batches"] = self.unmatched
        return out


# ---------------------------------------------------------------- train.py's hooks


def check_budget(data_args, ft_args) -> None:
    """Refuse budget and decontamination settings that cannot work; raises BudgetError saying what to change."""
    tokens, flops = getattr(ft_args, "budget_tokens", None), getattr(ft_args, "budget_flops", None)
    if tokens is not None and flops is not None:
        raise BudgetError("give one budget: --budget_tokens or --budget_flops, not both")
    if (tokens is not None and tokens <= 0) or (flops is not None and flops <= 0):
        raise BudgetError("--budget_tokens / --budget_flops must be > 0")
    if (tokens is not None or flops is not None) and ft_args.max_steps > 0:
        raise BudgetError("a budget decides how many steps run: drop --max_steps (or set it to -1)")
    ngrams = getattr(data_args, "decontaminate_ngrams", [13, 8])
    if len(ngrams) != 2 or min(ngrams) < 1:
        raise BudgetError(f"--decontaminate_ngrams takes two sizes >= 1 (English words, Chinese characters), "
                          f"got {ngrams}")


def apply_budget(train_set, model, ft_args):
    """``(train_set, info, ft_args)``: the budget's samples and a one-pass schedule, or everything unchanged.

    ``info`` is ``select_budget``'s (None without a budget); the returned ``ft_args`` trains one
    epoch (``max_steps`` -1) over the selected samples.
    """
    import dataclasses

    tokens, flops = getattr(ft_args, "budget_tokens", None), getattr(ft_args, "budget_flops", None)
    if tokens is None and flops is None:
        return train_set, None, ft_args
    per_token = FLOPS_PER_PARAM_TOKEN * linear_weights(model)
    subset, info = select_budget(train_set, tokens=tokens, flops=flops, flops_per_token=per_token, seed=ft_args.seed)
    return subset, info, dataclasses.replace(ft_args, max_steps=-1, epochs=1)


def source_losses(trainer, val_set) -> dict:
    """``{"eval_loss_by_source": {source: loss}}`` when the validation set mixes sources, else ``{}``."""
    if val_set is None or "source" not in val_set.column_names or trainer.args.eval_strategy == "no":
        return {}
    sources = val_set["source"]
    names = sorted({str(s) for s in sources})
    if len(names) < 2:
        return {}
    losses = {}
    for name in names:
        rows = [i for i, s in enumerate(sources) if str(s) == name]
        result = trainer.evaluate(eval_dataset=val_set.select(rows), metric_key_prefix="eval_source")
        losses[name] = result.get("eval_source_loss")
    logger.info("validation loss by source: %s", ", ".join(f"{k} {v:.4f}" for k, v in losses.items()))
    return {"eval_loss_by_source": losses, "eval_samples_by_source": {n: sources.count(n) for n in names}}
