"""A checkpoint that ships its own modeling code runs it only with --trust_remote_code."""

import json
import math

import pytest
from remote_models import build_custom_model

from alpaca_cot.cli_args import DataArguments, FinetuneArguments, ModelArguments, PeftArguments
from alpaca_cot.infer import load_generator
from alpaca_cot.train import ConfigError, run

DATA = [{"instruction": f"Repeat {w}.", "input": "", "output": w} for w in ("apple", "river", "stone", "lamp")]


@pytest.fixture(scope="module")
def custom_dir(tmp_path_factory, tokenizer):
    return build_custom_model(tmp_path_factory.mktemp("custom") / "model", tokenizer)


@pytest.fixture(scope="module")
def data_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "d.json"
    path.write_text(json.dumps(DATA))
    return str(path)


def _train(model_dir, data, out, trust: bool):
    return run(ModelArguments(model_name_or_path=model_dir, trust_remote_code=trust),
               DataArguments(data=[data], cutoff_len=64), PeftArguments(),
               FinetuneArguments(output_dir=str(out), max_steps=1, per_gpu_train_batch_size=2, save_steps=10))


def test_custom_code_is_refused_without_the_flag(custom_dir, data_file, tmp_path):
    with pytest.raises(ConfigError, match="ships its own modeling code.*--trust_remote_code"):
        _train(custom_dir, data_file, tmp_path / "out", trust=False)
    assert not (tmp_path / "out" / "alpaca_cot.json").exists()


def test_custom_code_trains_and_generates_with_the_flag(custom_dir, data_file, tmp_path):
    metrics = _train(custom_dir, data_file, tmp_path / "out", trust=True)
    assert math.isfinite(metrics["train_loss"])
    meta = json.loads((tmp_path / "out" / "alpaca_cot.json").read_text())
    assert meta["model_type"] == "auto" and meta["args"]["trust_remote_code"] is True
    # The fine-tune remembers the flag: --lora_dir alone loads it again.
    generator = load_generator(str(tmp_path / "out"))
    assert type(generator.model.base_model.model).__module__.startswith("transformers_modules.")
    (answer,) = generator.generate([{"instruction": "Repeat apple.", "input": ""}],
                                   {"max_new_tokens": 4, "do_sample": False})
    assert isinstance(answer, str)
