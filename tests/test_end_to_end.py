"""End to end on the real embedded default model, through the scripts as a user runs them."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def script(*args, stdin=None):
    result = subprocess.run([sys.executable, *map(str, args)], cwd=ROOT, input=stdin, capture_output=True,
                            text=True, timeout=900, env={**__import__("os").environ, "HF_HUB_OFFLINE": "1"})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


@pytest.fixture(scope="module")
def finetuned(tmp_path_factory, default_model_dir):
    """``uniform_finetune.py --data demo:24 --output_dir OUT`` for 3 steps, checkpointing every 2."""
    out = tmp_path_factory.mktemp("e2e") / "out"
    script("uniform_finetune.py", "--data", "demo:24", "--output_dir", out, "--max_steps", "3", "--save_steps", "2",
           "--logging_steps", "1", "--cutoff_len", "192")
    return out


def test_output_directory_contract(finetuned):
    names = {p.name for p in finetuned.iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors", "tokenizer.json", "alpaca_cot.json",
            "loss.png", "checkpoint-2", "checkpoint-3"} <= names
    assert not [n for n in names if n.startswith(".")]  # no temporary leftovers
    meta = json.loads((finetuned / "alpaca_cot.json").read_text())
    assert meta["base_model"] == "smollm2-135m-instruct" and meta["model_type"] == "llama"
    assert meta["template"] == "alpaca" and meta["peft_type"] == "lora" and meta["cutoff_len"] == 192
    assert meta["data"] == ["demo:24"] and meta["metrics"]["global_step"] == 3
    assert meta["args"]["learning_rate"] == 3e-4


def test_adapter_loads_with_peft_alone(finetuned, default_model_dir):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(default_model_dir), finetuned)
    assert any("lora_A" in n for n, _ in model.named_parameters())


def test_generate_needs_only_the_lora_dir(finetuned):
    result = script("generate.py", "--lora_dir", finetuned, "--instruction", "What is 2 plus 3?", "--greedy",
                    "--max_new_tokens", "24")
    (line,) = result.stdout.strip().splitlines()
    answer = json.loads(line)
    assert answer["instruction"] == "What is 2 plus 3?" and answer["output"].strip()


def test_generate_reads_stdin_and_compares_with_the_base(finetuned):
    stdin = "Name a colour.\nName a fruit.\n"
    tuned = script("generate.py", "--lora_dir", finetuned, "--greedy", "--max_new_tokens", "12", stdin=stdin)
    base = script("generate.py", "--lora_dir", finetuned, "--greedy", "--max_new_tokens", "12", "--base_only",
                  stdin=stdin)
    for out in (tuned, base):
        rows = [json.loads(line) for line in out.stdout.strip().splitlines()]
        assert [r["instruction"] for r in rows] == ["Name a colour.", "Name a fruit."]


def test_resume_from_the_latest_checkpoint_continues_at_the_right_step(finetuned):
    result = script("uniform_finetune.py", "--data", "demo:24", "--output_dir", finetuned, "--max_steps", "4",
                    "--save_steps", "2", "--logging_steps", "1", "--cutoff_len", "192", "--resume_from_checkpoint")
    meta = json.loads((finetuned / "alpaca_cot.json").read_text())
    assert meta["metrics"]["global_step"] == 4
    state = json.loads((finetuned / "checkpoint-4" / "trainer_state.json").read_text())
    logged = [h["step"] for h in state["log_history"] if "loss" in h]
    assert logged == [1, 2, 3, 4]  # steps 1-3 from the first run's checkpoint, 4 trained now
    assert "checkpoint-3 at step 3 (optimizer, scheduler and data position restored)" in result.stderr
