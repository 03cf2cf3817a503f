"""Refill batching (alpaca_cot/batching.py): every prompt gets exactly the tokens that
``model.generate`` gives it alone, whatever the batch size and however rows finish."""

import collections

import pytest
import torch
from transformers import AutoModelForCausalLM, StoppingCriteria, StoppingCriteriaList

from alpaca_cot.batching import generate_refill, supports_refill

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


def frequent_tokens(model, prompts):
    """Two tokens the model often generates: as EOS and stop token they end rows at different steps."""
    counts = collections.Counter(t for p in prompts for t in alone(model, p, GREEDY, eos=-1)[1:])
    return [t for t, _ in counts.most_common(2)]


@pytest.mark.parametrize("extra", [{}, {"repetition_penalty": 1.3, "no_repeat_ngram_size": 3}])
def test_refill_equals_each_prompt_alone(model, prompts, extra):
    eos, stop = frequent_tokens(model, prompts)
    kwargs = {**GREEDY, **extra}
    expected = [alone(model, p, kwargs, eos, StoppingCriteriaList([StopAfter(stop)])) for p in prompts]
    lengths = {len(e) for e in expected}
    assert len(lengths) >= 3, "the workload must end rows at different steps"
    for batch_size in (2, 3, 8):
        seen = {}
        got = generate_refill(model, prompts, kwargs, batch_size, pad_token_id=0, eos_token_id=eos,
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
    prompt_tuned = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_factory("llama", hidden=64)),
                                  PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4))
    assert not supports_refill(prompt_tuned, GREEDY)
