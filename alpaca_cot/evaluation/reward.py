"""``evaluate.py --task reward``: pairwise accuracy on held-out preference pairs.

Each pair (``chosen``, ``rejected`` for one prompt; the records of ``alpaca_cot.data.preference``) is
scored twice and counts as right when the chosen response scores higher:

- a reward model (``--stage rm`` output): the scalar reward of prompt + response;
- any other model (base, SFT, DPO/ORPO/SimPO/KTO fine-tune): the summed log-probability of the
  response tokens (EOS included) given the prompt, the quantity DPO's implicit reward is built on
  (Rafailov et al. 2023, eq. 5: r = beta * log(pi / pi_ref); with the reference left out, the margin
  is the policy's own preference).

Prompts and responses are encoded by ``alpaca_cot.pairs`` (the training encoding) without truncation.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from ..pairs import encode_pairs
from .readers import language


def load_reward_model(lora_dir: str, model_args=None):
    """``(model, tokenizer, template, name)`` of a ``--stage rm`` output directory."""
    from .. import peft_methods  # noqa: F401  registers our PEFT methods before any adapter loads
    from ..infer import _pick_base, fine_tune_metadata
    from ..loader import load_model, load_tokenizer, resolve_dtype, resolve_spec
    from ..templates import get_template

    meta = fine_tune_metadata(lora_dir)
    adapter = (Path(lora_dir) / "adapter_config.json").exists()
    base = getattr(model_args, "model_name_or_path", None) or (_pick_base(None, meta) if adapter else lora_dir)
    spec, path = resolve_spec(getattr(model_args, "model_type", None) or meta.get("model_type"), base)
    template = get_template(getattr(model_args, "template", None) or meta.get("template") or spec.template)
    tokenizer = load_tokenizer(lora_dir if (Path(lora_dir) / "tokenizer_config.json").exists() else path, spec)
    model = load_model(path, spec, dtype=resolve_dtype(getattr(model_args, "compute_dtype", "auto")),
                       quantization_bit=meta.get("quantization_bit"), auto_class=meta.get("model_class"),
                       num_labels=1)
    model.config.pad_token_id = tokenizer.pad_token_id
    if adapter:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, lora_dir)
    return model.eval(), tokenizer, template, f"{Path(path).name} + {Path(lora_dir).name} (reward model)"


def _batches(rows: list, size: int):
    for start in range(0, len(rows), size):
        yield rows[start:start + size]


@torch.inference_mode()
def response_logps(model, pad_id: int, encoded: list[dict], side: str, batch_size: int) -> list[float]:
    """Summed log-probability of ``row[side]`` after ``row["prompt_ids"]``, for every row (right-padded batches)."""
    device = next(model.parameters()).device
    out = []
    for batch in _batches(encoded, batch_size):
        seqs = [r["prompt_ids"] + r[side] for r in batch]
        width = max(len(s) for s in seqs)
        ids = torch.tensor([s + [pad_id] * (width - len(s)) for s in seqs], device=device)
        mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in seqs], device=device)
        logits = model(input_ids=ids, attention_mask=mask).logits[:, -width:].float()  # virtual tokens first
        logps = torch.log_softmax(logits[:, :-1], dim=-1).gather(-1, ids[:, 1:, None]).squeeze(-1)
        for row, lp in zip(batch, logps):
            start = len(row["prompt_ids"]) - 1  # position predicting the first response token
            out.append(float(lp[start:start + len(row[side])].sum()))
    return out


@torch.inference_mode()
def rewards(model, pad_id: int, sequences: list[list[int]], batch_size: int) -> list[float]:
    """The reward model's scalar for each whole sequence (right-padded: read at the last real token)."""
    device = next(model.parameters()).device
    out = []
    for batch in _batches(sequences, batch_size):
        width = max(len(s) for s in batch)
        ids = torch.tensor([s + [pad_id] * (width - len(s)) for s in batch], device=device)
        mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in batch], device=device)
        out += model(input_ids=ids, attention_mask=mask).logits[:, 0].float().tolist()
    return out


def score_pairs(records: list[dict], model, tokenizer, template, *, reward_model: bool,
                batch_size: int = 8) -> list[dict]:
    """One row per pair: chosen/rejected scores, ``margin`` (chosen - rejected) and ``score`` (1.0 if > 0)."""
    longest = 10 ** 9  # no truncation when scoring
    encoded = encode_pairs(records, tokenizer, template, longest)
    if len(encoded) != len(records):
        raise ValueError("a pair has identical chosen and rejected tokens; it cannot be ranked")
    pad = tokenizer.pad_token_id
    if reward_model:
        chosen = rewards(model, pad, [r["prompt_ids"] + r["chosen_ids"] for r in encoded], batch_size)
        rejected = rewards(model, pad, [r["prompt_ids"] + r["rejected_ids"] for r in encoded], batch_size)
    else:
        chosen = response_logps(model, pad, encoded, "chosen_ids", batch_size)
        rejected = response_logps(model, pad, encoded, "rejected_ids", batch_size)
    rows = []
    for i, (record, c, r) in enumerate(zip(records, chosen, rejected)):
        rows.append({"id": f"{record.get('source', 'pairs')}:{i}", "category": language(record["instruction"]),
                     "instruction": record["instruction"], "chosen_score": c, "rejected_score": r,
                     "margin": c - r, "score": float(c > r)})
    return rows


def run_reward(args, model_args=None, generator=None) -> dict:
    """``evaluate.py --task reward``: writes ``results.jsonl`` and ``summary.json`` like every task."""
    from .readers import load_items
    from ..metadata import METADATA_FILE
    from .runner import _write, summarize

    started = time.time()
    out = Path(args.output_dir or "eval_out/reward")
    records = load_items("reward", args.data)
    if args.max_samples:
        records = records[:args.max_samples]
    meta_file = Path(args.lora_dir) / METADATA_FILE if args.lora_dir else None
    is_rm = bool(meta_file and meta_file.exists() and json.loads(meta_file.read_text()).get("stage") == "rm")
    if is_rm and not args.base_only:
        model, tokenizer, template, name = load_reward_model(args.lora_dir, model_args)
    else:
        if generator is None:
            from ..infer import load_generator

            m = model_args
            generator = load_generator(args.lora_dir, getattr(m, "model_name_or_path", None),
                                       getattr(m, "model_type", None), getattr(m, "template", None),
                                       getattr(m, "quantization_bit", None), getattr(m, "compute_dtype", "auto"),
                                       base_only=args.base_only)
        model, tokenizer, template, name = generator.model, generator.tokenizer, generator.template, generator.name
    rows = score_pairs(records, model, tokenizer, template, reward_model=is_rm and not args.base_only,
                       batch_size=args.batch_size)
    out.mkdir(parents=True, exist_ok=True)
    margins = [r["margin"] for r in rows]
    summary = {**summarize("reward", rows), "metric": "pairwise accuracy",
               "scored_by": "reward model" if is_rm and not args.base_only else "summed response log-probability",
               "mean_margin": sum(margins) / len(margins) if margins else None,
               "data": " ".join(args.data), "model": name, "lora_dir": args.lora_dir, "base_only": args.base_only,
               "max_samples": args.max_samples, "seconds": round(time.time() - started, 1), "output_dir": str(out),
               "args": {k: v for k, v in vars(args).items() if k != "judge_api_key"}}
    _write(out / "results.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    _write(out / "summary.json", json.dumps(summary, indent=1, ensure_ascii=False) + "\n")
    return summary
