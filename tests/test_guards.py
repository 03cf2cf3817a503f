"""No silent NaN: a model that produces NaN stops training with the reason, and nothing is saved as finished."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

ROOT = Path(__file__).resolve().parents[1]
DATA = [{"instruction": f"Repeat the word {w}.", "input": "", "output": w} for w in ("apple", "river", "stone", "lamp")]


def _copy_model(src: str, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


def _run_finetune(model_dir: Path, tmp_path: Path):
    data = tmp_path / "data.json"
    data.write_text(json.dumps(DATA))
    out = tmp_path / "out"
    cmd = [sys.executable, str(ROOT / "uniform_finetune.py"), "--model_name_or_path", str(model_dir),
           "--data", str(data), "--output_dir", str(out), "--max_steps", "3", "--per_gpu_train_batch_size", "2",
           "--logging_steps", "1", "--save_steps", "1000", "--compute_dtype", "fp32"]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT), out


def test_overflowing_checkpoint_stops_at_the_first_step(tiny_llama_dir, tmp_path):
    """Finite weights whose forward overflows (a huge embedding row, as a broken fp16 export gives):
    the loss is NaN from the first step; today's Trainer would log it as 0 and save NaN weights."""
    model_dir = _copy_model(tiny_llama_dir, tmp_path / "model")
    weights = load_file(model_dir / "model.safetensors")
    key = next(k for k in weights if k.endswith("embed_tokens.weight"))
    weights[key] = torch.full_like(weights[key], 3e38)
    save_file(weights, model_dir / "model.safetensors", metadata={"format": "pt"})
    result, out = _run_finetune(model_dir, tmp_path)
    assert result.returncode != 0
    message = result.stderr
    assert "training stopped at step 1" in message and "not finite" in message, message[-2000:]
    assert "--learning_rate" in message and "--compute_dtype" in message
    assert not (out / "alpaca_cot.json").exists()
    assert not (out / "adapter_model.safetensors").exists()


def test_nan_weights_are_refused_before_training(tiny_llama_dir, tmp_path):
    model_dir = _copy_model(tiny_llama_dir, tmp_path / "model")
    weights = load_file(model_dir / "model.safetensors")
    key = next(k for k in weights if "layers.1" in k and k.endswith("o_proj.weight"))
    weights[key][0, 0] = float("nan")
    save_file(weights, model_dir / "model.safetensors", metadata={"format": "pt"})
    result, out = _run_finetune(model_dir, tmp_path)
    assert result.returncode != 0
    assert "NaN/inf values before training" in result.stderr and "layers.1.self_attn.o_proj" in result.stderr
    assert not (out / "alpaca_cot.json").exists()


def test_guard_keeps_the_last_finite_loss():
    from alpaca_cot.guards import FiniteGuard, TrainingDiverged

    guard = FiniteGuard("somewhere")

    class State:
        global_step = 7

    guard.on_log(None, State(), None, logs={"loss": 1.25})
    State.global_step = 8
    with pytest.raises(TrainingDiverged, match=r"step 8: the logged loss is nan; the last finite loss was 1.2500 at step 7"):
        guard.on_log(None, State(), None, logs={"loss": float("nan")})
