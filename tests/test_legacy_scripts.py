"""Every legacy family, as a user meets it: a published-layout folder goes through every script.

For each family (tiny random weights in the real layout, vocabulary files of the family's kind):
``uniform_finetune.py`` trains LoRA for 2 steps without and with ``--model_type`` (converting the
folder once, into the model cache), ``generate.py --lora_dir`` answers, ``predict.py`` gives the
same greedy answers at batch 2 as at batch 1, ``merge.py`` writes a folder that plain
``AutoModelForCausalLM.from_pretrained`` loads (no remote code) with the adapter's logits.
The scripts run in this process (their ``main(argv)``), as ``python SCRIPT ...`` would run them.
"""

import json
import math
from pathlib import Path

import pytest
import torch
from legacy_checkpoints import LEGACY_FAMILIES, build_legacy_checkpoint

pytestmark = pytest.mark.slow

RECORDS = [{"instruction": f"Add {a} and {b}.", "input": "", "output": f"{a} + {b} = {a + b}."}
           for a in range(2) for b in range(3)]
RECORDS += [{"instruction": "讲个笑话", "input": "", "output": "从前有座山。"},
            {"instruction": "Say hi.", "input": "", "output": "Hi!", "history": [["你好", "你好！有什么可以帮你？"]]}]
QUESTIONS = [{"instruction": "讲个笑话", "input": ""}, {"instruction": "Add 1 and 2, then explain.", "input": ""},
             {"instruction": "Hi", "input": "", "history": [["你好", "你好！"]]}]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, isolated_module_cache):
    root = tmp_path_factory.mktemp("legacy-e2e")
    (root / "train.json").write_text(json.dumps(RECORDS, ensure_ascii=False))
    (root / "questions.json").write_text(json.dumps(QUESTIONS, ensure_ascii=False))
    return root


@pytest.fixture(scope="module")
def isolated_module_cache(tmp_path_factory):
    """A private model cache for this module: conversions happen here, not in the user's cache."""
    import os

    from alpaca_cot.embedded import cache_home

    home = tmp_path_factory.mktemp("cache_home")
    (home / "models").mkdir()
    real = cache_home() / "models"
    for child in real.iterdir() if real.exists() else []:
        if child.name != "converted":  # the embedded models are shared; conversions stay private
            (home / "models" / child.name).symlink_to(child)
    old = os.environ.get("ALPACA_COT_HOME")
    os.environ["ALPACA_COT_HOME"] = str(home)
    yield home
    if old is None:
        os.environ.pop("ALPACA_COT_HOME", None)
    else:
        os.environ["ALPACA_COT_HOME"] = old


def _finetune(argv):
    import uniform_finetune

    return uniform_finetune.main([str(a) for a in argv])


@pytest.mark.parametrize("family", LEGACY_FAMILIES)
def test_legacy_folder_through_every_script(family, workspace, isolated_module_cache):
    import generate
    import merge
    import predict
    from transformers import AutoModelForCausalLM
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    from alpaca_cot.legacy.convert import conversion_info
    from alpaca_cot.models import get_spec

    legacy = build_legacy_checkpoint(family, workspace / family)
    common = ["--data", workspace / "train.json", "--max_steps", 2, "--per_gpu_train_batch_size", 2,
              "--logging_steps", 1, "--save_steps", 100, "--cutoff_len", 1024, "--compute_dtype", "fp32",
              "--learning_rate", 1e-3]

    # 1. Detected from the folder (no --model_type), converted once into the cache.
    out = workspace / f"{family}-out"
    _finetune(["--model_name_or_path", legacy, "--output_dir", out, *common])
    meta = json.loads((out / "alpaca_cot.json").read_text())
    assert meta["model_type"] == family and meta["template"] == get_spec(family).template
    assert meta["base_model"] == str(legacy) and meta["converted_from"] == str(legacy.resolve())
    converted = Path(meta["base_model_path"])
    assert conversion_info(converted)["family"] == family and converted.is_relative_to(isolated_module_cache)
    assert set(meta["target_modules"]) == set(get_spec(family).target_modules)
    # Random weights: the loss starts near ln(vocabulary size) and stays finite.
    from transformers import AutoTokenizer

    vocab = len(AutoTokenizer.from_pretrained(converted))
    assert math.isfinite(meta["metrics"]["train_loss"]) and abs(meta["metrics"]["train_loss"] - math.log(vocab)) < 1.5

    # 2. With --model_type: the same conversion is reused (not converted again).
    out2 = workspace / f"{family}-out2"
    _finetune(["--model_type", family, "--model_name_or_path", legacy, "--output_dir", out2, *common])
    assert json.loads((out2 / "alpaca_cot.json").read_text())["base_model_path"] == str(converted)
    assert len(list((isolated_module_cache / "models" / "converted").glob(f"{family}-*"))) == 1

    # 3. generate.py --lora_dir needs nothing else.
    (answer,) = generate.main(["--lora_dir", str(out), "--instruction", "讲个笑话", "--greedy",
                               "--max_new_tokens", "6"])
    assert answer["instruction"] == "讲个笑话" and isinstance(answer["output"], str)

    # 4. predict.py: greedy answers at batch 2 equal those at batch 1.
    answers = {}
    for batch in (1, 2):
        path = workspace / f"{family}-pred{batch}.jsonl"
        predict.main(["--lora_dir", str(out), "--data", str(workspace / "questions.json"), "--result_dir", str(path),
                      "--predict_batch_size", str(batch), "--greedy", "--max_new_tokens", "6"])
        answers[batch] = [json.loads(line)["generate"] for line in path.read_text().splitlines()]
    assert len(answers[1]) == len(QUESTIONS) and answers[1] == answers[2] and any(answers[1])

    # 5. merge.py: plain transformers loads the merged folder, no remote code, same logits as base + adapter.
    merged = workspace / f"{family}-merged"
    merge.main(["--lora_dir", str(out), "--merged_dir", str(merged)])
    config = json.loads((merged / "config.json").read_text())
    assert "auto_map" not in config
    assert config["model_type"] in CONFIG_MAPPING  # native, or ours registered by `import alpaca_cot.legacy`
    plain = AutoModelForCausalLM.from_pretrained(merged, dtype=torch.float32).eval()
    from alpaca_cot.infer import load_generator

    tuned = load_generator(str(out), compute_dtype="fp32")
    ids = torch.tensor([tuned.prompt_ids([QUESTIONS[0]])[0]])
    with torch.no_grad():
        want = tuned.model(input_ids=ids).logits
        got = plain(input_ids=ids).logits
    assert torch.allclose(got, want, atol=1e-4), (got - want).abs().max()
