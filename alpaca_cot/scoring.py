"""Per-token log-probabilities of a token sequence under the model as served, and token bytes.

``token_logprobs`` runs one forward pass over the whole sequence (the adapter on, no sampling
settings applied: temperature, top-p and penalties shape sampling, not the model's
distribution) and reads, at each position, the log-softmax of the logits that predicted it.
The HTTP API (``alpaca_cot/api.py``) answers ``logprobs`` / ``top_logprobs`` / ``echo`` with it,
for the prompt and for a reply after it is generated.

``token_bytes`` gives the exact bytes of one token, so a token holding part of a UTF-8
character (common in Chinese text) is reported as its bytes rather than as U+FFFD.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import torch


@dataclass
class TokenScore:
    """One scored position: the token, its log-probability and the ``top`` most likely tokens there."""

    token: int
    logprob: float
    top: list[tuple[int, float]]  # (token id, log-probability), most likely first


@torch.inference_mode()
def token_logprobs(model, ids: list[int], start: int = 1, top: int = 0) -> list[TokenScore]:
    """Scores of ``ids[start:]``, each given every token before it.

    Args:
        model: a causal LM (a PEFT model too: prompt-learning methods put virtual tokens in
            front, so the last ``len(ids)`` positions of the logits are read).
        ids: token ids of the whole sequence, shape ``[len(ids)]``; the first token has no
            context and cannot be scored, so ``start`` must be >= 1.
        start: index of the first token to score.
        top: how many of the most likely tokens to list at each position (0: none).

    Returns:
        ``len(ids) - start`` :class:`TokenScore` (natural-log probabilities, float32 softmax).

    Raises:
        ValueError: ``start`` < 1 or beyond ``ids``.
    """
    if not 1 <= start <= len(ids):
        raise ValueError(f"start must be in 1..{len(ids)}, got {start}")
    if start == len(ids):
        return []
    device = next(model.parameters()).device
    input_ids = torch.tensor([ids], device=device)
    out = model(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), use_cache=False)
    # Position t predicts token t + 1: tokens start.. are predicted by positions start-1 .. len-2.
    logits = out.logits[0, -len(ids):][start - 1:len(ids) - 1].float()
    logprobs = torch.log_softmax(logits, dim=-1)
    targets = torch.tensor(ids[start:], device=device)
    chosen = logprobs.gather(-1, targets[:, None])[:, 0].tolist()
    if top > 0:
        values, indices = logprobs.topk(min(top, logprobs.shape[-1]), dim=-1)
        tops = [list(zip(i, v)) for i, v in zip(indices.tolist(), values.tolist())]
    else:
        tops = [[] for _ in chosen]
    return [TokenScore(t, lp, tp) for t, lp, tp in zip(ids[start:], chosen, tops)]


@lru_cache(maxsize=1)
def _byte_level_table() -> dict[str, int]:
    """The byte-level BPE alphabet (GPT-2's): character -> the byte it stands for.

    Bytes that are printable Latin-1 characters stand for themselves; the 68 others (controls,
    space, soft hyphen, ...) are written as the characters from U+0100 on, in byte order.
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("\u00a1"), ord("\u00ac") + 1),
                 *range(ord("\u00ae"), ord("\u00ff") + 1)]
    table = {chr(b): b for b in printable}
    extra = 0
    for b in range(256):
        if b not in printable:
            table[chr(256 + extra)] = b
            extra += 1
    return table


def token_bytes(tokenizer, token_id: int) -> bytes:
    """The bytes token ``token_id`` stands for (special tokens: their text).

    Byte-level BPE tokenizers (GPT-2, LLaMA 3, Qwen, SmolLM) map each token character back to a
    byte; SentencePiece byte-fallback tokens (``<0xE4>``) are that byte and ``▁`` is a space;
    other tokenizers give the UTF-8 of the token decoded alone.
    """
    piece = tokenizer.convert_ids_to_tokens(int(token_id))
    if piece is None:
        return b""
    if token_id in set(tokenizer.all_special_ids):
        return piece.encode("utf-8")
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None and type(backend.decoder).__name__ == "ByteLevel":
        table = _byte_level_table()
        if all(ch in table for ch in piece):
            return bytes(table[ch] for ch in piece)
    if len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">"):
        try:
            return bytes([int(piece[3:5], 16)])
        except ValueError:
            pass
    if piece.startswith("\u2581"):
        return (" " + tokenizer.decode([int(token_id)])).encode("utf-8")
    return tokenizer.decode([int(token_id)]).encode("utf-8")


def token_text(raw: bytes) -> str:
    """A token's text as OpenAI's API writes it: the UTF-8 text, or ``bytes:\\xNN...`` for a part of a character."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return "bytes:" + "".join(f"\\x{b:02x}" for b in raw)
