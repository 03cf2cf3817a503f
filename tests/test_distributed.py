"""Multi-process training on the CPU (gloo): ``torchrun --nproc_per_node 2 uniform_finetune.py``.

DDP is what runs on the CPU: accelerate only enables FSDP (and DeepSpeed needs CUDA) on GPUs,
and silently runs DDP for ``--fsdp`` on the CPU (checked: ``distributed_type`` MULTI_CPU). So
the FSDP and DeepSpeed configs are checked here for validity and for reaching the Trainer.

Two processes with micro-batch 2 make the same optimizer steps as one process with micro-batch
2 and 2 accumulation steps: the same 4 samples per step, the loss token-weighted over all of
them (the Trainer sums label tokens across processes). Tolerances: logged losses within 1e-5
relative, final adapter weights within 1e-6 absolute (fp32; only the order of the gradient
sums differs).
"""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from alpaca_cot.cli_args import DataArguments, FinetuneArguments, ModelArguments, PeftArguments
from alpaca_cot.train import ConfigError, run, training_arguments

ROOT = Path(__file__).resolve().parents[1]
WORDS = ["apple", "river", "stone", "cloud", "lamp", "tiger", "piano", "maple"]
COMMON = ["--model_type", "llama", "--compute_dtype", "fp32", "--lora_dropout", "0", "--learning_rate", "1e-2",
          "--max_steps", "3", "--logging_steps", "1", "--save_steps", "3", "--per_gpu_train_batch_size", "2",
          "--cutoff_len", "128"]


@pytest.fixture(scope="module")
def data_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("ddpdata") / "data.json"
    path.write_text(json.dumps([{"instruction": f"Repeat {w} {i + 1} times.", "input": "",
                                 "output": " ".join([w] * (i + 1))} for i, w in enumerate(WORDS)]))
    return str(path)


@pytest.fixture(scope="module")
def single_process(tiny_llama_dir, data_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("single") / "out"
    run(ModelArguments(model_type="llama", model_name_or_path=tiny_llama_dir, compute_dtype="fp32"),
        DataArguments(data=[data_file], cutoff_len=128), PeftArguments(lora_dropout=0.0),
        FinetuneArguments(output_dir=str(out), per_gpu_train_batch_size=2, gradient_accumulation_steps=2,
                          max_steps=3, logging_steps=1, save_steps=3, learning_rate=1e-2))
    return out


def logged_losses(out: Path) -> list[float]:
    state = json.loads((out / "checkpoint-3" / "trainer_state.json").read_text())
    return [h["loss"] for h in state["log_history"] if "loss" in h]


def torchrun(out: Path, model_dir: str, data_file: str, *extra: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(ROOT / "uniform_finetune.py"), "--model_name_or_path", model_dir, "--data", data_file,
           "--output_dir", str(out), *COMMON, *extra]
    result = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    return result


def test_two_processes_match_one_process_with_gradient_accumulation(single_process, tiny_llama_dir, data_file,
                                                                    tmp_path):
    out = tmp_path / "out"
    torchrun(out, tiny_llama_dir, data_file)
    meta = json.loads((out / "alpaca_cot.json").read_text())
    assert meta["metrics"]["global_step"] == 3 and meta["metrics"]["packing"] is True
    got, want = logged_losses(out), logged_losses(single_process)
    assert len(got) == len(want) == 3
    assert all(math.isclose(g, w, rel_tol=1e-5) for g, w in zip(got, want)), (got, want)
    a = load_file(out / "adapter_model.safetensors")
    b = load_file(single_process / "adapter_model.safetensors")
    assert a.keys() == b.keys() and all(a[k].shape == b[k].shape for k in a)
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a), max((a[k] - b[k]).abs().max().item() for k in a)


def test_deepspeed_configs_are_valid_and_forwarded(tmp_path):
    for name, stage in (("ds_zero2.json", 2), ("ds_zero3.json", 3)):
        config = json.loads((ROOT / "configs" / name).read_text())
        assert config["zero_optimization"]["stage"] == stage
        # batch sizes, accumulation, clipping and precision come from our flags
        for key in ("train_micro_batch_size_per_gpu", "gradient_accumulation_steps", "gradient_clipping"):
            assert config[key] == "auto"
        assert config["bf16"]["enabled"] == config["fp16"]["enabled"] == "auto"
    fsdp = json.loads((ROOT / "configs" / "fsdp.json").read_text())
    assert fsdp["fsdp_version"] == 2
    ds = FinetuneArguments(output_dir=str(tmp_path), deepspeed=str(ROOT / "configs" / "ds_zero2.json"))
    try:
        import deepspeed  # noqa: F401
    except ImportError:  # not installed here (it needs CUDA): a clear error, before any training
        with pytest.raises(ConfigError, match="pip install deepspeed"):
            training_arguments(ds, str(tmp_path), torch.float32, has_eval=False)
    else:
        assert training_arguments(ds, str(tmp_path), torch.float32, has_eval=False).deepspeed
    with pytest.raises(ConfigError, match="no such config file"):
        training_arguments(FinetuneArguments(output_dir=str(tmp_path), deepspeed="nope.json"), str(tmp_path),
                           torch.float32, has_eval=False)
    args = training_arguments(FinetuneArguments(output_dir=str(tmp_path), fsdp="true",
                                                fsdp_config=str(ROOT / "configs" / "fsdp.json")),
                              str(tmp_path), torch.float32, has_eval=False)
    assert args.fsdp and args.fsdp_config["version"] == 2
