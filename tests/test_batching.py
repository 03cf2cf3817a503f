"""Refill batching (alpaca_cot/batching.py): every prompt gets exactly the tokens that
``model.generate`` gives it alone, whatever the batch size and however rows finish."""

import collections

import pytest
import torch
from transformers import AutoModelForCausalLM, StoppingCriteria, StoppingCriteriaList

from alpaca_cot.batching import Request, generate_refill, refill_blocker, supports_refill
from tiny_models import NATIVE_FAMILIES

GREEDY = {"max_new_tokens": 16, "do_sample": False, "num_beams": 1}


class StopAfter(StoppingCriteria):
    """Stops a row whose last token is ``token`` (a stand-in for a stop string)."""

    def __init__(self, token):
        self.token = token

    def __call__(self, input_ids, scores, **kwargs):
        return input_ids[:, -1] == self.token


@pytest.fixture(scope="module")
def model(tiny_model_factory):
    return AutoModelForCausalLM.from_pretrained(tiny_model_factory("llama", hidden=64)).eval()


@pytest.fixture(scope="module")
def prompts():
    g = torch.Generator().manual_seed(3)
    lengths = torch.randint(2, 24, (11,), generator=g)
    return [torch.randint(10, 2000, (int(n),), generator=g).tolist() for n in lengths]


def alone(model, prompt, kwargs, eos, stopping=None):
    ids = torch.tensor([prompt])
    out = model.generate(ids, attention_mask=torch.ones_like(ids), pad_token_id=0, eos_token_id=eos,
                         stopping_criteria=stopping, **kwargs)[0, len(prompt):].tolist()
    return out[: out.index(eos)] if eos in out else out


def frequent_tokens(model, prompts, kwargs=GREEDY):
    """Two tokens the model often generates: as EOS and stop token they end rows at different steps."""
    counts = collections.Counter(t for p in prompts for t in alone(model, p, kwargs, eos=-1)[1:])
    return [t for t, _ in counts.most_common(2)]


@pytest.mark.parametrize("extra", [{}, {"repetition_penalty": 1.3, "no_repeat_ngram_size": 3}, {"repetition_penalty": 4.0}])
def test_refill_equals_each_prompt_alone(model, prompts, extra):
    kwargs = {**GREEDY, **extra}
    eos, stop = frequent_tokens(model, prompts, kwargs)
    expected = [alone(model, p, kwargs, eos, StoppingCriteriaList([StopAfter(stop)])) for p in prompts]
    lengths = {len(e) for e in expected}
    assert len(lengths) >= 3, "the workload must end rows at different steps"
    for batch_size in (2, 3, 8):
        seen = {}
        # The pad token is the EOS token (as in many tokenizers): a penalty that saw the padding would
        # make EOS less likely in padded rows only.
        got = generate_refill(model, prompts, kwargs, batch_size, pad_token_id=eos, eos_token_id=eos,
                              stopping_criteria=StoppingCriteriaList([StopAfter(stop)]),
                              on_result=lambda i, ids: seen.setdefault(i, ids))
        assert got == expected, f"batch size {batch_size}"
        assert seen == dict(enumerate(expected))  # each prompt reported once, with its tokens


def test_sampling_is_seeded_and_within_limits(model, prompts):
    kwargs = {"max_new_tokens": 8, "do_sample": True, "temperature": 0.7, "top_k": 20, "top_p": 0.9}
    runs = []
    for _ in range(2):
        torch.manual_seed(5)
        runs.append(generate_refill(model, prompts, kwargs, 4, pad_token_id=0, eos_token_id=None))
    assert runs[0] == runs[1]
    assert all(len(r) == 8 for r in runs[0])


def test_models_and_settings_it_cannot_run_go_through_generate(model, tiny_model_factory):
    from peft import PromptTuningConfig, get_peft_model

    assert supports_refill(model, GREEDY)
    assert not supports_refill(model, {**GREEDY, "num_beams": 2})
    assert not supports_refill(model, {**GREEDY, "length_penalty": 0.5})  # a setting it does not implement
    gemma = AutoModelForCausalLM.from_pretrained(tiny_model_factory("gemma3"))
    assert not supports_refill(gemma, GREEDY)  # sliding-window layers
    # prompt tuning runs here (its virtual tokens become cache columns), other prompt-learning types do not
    prompt_tuned = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_factory("llama", hidden=64)),
                                  PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4))
    assert supports_refill(prompt_tuned, GREEDY)
    assert "beam search" in refill_blocker(prompt_tuned, {**GREEDY, "num_beams": 2})


