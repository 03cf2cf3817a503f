"""The tiny remote-code fixtures (tests/remote_models.py) behave like the checkpoints they stand for.

Each family is built into tmp_path, loaded through its auto_map with trust_remote_code=True, and
checked for the real module names, a shifted causal-LM loss, padding invariance, greedy generation
(batched = unbatched = a full-sequence argmax loop) and one LoRA training step.
"""

import json

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from remote_models import REMOTE_FAMILIES, REMOTE_SPECS, auto_class, build_remote_model

PROMPTS = ["Give three tips for staying healthy.", "Name a colour."]
# `tokenizer` (conftest.py): the real tokenizer of the embedded default model, vocabulary 49152.


def load(family, tmp_path, tokenizer):
    path = build_remote_model(family, tmp_path / family, tokenizer=tokenizer)
    return path, auto_class(family).from_pretrained(path, trust_remote_code=True).eval()


@pytest.mark.parametrize("family", REMOTE_FAMILIES)
def test_loads_through_auto_map_with_real_module_names(family, tmp_path, tokenizer):
    spec = REMOTE_SPECS[family]
    path, model = load(family, tmp_path, tokenizer)

    config = json.loads((tmp_path / family / "config.json").read_text())
    assert config["auto_map"] == spec.auto_map
    assert config[spec.vocab_key] == len(tokenizer) == 49152
    assert (config["pad_token_id"], config["eos_token_id"]) == (tokenizer.pad_token_id, tokenizer.eos_token_id)
    assert type(model).__name__ == spec.auto_map[spec.load_with].split(".")[1]
    assert type(model).__module__.startswith("transformers_modules.")  # really loaded as remote code

    names = dict(model.named_modules())
    assert [name for name in spec.module_names if name not in names] == []
    assert model.get_input_embeddings() is names[spec.module_names[0]]
    saved = load_file(f"{path}/model.safetensors")
    assert saved.keys() == model.state_dict().keys()
    assert all(torch.equal(saved[key], value) for key, value in model.state_dict().items())


@pytest.mark.parametrize("family", REMOTE_FAMILIES)
def test_forward_shifts_labels_and_ignores_padding(family, tmp_path, tokenizer):
    _, model = load(family, tmp_path, tokenizer)
    alone = tokenizer(PROMPTS[1:], return_tensors="pt")
    with torch.no_grad():
        reference = model(**alone).logits[0]
        for side in ("left", "right"):
            batch = tokenizer(PROMPTS, return_tensors="pt", padding=True, padding_side=side)
            labels = batch.input_ids.masked_fill(batch.attention_mask == 0, -100)
            out = model(**batch, labels=labels)
            assert type(out).__name__ == "CausalLMOutputWithPast"
            assert torch.isfinite(out.loss)
            expected = F.cross_entropy(out.logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten(), ignore_index=-100)
            torch.testing.assert_close(out.loss, expected)
            real = out.logits[1][batch.attention_mask[1].bool()]  # the short prompt's non-pad positions
            torch.testing.assert_close(real, reference, atol=1e-5, rtol=1e-4)
        loss, logits = model(**alone, labels=alone.input_ids, return_dict=False)
        assert torch.isfinite(loss) and logits.shape[-1] == len(tokenizer)


def new_tokens(sequence, eos_id):
    """Generated ids up to and including the first eos (generate pads finished rows afterwards)."""
    sequence = sequence.tolist()
    return sequence[: sequence.index(eos_id) + 1] if eos_id in sequence else sequence


@pytest.mark.parametrize("family", REMOTE_FAMILIES)
def test_greedy_generate_batched_equals_unbatched(family, tmp_path, tokenizer):
    _, model = load(family, tmp_path, tokenizer)
    eos = tokenizer.eos_token_id
    batch = tokenizer(PROMPTS, return_tensors="pt", padding=True, padding_side="left")
    batched = model.generate(**batch, max_new_tokens=5, do_sample=False)
    for row, prompt in enumerate(PROMPTS):
        alone = tokenizer(prompt, return_tensors="pt")
        single = model.generate(**alone, max_new_tokens=5, do_sample=False)
        generated = new_tokens(single[0, alone.input_ids.shape[1]:], eos)
        assert new_tokens(batched[row, batch.input_ids.shape[1]:], eos) == generated
        # generate() must feed the whole sequence each step (the fixtures keep no KV cache):
        ids = alone.input_ids
        with torch.no_grad():
            for _ in generated:
                ids = torch.cat([ids, model(ids).logits[:, -1:].argmax(-1)], dim=1)
        assert ids[0, alone.input_ids.shape[1]:].tolist() == generated


@pytest.mark.parametrize("family", REMOTE_FAMILIES)
def test_lora_step_changes_only_adapter_weights(family, tmp_path, tokenizer):
    from peft import LoraConfig, get_peft_model

    _, model = load(family, tmp_path, tokenizer)
    targets = list(REMOTE_SPECS[family].lora_targets)
    model = get_peft_model(model, LoraConfig(r=4, target_modules=targets, task_type="CAUSAL_LM"))
    trainable = {name: p for name, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in name for name in trainable)
    assert {name.split(".")[-4] for name in trainable} == set(targets)  # ...<target>.lora_X.default.weight
    before = {name: p.detach().clone() for name, p in model.named_parameters()}

    batch = tokenizer(PROMPTS, return_tensors="pt", padding=True)
    labels = batch.input_ids.masked_fill(batch.attention_mask == 0, -100)
    optimizer = torch.optim.AdamW(trainable.values(), lr=1e-2)
    model.train()
    model(**batch, labels=labels).loss.backward()
    optimizer.step()

    changed = {name for name, p in model.named_parameters() if not torch.equal(before[name], p)}
    assert changed <= set(trainable)
    # lora_B starts at zero, so the first step moves every B (A only gets weight decay on step one)
    assert {name for name in trainable if "lora_B" in name} <= changed


def test_builds_without_tokenizer_reproducibly(tmp_path):
    path = build_remote_model("internlm", tmp_path / "internlm", vocab_size=64, seed=1)
    again = build_remote_model("internlm", tmp_path / "again", vocab_size=64, seed=1)
    weights = [(tmp_path / name / "model.safetensors").read_bytes() for name in ("internlm", "again")]
    assert weights[0] == weights[1]
    model = auto_class("internlm").from_pretrained(path, trust_remote_code=True)
    assert model.config.vocab_size == 64 and model.config.eos_token_id == 2
    out = model.generate(torch.tensor([[5, 6, 7]]), max_new_tokens=3, do_sample=False)
    assert out.shape == (1, 6)
