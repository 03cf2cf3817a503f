"""Multiple-choice accuracy from the log-likelihood of each option; no free text is parsed.

Each question is rendered through the model's own template, exactly as a training prompt
(``alpaca_cot.tokenize.encode_prompts``): the question, its options one per line, and a short
request to answer. k-shot examples are earlier dialogue turns (``history``) with their answers.
Then every option is scored as the reply:

- ``--choice_target text`` (default): the option's text followed by EOS ("the whole reply is
  this option"); options are compared by their mean log-probability per token, so longer
  options are not penalised for their length;
- ``--choice_target letter``: the option's letter alone; compared by its log-probability.

The prediction is the best-scoring option; an item is right when it is the gold answer. Items
with several gold letters (some MMCU questions) cannot be answered by one option: they are
counted as ``multi_answer`` and not scored.
"""

from __future__ import annotations

import torch

from .cache import JsonlCache, content_key
from .readers import language

ASK = {("en", "text"): "Answer with the correct option.",
       ("zh", "text"): "请直接写出正确选项的内容。",
       ("en", "letter"): "Answer with the letter of the correct option.",
       ("zh", "letter"): "请只回答正确选项的字母。"}
TARGETS = ("text", "letter")


def render_question(item: dict, target: str) -> str:
    """The question, its options (``A. ...``) and the request to answer, in the question's language."""
    lang = language(item["question"] + "".join(item["options"].values()))
    lines = [item["question"], *(f"{letter}. {text}" for letter, text in item["options"].items()), ASK[lang, target]]
    return "\n".join(lines)


def answer_text(item: dict, letter: str, target: str) -> str:
    return letter if target == "letter" else item["options"][letter]


def pick_shots(item: dict, pool: list[dict], k: int) -> list[dict]:
    """The first ``k`` answerable items of ``pool`` in the item's subject, the item itself excluded."""
    if k <= 0:
        return []
    shots = [p for p in pool if p["category"] == item["category"] and p is not item
             and len(p["answer"]) == 1 and p["answer"] in p["options"]]
    return shots[:k]


def prompt_record(item: dict, shots: list[dict], target: str) -> dict:
    history = [[render_question(s, target), answer_text(s, s["answer"], target)] for s in shots]
    return {"instruction": render_question(item, target), "input": "", "history": history}


@torch.inference_mode()
def continuation_logprobs(model, pairs: list[tuple[list[int], list[int]]], pad_id: int,
                          batch_size: int = 8) -> list[list[float]]:
    """Per-token log-probabilities of each continuation given its context (right-padded batches)."""
    order = sorted(range(len(pairs)), key=lambda i: -(len(pairs[i][0]) + len(pairs[i][1])))
    out: list[list[float] | None] = [None] * len(pairs)
    device = next(model.parameters()).device
    for start in range(0, len(order), batch_size):
        batch = order[start:start + batch_size]
        seqs = [pairs[i][0] + pairs[i][1] for i in batch]
        width = max(len(s) for s in seqs)
        ids = torch.tensor([s + [pad_id] * (width - len(s)) for s in seqs], device=device)
        mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in seqs], device=device)
        # Prompt-tuning methods put virtual tokens in front: the last ``width`` positions are ours.
        logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits[:, -width:]
        for row, i in enumerate(batch):
            context, continuation = pairs[i]
            # Position t predicts token t + 1: the continuation is predicted from len(context) - 1 on.
            scores = logits[row, len(context) - 1:len(context) - 1 + len(continuation)].float()
            target = torch.tensor(continuation, device=device)[:, None]
            out[i] = torch.log_softmax(scores, dim=-1).gather(-1, target)[:, 0].tolist()
    return out


def score_items(generator, items: list[dict], *, target: str = "text", num_fewshot: int = 0,
                fewshot_pool: list[dict] | None = None, batch_size: int = 8, cache: JsonlCache | None = None,
                fingerprint: str = "", progress: bool = True) -> list[dict]:
    """One result row per item: option scores, prediction, ``score`` 1/0 (None when not scorable)."""
    if target not in TARGETS:
        raise ValueError(f"--choice_target must be one of {', '.join(TARGETS)}, got {target!r}")
    cache = cache if cache is not None else JsonlCache(None)
    tokenizer = generator.tokenizer
    pool = fewshot_pool if fewshot_pool is not None else items
    scorable = [n for n, it in enumerate(items) if len(it["answer"]) == 1 and it["answer"] in it["options"]
                and len(it["options"]) >= 2]
    shots = {n: pick_shots(items[n], pool, num_fewshot) for n in scorable}
    prompts = generator.prompt_ids([prompt_record(items[n], shots[n], target) for n in scorable])
    pairs, keys, where = [], [], []
    for n, prompt in zip(scorable, prompts):
        for letter in items[n]["options"]:
            ids = tokenizer(answer_text(items[n], letter, target), add_special_tokens=False)["input_ids"]
            continuation = ids + [tokenizer.eos_token_id] if target == "text" else ids
            pairs.append((prompt, continuation))
            keys.append(content_key("choice", fingerprint, prompt, continuation))
            where.append((n, letter))
    todo = [i for i, k in enumerate(keys) if k not in cache]
    starts = range(0, len(todo), batch_size * 8)
    if progress and len(starts) > 1:
        from tqdm import tqdm

        starts = tqdm(starts, desc="scoring options", unit="chunk")
    for start in starts:  # stored as it goes: an interruption keeps the work
        part = todo[start:start + batch_size * 8]
        done = continuation_logprobs(generator.model, [pairs[i] for i in part], tokenizer.pad_token_id, batch_size)
        cache.put_many({keys[i]: [sum(lp), len(lp)] for i, lp in zip(part, done)})
    option_scores: dict[int, dict] = {}
    for key, (n, letter) in zip(keys, where):
        total, count = cache.get(key)
        option_scores.setdefault(n, {})[letter] = {"logprob": total, "tokens": count}
    rows = []
    for n, item in enumerate(items):
        row = {**item, "target": target}
        if n not in option_scores:
            status = "multi_answer" if len(item["answer"]) > 1 else "invalid"
            rows.append({**row, "prediction": None, "correct": None, "score": None, "status": status})
            continue
        scores = option_scores[n]
        value = {L: s["logprob"] / s["tokens"] if target == "text" else s["logprob"] for L, s in scores.items()}
        prediction = max(value, key=value.get)
        rows.append({**row, "option_scores": scores, "shots": len(shots[n]), "prediction": prediction,
                     "correct": prediction == item["answer"], "score": float(prediction == item["answer"]),
                     "status": "scored"})
    return rows
