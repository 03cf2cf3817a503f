"""Load a fine-tune (base + adapter) from its output directory and generate with it.

Every inference script (generate, predict, server, web, evaluate) goes through
``load_generator``; ``--lora_dir OUT`` alone is enough because base model, model_type and
template come from ``OUT/alpaca_cot.json``. Flags override the metadata.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import torch

from .batching import RefillServer, Request, check_own_loop, generate_refill, needs_own_loop, supports_refill
from .loader import load_model, load_tokenizer, resolve_dtype, resolve_spec
from .metadata import METADATA_FILE, read_metadata
from .models import ModelSpec
from .templates import get_template
from .tokenize import encode_prompts

logger = logging.getLogger(__name__)


def fine_tune_metadata(lora_dir: str) -> dict:
    """The metadata of ``lora_dir``; a bare PEFT adapter folder yields its base model only."""
    if (Path(lora_dir) / METADATA_FILE).exists() or not (Path(lora_dir) / "adapter_config.json").exists():
        return read_metadata(lora_dir)
    config = json.loads((Path(lora_dir) / "adapter_config.json").read_text())
    return {"base_model": config.get("base_model_name_or_path")}


def _pick_base(flag: str | None, meta: dict) -> str | None:
    if flag:
        return flag
    local = meta.get("base_model_path")
    if local and os.path.isdir(local):
        return local
    return meta.get("base_model")


@dataclass
class Generator:
    """A model ready to answer unified records (``instruction``/``input``/``history``/``system``)."""

    model: object
    tokenizer: object
    template: object
    spec: ModelSpec
    name: str
    meta: dict

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def prompt_ids(self, records: list[dict]) -> list[list[int]]:
        return encode_prompts(records, self.tokenizer, self.template)

    def _stop_kwargs(self, *extra) -> dict:
        """``stopping_criteria`` for the template's stop strings and end-of-turn suffix (plus ``extra``)."""
        from transformers import StoppingCriteriaList

        from .stop_strings import StopOnStrings

        if getattr(self, "_stop_criteria", None) is None:
            stops = list(getattr(self.template, "stop_strings", ())) + [getattr(self.template, "response_suffix", "")]
            stops = [s for s in stops if s]
            self._stop_criteria = [StopOnStrings(self.tokenizer, stops)] if stops else []
        criteria = self._stop_criteria + list(extra)
        return {"stopping_criteria": StoppingCriteriaList(criteria)} if criteria else {}

    def _batch_tensors(self, batch_ids: list[list[int]]):
        """Left-padded ``input_ids`` and ``attention_mask`` for a batch of prompts."""
        width = max(len(ids) for ids in batch_ids)
        pad = self.tokenizer.pad_token_id
        input_ids = torch.tensor([[pad] * (width - len(ids)) + ids for ids in batch_ids], device=self.device)
        mask = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for ids in batch_ids], device=self.device)
        return input_ids, mask

    @torch.inference_mode()
    def generate_ids(self, prompts: list[list[int]], gen_kwargs: dict) -> list[list[int]]:
        """Generate for one batch of prompt ids; returns the new tokens of each, cut at EOS.

        Prompt-learning adapters go through ``alpaca_cot/batching.py``'s loop (PEFT's ``generate``
        mishandles their virtual tokens); raises ValueError for settings that loop lacks.
        """
        if needs_own_loop(self.model):
            check_own_loop(self.model, gen_kwargs)
            return generate_refill(self.model, prompts, gen_kwargs, len(prompts), self.tokenizer.pad_token_id,
                                   self.tokenizer.eos_token_id, self._stop_kwargs().get("stopping_criteria"))
        input_ids, mask = self._batch_tensors(prompts)
        out = self.model.generate(input_ids=input_ids, attention_mask=mask, pad_token_id=self.tokenizer.pad_token_id,
                                  eos_token_id=self.tokenizer.eos_token_id, **self._stop_kwargs(), **gen_kwargs)
        results = []
        for row in out[:, input_ids.shape[1]:].tolist():
            if self.tokenizer.eos_token_id in row:
                row = row[: row.index(self.tokenizer.eos_token_id)]
            results.append(row)
        return results

    def generate_many(self, prompts: list[list[int]], gen_kwargs: dict, batch_size: int,
                      on_result: Callable[[int, list[int]], None] | None = None) -> list[list[int]]:
        """New tokens for every prompt, ``batch_size`` rows at a time, in prompt order.

        Where the model allows it a finished row is refilled with the next prompt at once
        (``alpaca_cot/batching.py``); otherwise prompts go in fixed batches through ``generate``.
        ``on_result(i, ids)`` is called as each prompt is finished.
        """
        check_own_loop(self.model, gen_kwargs)
        if (needs_own_loop(self.model) or batch_size > 1 and len(prompts) > 1) and supports_refill(self.model,
                                                                                                 gen_kwargs):
            return generate_refill(self.model, prompts, gen_kwargs, batch_size, self.tokenizer.pad_token_id,
                                   self.tokenizer.eos_token_id, self._stop_kwargs().get("stopping_criteria"),
                                   on_result)
        results: list[list[int]] = []
        for start in range(0, len(prompts), batch_size):
            for ids in self.generate_ids(prompts[start:start + batch_size], gen_kwargs):
                if on_result is not None:
                    on_result(len(results), ids)
                results.append(ids)
        return results

    def decode(self, ids: list[int]) -> str:
        return self.template.clean_response(self.tokenizer.decode(ids, skip_special_tokens=True))

    def generate(self, records: list[dict], gen_kwargs: dict, batch_size: int = 1, seed: int | None = None,
                 progress: bool = False) -> list[str]:
        """Answers for ``records`` in order; prompts are generated longest first, ``batch_size`` at a time."""
        prompts = self.prompt_ids(records)
        order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=len(prompts), desc="generating", unit="item")
        if seed is not None:
            torch.manual_seed(seed)
        try:
            new = self.generate_many([prompts[i] for i in order], gen_kwargs, batch_size,
                                     on_result=(lambda i, ids: bar.update(1)) if bar is not None else None)
        finally:
            if bar is not None:
                bar.close()
        answers: list[str] = [""] * len(prompts)
        for i, ids in zip(order, new):
            answers[i] = self.decode(ids)
        if len(answers) > 1 and not any(answers):
            ended = sum(1 for ids in new if not ids)
            logger.warning("the model's answer is empty for all %d prompts of this batch (%d ended at once with EOS, "
                           "the rest produced only a stop string or whitespace): the model is probably broken (NaN "
                           "or untrained weights, a wrong --template or tokenizer)", len(answers), ended)
        return answers

    def stream(self, record: dict, gen_kwargs: dict, stats: dict | None = None,
               stop: threading.Event | None = None, server: RefillServer | None = None,
               seed: int | None = None, prompt: list[int] | None = None,
               use_template: bool = True) -> Iterator[str]:
        """Yield the answer to one record piece by piece as tokens are generated.

        Generation stops as soon as the consumer stops iterating (``close()``, a dropped client)
        or ``stop`` is set (e.g. by a Ctrl-C handler). ``stats``, when given, receives
        ``prompt_tokens``, ``completion_tokens`` and ``finish_reason`` ("stop" or "length").
        With ``server`` (which must support ``gen_kwargs``: ``supports_refill``) the record joins
        that server's running batch, sampling from a generator seeded with ``seed``; otherwise it
        is generated alone here, from torch's global random state (prompt-learning adapters: through a
        one-row server of ``alpaca_cot/batching.py``, as PEFT's ``generate`` mishandles them).
        ``stats`` also gets the new ``token_ids`` (cut before EOS, through a stop string).

        ``prompt`` (token ids) replaces the record's rendered prompt. With ``use_template`` False
        the template plays no part in the reply either: it is the new tokens decoded as they are,
        neither cut at the template's stop strings nor stripped (the API's ``/v1/completions``).
        """
        from transformers import StoppingCriteria, StoppingCriteriaList, TextIteratorStreamer

        if server is None and needs_own_loop(self.model):
            check_own_loop(self.model, gen_kwargs)
            if getattr(self, "_solo_server", None) is None:
                self._solo_server = RefillServer(self.model, 1, self.tokenizer.pad_token_id,
                                                 self.tokenizer.eos_token_id,
                                                 self._stop_kwargs().get("stopping_criteria"))
            server = self._solo_server
        left = threading.Event()  # the consumer stopped iterating
        errors: list[BaseException] = []
        new_tokens: list[int] = []
        prompt = list(prompt) if prompt is not None else self.prompt_ids([record])[0]
        shown = (lambda text: self._holdback(self.decode_text(text))) if use_template else (lambda text: text)
        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=server is None, skip_special_tokens=True,
                                        timeout=600)

        def halted() -> bool:
            return left.is_set() or (stop is not None and stop.is_set())

        if server is not None:
            def done(ids, error):
                new_tokens.extend(ids)
                if error is not None:
                    errors.append(error)
                streamer.end()

            rng = torch.Generator().manual_seed(seed) if seed is not None and gen_kwargs.get("do_sample") else None
            request = Request(prompt, gen_kwargs, on_done=done, on_token=lambda tok: streamer.put(torch.tensor([tok])),
                              cancelled=halted, rng=rng, template_stops=use_template)
            thread = None
        else:
            class _Stop(StoppingCriteria):
                def __call__(self, input_ids, scores, **kwargs):
                    return torch.full((input_ids.shape[0],), halted(), dtype=torch.bool, device=input_ids.device)

            input_ids, mask = self._batch_tensors([prompt])
            kwargs = dict(input_ids=input_ids, attention_mask=mask, pad_token_id=self.tokenizer.pad_token_id,
                          eos_token_id=self.tokenizer.eos_token_id, streamer=streamer,
                          **(self._stop_kwargs(_Stop()) if use_template else
                             {"stopping_criteria": StoppingCriteriaList([_Stop()])}), **gen_kwargs)

            def work():
                try:
                    with torch.inference_mode():
                        out = self.model.generate(**kwargs)
                    row = out[0, input_ids.shape[1]:].tolist()
                    new_tokens.extend(row[: row.index(self.tokenizer.eos_token_id)]
                                      if self.tokenizer.eos_token_id in row else row)
                except BaseException as e:  # noqa: BLE001 - re-raised in the consumer
                    errors.append(e)
                    streamer.end()

            thread = threading.Thread(target=work, daemon=True)
        sent, raw = "", ""
        try:
            if thread is not None:
                thread.start()  # inside the try: a Ctrl-C during start() must still stop the thread
            else:
                server.submit(request)
            for piece in streamer:
                raw += piece
                text = shown(raw)
                if text.startswith(sent) and len(text) > len(sent):
                    yield text[len(sent):]
                    sent = text
        finally:
            left.set()  # a no-op after a complete answer; ends generation early otherwise
            if thread is not None and thread.is_alive():
                thread.join()
        if errors:
            raise errors[0]
        final = self.decode_text(raw) if use_template else raw
        if final.startswith(sent) and len(final) > len(sent):
            yield final[len(sent):]
        if stats is not None:
            limit = gen_kwargs.get("max_new_tokens")
            stats.update(prompt_tokens=len(prompt), completion_tokens=len(new_tokens), token_ids=list(new_tokens),
                         finish_reason="length" if limit and len(new_tokens) >= limit else "stop")

    def refill_server(self, batch_size: int) -> RefillServer | None:
        """A server that batches concurrent requests to this model, or None where refill cannot run it."""
        if batch_size < 2 or not supports_refill(self.model, {"max_new_tokens": 1}):
            return None
        return RefillServer(self.model, batch_size, self.tokenizer.pad_token_id, self.tokenizer.eos_token_id,
                            self._stop_kwargs().get("stopping_criteria"))

    def decode_text(self, text: str) -> str:
        return self.template.clean_response(text)

    def _holdback(self, text: str) -> str:
        """Hold back a tail that may be the start of a stop string, so it is never shown."""
        stops = [s for s in getattr(self.template, "stop_strings", ()) if s]
        for stop in stops:
            for k in range(min(len(stop) - 1, len(text)), 0, -1):
                if text.endswith(stop[:k]):
                    return text[:-k].rstrip()
        return text