@pytest.mark.parametrize("family", NATIVE_FAMILIES)
def test_every_family_answers_the_same_alone_and_in_a_padded_batch(family, tiny_model_factory):
    """The Generator's path for each native registry family (refill where it runs: llama, bloom,
    qwen2; fixed batches through ``generate`` for gemma3's sliding window): greedy answers of a
    left-padded batch of 3 equal each prompt alone. The older families (chatglm, baichuan, ...)
    load through their own converted modules; tests/test_legacy_*.py check their padded batches."""
    from alpaca_cot.infer import load_generator

    generator = load_generator(model_name_or_path=tiny_model_factory(family), template="alpaca")
    records = [{"instruction": "Hi", "input": ""}, {"instruction": "Name three colours of the sea.", "input": ""},
               {"instruction": "Repeat the word stone, then cloud.", "input": "slowly, twice"}]
    prompts = generator.prompt_ids(records)
    assert len({len(p) for p in prompts}) == 3
    kwargs = {"max_new_tokens": 6, "do_sample": False}
    alone = [generator.generate_many([p], kwargs, batch_size=1)[0] for p in prompts]
    assert generator.generate_many(prompts, kwargs, batch_size=3) == alone


def submit_all(server, prompts, kwargs_for, extra=None):
    """Submit every prompt at once; returns {i: (ids, error)} once all are done."""
    import threading

    results, lock, all_done = {}, threading.Lock(), threading.Event()

    def finisher(i):
        def done(ids, error):
            with lock:
                results[i] = (list(ids), error)
                if len(results) == len(prompts):
                    all_done.set()
        return done

    for i, p in enumerate(prompts):
        server.submit(Request(p, kwargs_for(i), on_done=finisher(i), **(extra or {}).get(i, {})))
    assert all_done.wait(120)
    return results


def test_server_batches_live_requests_with_their_own_settings(model, prompts):
    from alpaca_cot.batching import RefillServer

    eos, _ = frequent_tokens(model, prompts)
    penalized = {**GREEDY, "repetition_penalty": 1.3}
    sampled = {"max_new_tokens": 6, "do_sample": True, "temperature": 0.8, "top_k": 20}
    kwargs_for = {i: (GREEDY, penalized, sampled)[i % 3] for i in range(len(prompts))}
    server = RefillServer(model, 4, pad_token_id=0, eos_token_id=eos)
    widest = []
    extra = {i: {"on_token": lambda tok: widest.append(len(server.core.rows))} for i in range(len(prompts))}
    for i in range(2, len(prompts), 3):
        extra[i]["rng"] = torch.Generator().manual_seed(11)
    first = submit_all(server, prompts, kwargs_for.get, extra)
    assert max(widest) > 1  # requests were generated together
    for i, p in enumerate(prompts):
        ids, error = first[i]
        assert error is None
        if kwargs_for[i]["do_sample"]:
            assert 1 <= len(ids) + (eos in ids) <= 6
        else:
            assert ids == alone(model, p, kwargs_for[i], eos), i
    for i in range(2, len(prompts), 3):
        extra[i]["rng"] = torch.Generator().manual_seed(11)
    again = submit_all(server, prompts, kwargs_for.get, extra)
    # A seeded request samples the same tokens whatever else shares its batch.
    assert all(again[i][0] == first[i][0] for i in range(2, len(prompts), 3))


def test_server_cancels_requests_and_survives_a_failed_forward(model, prompts, monkeypatch):
    from alpaca_cot.batching import RefillServer

    server = RefillServer(model, 4, pad_token_id=0, eos_token_id=None)
    long = {**GREEDY, "max_new_tokens": 200}
    cancelled = submit_all(server, prompts[:2], lambda i: long, {0: {"cancelled": lambda: True}})
    assert len(cancelled[0][0]) <= 1 and len(cancelled[1][0]) == 200

    real = model.forward
    monkeypatch.setattr(model, "forward", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("out of memory")))
    failed = submit_all(server, prompts[:3], lambda i: GREEDY)
    assert all(isinstance(error, RuntimeError) for _, error in failed.values())
    monkeypatch.setattr(model, "forward", real)
    assert all(error is None and len(ids) == 16 for ids, error in submit_all(server, prompts[:3],
                                                                             lambda i: GREEDY).values())
