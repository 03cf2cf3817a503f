"""Padding-free training: the samples of a micro-batch concatenated into one row, isolated from each other.

``PackingCollator`` turns a micro-batch of ``{"input_ids", "labels"}`` samples into one row of
shape ``(1, total_tokens)`` with ``position_ids`` restarting at 0 for every sample and no
attention mask. The micro-batch still holds ``--per_gpu_train_batch_size`` samples and the
loss is still the mean over all their label tokens, so a packed step is the same optimizer
step as a padded one, minus the padding (``tests/test_packing.py`` checks logits and loss
through the Trainer).

Isolation: with no attention mask and no cache, transformers turns restarting
``position_ids`` into a block-diagonal causal mask (``masking_utils.find_packed_sequence_indices``),
dense over the whole row. For SDPA models we switch to ``sdpa_packed``, which runs SDPA once
per sample instead, so attention costs sum(L_i^2), not (sum L_i)^2. Whether a model really
isolates packed samples is checked, not assumed: ``probe_isolation`` runs two short samples
packed and alone before training, and training falls back to length-grouped padding (one log
line) when the check fails or cannot run, for remote-code models and for prompt-learning PEFT
methods (their virtual tokens are prepended to every row).

Measured on the embedded model (LoRA r=8 q,v, bf16 autocast, micro-batches of 4 bench512
samples, rows of 540-1400 tokens, 2 threads, 12 paired steps alternating in one process; the
2 cores were shared, so single pairs vary by +-15%), time per step relative to the line above:
- per-sample SDPA (``sdpa_packed``) vs SDPA with the dense block mask: 0.87 (0.75-0.98). Kept.
- logits only at label positions (``logits_to_keep``) vs at every position: 0.95 (0.89-1.05),
  same loss (7e-07). Kept (also ~30% less logits memory on this data).
- chunked cross-entropy (checkpointed 256-row chunks) on top: peak RSS -6% (2.81 vs 2.99 GB),
  time +1% / -5% in two runs, slower on the longest row in both. Dropped: not faster.
- ``torch.compile(dynamic=True)`` of the decoder: 172 s to compile, then 0.96 of eager per
  step (9 steps). Dropped: it pays back only after about an hour of training, and a new
  family or PEFT method can break or recompile it.
- threads: torch's default (one per physical core) is right; nothing to set.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .tokenize import IGNORE_INDEX

logger = logging.getLogger("alpaca_cot")

PACKED_SDPA = "sdpa_packed"


# ---------------------------------------------------------------- attention


def segment_starts(position_ids: torch.Tensor | None, length: int) -> list[int] | None:
    """Start offsets of the packed samples in a single row, or None when the row is not packed.

    A packed row's positions run 0, 1, ..., then restart at 0 for the next sample. Anything
    else (left padding in generation, a cache offset, several rows) is left to plain SDPA.
    """
    if position_ids is None or position_ids.shape[-1] != length or position_ids.numel() != length:
        return None
    pos = position_ids.reshape(-1)
    if pos[0] != 0:
        return None
    restart = pos[1:] != pos[:-1] + 1
    if not bool(restart.any()):
        return None
    if bool((pos[1:][restart] != 0).any()):
        return None
    return [0] + (restart.nonzero().flatten() + 1).tolist()


_LAST: list = [None, 0, None]  # (position_ids, length, starts): every layer of a forward gets the same tensor


def _segments(position_ids, length: int) -> list[int] | None:
    """``segment_starts``, computed once per forward (it reads the tensor: a device sync on GPUs)."""
    if position_ids is None:
        return None
    if _LAST[0] is not position_ids or _LAST[1] != length:
        _LAST[:] = position_ids, length, segment_starts(position_ids, length)
    return _LAST[2]


def packed_sdpa_attention(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None,
                          is_causal=None, **kwargs):
    """SDPA per packed sample (causal, no mask); plain SDPA for everything else.

    ``query``: (1, heads, T, head_dim); ``key``/``value``: (1, kv_heads, T, head_dim).
    Returns (1, T, heads, head_dim) like transformers' ``sdpa_attention_forward``.
    """
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    plain = (query.shape[0] != 1 or key.shape[2] != query.shape[2] or not getattr(module, "is_causal", True)
             or is_causal is False or kwargs.get("sliding_window") is not None or kwargs.get("s_aux") is not None
             or kwargs.get("softcap") is not None or kwargs.get("output_attentions"))
    starts = None if plain else _segments(kwargs.get("position_ids"), query.shape[2])
    if starts is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      is_causal=is_causal, **kwargs)
    gqa = query.shape[1] != key.shape[1]
    bounds = starts + [query.shape[2]]
    out = [F.scaled_dot_product_attention(query[:, :, s:e], key[:, :, s:e], value[:, :, s:e], dropout_p=dropout,
                                          scale=scaling, is_causal=True, enable_gqa=gqa)
           for s, e in zip(bounds[:-1], bounds[1:])]
    return torch.cat(out, dim=2).transpose(1, 2).contiguous(), None


def register_attention() -> None:
    """Make ``sdpa_packed`` a valid ``attn_implementation`` (its masks are SDPA's)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(PACKED_SDPA, packed_sdpa_attention)
    AttentionMaskInterface.register(PACKED_SDPA, sdpa_mask)


# ---------------------------------------------------------------- collators


class PackingCollator:
    """A micro-batch of samples -> one row: ``input_ids``, ``labels``, ``position_ids`` of shape (1, T).

    Labels are kept as they are, except the first label of every sample, which becomes -100:
    it would be the target of the previous sample's last token (our samples start with a
    prompt token, so this changes nothing in practice). No attention mask, no padding.

    With ``label_positions``, also ``logits_to_keep``: the positions whose next token is a
    label, so the model projects only those hidden states onto the vocabulary (prompt tokens
    need no logits); ``label_position_loss`` then scores them.
    """

    def __init__(self, label_positions: bool = False):
        self.label_positions = label_positions

    def __call__(self, features: list[dict]) -> dict:
        input_ids, labels, positions = [], [], []
        for f in features:
            ids = list(f["input_ids"])
            input_ids += ids
            labels += [IGNORE_INDEX] + list(f["labels"])[1:]
            positions += range(len(ids))
        as_row = lambda values: torch.tensor([values], dtype=torch.long)  # noqa: E731
        batch = {"input_ids": as_row(input_ids), "labels": as_row(labels), "position_ids": as_row(positions)}
        if self.label_positions:
            batch["logits_to_keep"] = (batch["labels"][0, 1:] != IGNORE_INDEX).nonzero().flatten()
        return batch


def label_position_loss(outputs, labels, num_items_in_batch=None):
    """Cross-entropy of logits computed only at label positions (``PackingCollator(label_positions=True)``).

    The Trainer's ``compute_loss_func``: the sum over label tokens divided by the label tokens
    of the whole optimizer step (``num_items_in_batch``), exactly what the model's own loss gives.
    """
    shifted = labels[..., 1:]
    targets = shifted[shifted != IGNORE_INDEX]
    logits = outputs.logits.reshape(-1, outputs.logits.shape[-1])
    if logits.shape[0] != targets.numel():
        raise RuntimeError(f"{logits.shape[0]} logits for {targets.numel()} label positions: the model ignored "
                           "logits_to_keep; train with --packing false")
    loss = F.cross_entropy(logits.float(), targets.to(logits.device), reduction="sum")
    return loss / (num_items_in_batch if num_items_in_batch is not None else max(targets.numel(), 1))


class PaddingCollator:
    """Pads to the longest sample: input_ids with pad, labels with -100, and an attention mask."""

    def __init__(self, tokenizer, pad_to_multiple_of: int | None = None):
        from transformers import DataCollatorForSeq2Seq

        self.inner = DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=IGNORE_INDEX, padding=True,
                                            pad_to_multiple_of=pad_to_multiple_of)

    def __call__(self, features: list[dict]) -> dict:
        return self.inner([{"input_ids": f["input_ids"], "labels": f["labels"]} for f in features])