def load_generator(lora_dir: str | None = None, model_name_or_path: str | None = None,
                   model_type: str | None = None, template: str | None = None,
                   quantization_bit: int | None = None, compute_dtype: str = "auto",
                   base_only: bool = False, trust_remote_code: bool = False) -> Generator:
    """Base model (+ adapter from ``lora_dir`` unless ``base_only``) with its tokenizer and template."""
    from . import peft_methods  # noqa: F401  registers our PEFT methods before any adapter loads

    meta = fine_tune_metadata(lora_dir) if lora_dir else {}
    if meta.get("stage") == "rm" and not base_only:
        raise ValueError(f"--lora_dir {lora_dir} is a reward model (--stage rm): it scores responses and does not "
                         "generate; use evaluate.py --task reward --lora_dir with it, or --base_only for its base")
    full_model = bool(lora_dir) and not (Path(lora_dir) / "adapter_config.json").exists() \
        and (Path(lora_dir) / "config.json").exists()
    base = _pick_base(model_name_or_path, meta)
    if full_model and not base_only and not model_name_or_path:
        base = lora_dir  # a full fine-tune or merged model: the folder is the model
    spec, path = resolve_spec(model_type or meta.get("model_type"), base,
                              trust_remote_code or meta.get("args", {}).get("trust_remote_code", False))
    tpl = get_template(template or meta.get("template") or spec.template)
    tokenizer = load_tokenizer(lora_dir if lora_dir and (Path(lora_dir) / "tokenizer_config.json").exists()
                               else path, spec)
    bits = quantization_bit if quantization_bit is not None else meta.get("quantization_bit")
    model = load_model(path, spec, quantization_bit=bits, dtype=resolve_dtype(compute_dtype))
    if torch.cuda.is_available() and not bits:
        model = model.to("cuda")
    name = Path(path).name
    if lora_dir and not base_only and not full_model:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, lora_dir)
        name = f"{name} + {Path(lora_dir).name}"
    model.eval()
    model.config.use_cache = True
    return Generator(model=model, tokenizer=tokenizer, template=tpl, spec=spec, name=name, meta=meta)
