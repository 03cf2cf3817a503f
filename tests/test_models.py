"""Every registry family: tiny model from its config, LoRA on default targets, a real training step."""

import json
import math

import pytest
from tiny_models import ALL_FAMILIES

from alpaca_cot.cli_args import DataArguments, FinetuneArguments, ModelArguments, PeftArguments
from alpaca_cot.loader import load_model, load_tokenizer, resolve_spec
from alpaca_cot.models import MODEL_REGISTRY, detect_model_type, get_spec, resolve_target_modules
from alpaca_cot.train import run

TOY = [{"instruction": f"Add {a} and {b}.", "input": "", "output": f"{a} + {b} = {a + b}."}
       for a in range(3) for b in range(3)]


@pytest.fixture(scope="module")
def toy_data(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "toy.json"
    path.write_text(json.dumps(TOY))
    return str(path)


def test_registry_covers_the_families():
    assert set(ALL_FAMILIES) | {"auto"} <= set(MODEL_REGISTRY)


@pytest.mark.parametrize("family", ALL_FAMILIES)
def test_family_trains_a_step_with_lora_on_its_default_targets(family, tiny_model_factory, toy_data, tmp_path):
    folder = tiny_model_factory(family)
    out = tmp_path / "out"
    metrics = run(ModelArguments(model_type=family, model_name_or_path=folder),
                  DataArguments(data=[toy_data], cutoff_len=1024), PeftArguments(),
                  FinetuneArguments(output_dir=str(out), max_steps=1, per_gpu_train_batch_size=2, save_steps=10))
    assert math.isfinite(metrics["train_loss"]) and metrics["global_step"] == 1
    meta = json.loads((out / "alpaca_cot.json").read_text())
    assert meta["model_type"] == family and meta["template"] == get_spec(family).template
    assert meta["target_modules"] == list(get_spec(family).target_modules)
    adapter = json.loads((out / "adapter_config.json").read_text())
    assert set(adapter["target_modules"]) == set(get_spec(family).target_modules)


@pytest.mark.parametrize("family", ["llama", "chatglm2"])
def test_family_is_detected_from_the_checkpoint_config(family, tiny_model_factory):
    spec, _ = resolve_spec(None, tiny_model_factory(family))
    assert spec.name == family


def test_unknown_model_type_lists_known_ones():
    with pytest.raises(ValueError, match="unknown --model_type 'gpt9'; known: llama, bloom"):
        get_spec("gpt9")


def test_wrong_target_module_names_the_linear_layers(tiny_llama_dir):
    spec = get_spec("llama")
    model = load_model(tiny_llama_dir, spec)
    with pytest.raises(ValueError) as info:
        resolve_target_modules(model, spec, ["query_key_value"])
    message = str(info.value)
    assert "['query_key_value'] not found" in message and "q_proj" in message and "down_proj" in message


def test_auto_family_targets_every_linear_layer(tiny_model_factory):
    folder = tiny_model_factory("qwen2")
    spec = get_spec("auto")
    model = load_model(folder, spec)
    assert resolve_target_modules(model, spec, None) == ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj",
                                                         "up_proj", "v_proj"]


def test_pad_token_policy(tiny_llama_dir, tmp_path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_llama_dir)
    tok.pad_token = None
    tok.save_pretrained(tmp_path)
    assert load_tokenizer(str(tmp_path), get_spec("llama")).pad_token == tok.unk_token  # LLaMA: unk, as the original
    assert load_tokenizer(str(tmp_path), get_spec("bloom")).pad_token == tok.eos_token


def test_detect_falls_back_to_auto():
    class Config:
        model_type = "something_new"

    assert detect_model_type(Config()) == "auto"