def with_lengths(dataset):
    """Add the ``length`` column that the Trainer's length-grouped sampler reads (no row-by-row pass)."""
    if "length" in dataset.column_names:
        return dataset
    import pyarrow.compute as pc

    lengths = pc.list_value_length(dataset.data.column("input_ids")).to_pylist()
    return dataset.add_column("length", lengths)


# ---------------------------------------------------------------- deciding whether to pack


def _transformers_model(model):
    """The transformers model inside a PEFT wrapper (or the model itself)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def packing_blocker(model, trust_remote_code: bool) -> str | None:
    """Why ``model`` cannot train packed, without running it; None when a probe may decide."""
    if trust_remote_code:
        return "remote-code models are not known to isolate packed samples"
    for config in (getattr(model, "peft_config", None) or {}).values():
        if getattr(config, "is_prompt_learning", False):
            return f"{config.peft_type.value.lower()} prepends virtual tokens to every row"
    base = _transformers_model(model)
    if not hasattr(base, "config") or not hasattr(base.config, "_attn_implementation"):
        return "the model has no transformers attention implementation"
    return None


def probe_isolation(model, vocab_size: int, lengths=(5, 7)) -> tuple[float, float]:
    """Run two short samples packed into one row and alone; returns (leak, mismatch), relative.

    leak: how much the second sample's logits change when the first sample's tokens change
    (0 when isolated); mismatch: packed vs alone for the second sample. Both are divided by
    the largest logit of the second sample alone. Runs without gradients in train mode with
    dropout layers off (in eval mode a 4-bit bitsandbytes layer on the CPU repacks its weights
    into an inference-only layout that later backward passes cannot use), with the model's own
    ``config.use_cache`` (the cache trap shows up here as a leak).
    """
    device = next(model.parameters()).device
    gen = torch.Generator().manual_seed(0)
    first_a, first_b, second = (torch.randint(3, vocab_size, (n,), generator=gen)
                                for n in (lengths[0], lengths[0], lengths[1]))
    positions = torch.cat([torch.arange(lengths[0]), torch.arange(lengths[1])])[None].to(device)
    was_training = model.training
    model.train()
    dropouts = [m for m in model.modules() if isinstance(m, torch.nn.Dropout)]
    for m in dropouts:
        m.eval()
    try:
        with torch.no_grad():
            alone = model(input_ids=second[None].to(device)).logits[0].float()
            packed = [model(input_ids=torch.cat([first, second])[None].to(device),
                            position_ids=positions).logits[0, lengths[0]:].float() for first in (first_a, first_b)]
    finally:
        model.train(was_training)
    scale = alone.abs().max().item() or 1.0
    leak = (packed[0] - packed[1]).abs().max().item() / scale
    mismatch = (packed[0] - alone).abs().max().item() / scale
    return leak, mismatch


def enable_packing(model, trust_remote_code: bool, vocab_size: int) -> tuple[bool, str]:
    """Prepare ``model`` for packed training when it isolates packed samples.

    Switches SDPA models to ``sdpa_packed`` and probes; on any failure the attention
    implementation is restored. Returns (packing works, reason it does not / how it runs).
    """
    blocker = packing_blocker(model, trust_remote_code)
    if blocker:
        return False, blocker
    base = _transformers_model(model)
    before = base.config._attn_implementation
    if before == "sdpa":
        register_attention()
        base.set_attn_implementation(PACKED_SDPA)
    try:
        leak, mismatch = probe_isolation(model, vocab_size)
    except Exception as e:  # noqa: BLE001 - any failure means "cannot verify": fall back
        leak, mismatch, error = float("inf"), float("inf"), f"{type(e).__name__}: {e}"
    else:
        error = None
    # Isolated samples do not see each other at all (leak ~ 0, bit-exact on the CPU); packed logits
    # equal the sample's own up to matmul rounding (5.5e-05 absolute on the embedded model in fp32).
    half = next(model.parameters()).dtype in (torch.float16, torch.bfloat16)
    ok = leak <= 1e-4 and mismatch <= (5e-2 if half else 1e-3)
    attention = base.config._attn_implementation
    if not ok:
        if attention != before:
            base.set_attn_implementation(before)
        why = error or f"attention '{before}' does not isolate packed samples (leak {leak:.2g}, mismatch {mismatch:.2g})"
        return False, why
    return True, f"attention '{attention}', isolation checked (leak {leak:.1g}, mismatch {mismatch:.1g})"


def restore_attention(model) -> None:
    """Put SDPA back before saving a full model, so its config names a standard implementation."""
    base = _transformers_model(model)
    if getattr(base.config, "_attn_implementation", None) == PACKED_SDPA:
        base.set_attn_implementation("sdpa")


# ---------------------------------------------------------------- the plan train.py follows


@dataclass
class Batching:
    """How training batches are built: packed rows, or padding (length-grouped or not)."""

    packing: bool
    group_by_length: bool
    label_positions: bool  # logits only where a label follows (packed rows only)
    message: str

    def collator(self, tokenizer):
        return PackingCollator(self.label_positions) if self.packing else PaddingCollator(tokenizer)

    def loss_func(self):
        return label_position_loss if self.label_positions else None


def plan_batching(model, trust_remote_code: bool, vocab_size: int, packing: bool | None = None,
                  group_by_length: bool | None = None) -> Batching:
    """Packing where the model isolates packed samples (checked); else length-grouped padding.

    ``packing``/``group_by_length`` None mean "decide"; ``packing=True`` on a model that
    cannot pack raises ValueError with the reason.
    """
    if packing is False:
        grouped = bool(group_by_length)
        return Batching(False, grouped, False, "padding" + (", length-grouped" if grouped else "") + " (--packing false)")
    ok, how = enable_packing(model, trust_remote_code, vocab_size)
    if not ok:
        if packing:
            raise ValueError(f"--packing: {how}; drop --packing to fall back to length-grouped padding")
        grouped = group_by_length is not False
        return Batching(False, grouped, False, f"no packing ({how}); padding" + (", length-grouped" if grouped else ""))
    import inspect

    keep = "logits_to_keep" in inspect.signature(_transformers_model(model).forward).parameters
    # AdaLoRA adds its orthogonality regulariser inside the model's forward, and only when the
    # labels reach it: the label-position loss (labels kept out of the forward) would drop it.
    configs = getattr(model, "peft_config", {}).values()
    keep = keep and not any(str(getattr(c, "peft_type", "")).endswith("ADALORA") for c in configs)
    return Batching(True, bool(group_by_length), keep,
                    f"packing: each micro-batch in one row, samples isolated ({how})"
                    + ("; logits only at label positions" if keep else ""))
