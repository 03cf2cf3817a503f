"""Bottleneck adapters as a registered PEFT method, on a tiny random LLaMA (CPU, offline)."""

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from peft import PeftConfig, PeftModel, get_peft_model
from peft.utils import PeftType
from transformers import (
    BitsAndBytesConfig,
    BloomConfig,
    BloomForCausalLM,
    Gemma3ForCausalLM,
    Gemma3TextConfig,
    GPTNeoXConfig,
    GPTNeoXForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
)

from alpaca_cot.bottleneck import (
    BottleneckConfig,
    BottleneckLayer,
    placement_config,
    placement_targets,
)

ROOT = Path(__file__).resolve().parents[1]
PLACEMENTS = ["sadapter_h", "sadapter_p", "padapter", "mh_adapter"]
IDS = torch.randint(0, 128, (2, 12), generator=torch.Generator().manual_seed(0))


def _config(placement, **kw):
    return placement_config("llama", placement, bottleneck_size=8, **kw)


def _save_tiny_llama(path, hidden_size=32):
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=128, hidden_size=hidden_size, intermediate_size=2 * hidden_size,
                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)
    LlamaForCausalLM(cfg).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    return _save_tiny_llama(tmp_path_factory.mktemp("tiny_llama"))


def _base(base_dir, **kw):
    return LlamaForCausalLM.from_pretrained(base_dir, **kw).eval()


@torch.no_grad()
def _logits(model):
    return model(IDS).logits


def _train(model, steps=5):
    """A few AdamW steps on a fixed batch; returns the losses."""
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    losses = []
    for _ in range(steps):
        loss = model(IDS, labels=IDS).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    return losses


@pytest.fixture(scope="module")
def saved(base_dir, tmp_path_factory):
    """placement -> (adapter dir, logits of the trained model)."""
    out = {}
    for placement in PLACEMENTS:
        model = get_peft_model(_base(base_dir), _config(placement))
        _train(model)
        path = tmp_path_factory.mktemp(placement)
        model.save_pretrained(path)
        out[placement] = (path, _logits(model.eval()))
    return out


def test_config_and_placements():
    cfg = BottleneckConfig(target_modules=["down_proj"])
    assert cfg.peft_type == PeftType.BOTTLENECK and "BOTTLENECK" in list(PeftType)
    assert all(f.metadata.get("help") for f in cfg.__dataclass_fields__.values()
               if f.name in ("bottleneck_size", "adapter_type", "scaling", "init_weights"))
    with pytest.raises(ValueError, match="adapter_type"):
        BottleneckConfig(adapter_type="diagonal")
    assert placement_targets("llama", "sadapter_h") == ["o_proj", "down_proj"]
    assert placement_targets("bloom", "sadapter_p") == ["mlp.dense_4h_to_h"]
    assert placement_targets("gpt_neox", "padapter") == ["mlp"]
    assert placement_targets("some_new_model", "sadapter_h") == ["o_proj", "down_proj"]
    assert _config("padapter").adapter_type == "parallel" and _config("padapter").scaling == 4.0


@pytest.mark.parametrize("placement", PLACEMENTS)
def test_fresh_adapter_is_identity(base_dir, placement):
    ref = _logits(_base(base_dir))
    model = get_peft_model(_base(base_dir), _config(placement))
    assert any(isinstance(m, BottleneckLayer) for m in model.modules())
    torch.testing.assert_close(_logits(model), ref, atol=1e-6, rtol=0)


@pytest.mark.parametrize("placement", PLACEMENTS)
def test_training_updates_only_adapters(base_dir, placement):
    model = get_peft_model(_base(base_dir), _config(placement))
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(".bottleneck_" in n for n in trainable)
    before = _logits(model)
    model(IDS, labels=IDS).loss.backward()
    with_grad = [n for n, p in model.named_parameters() if p.grad is not None]
    assert with_grad and all(".bottleneck_" in n for n in with_grad)
    model.zero_grad()
    losses = _train(model)
    assert losses[-1] < losses[0]
    model.eval()
    assert not torch.allclose(_logits(model), before, atol=1e-4)
    with model.disable_adapter():
        torch.testing.assert_close(_logits(model), before, atol=1e-6, rtol=0)


@pytest.mark.parametrize("placement", PLACEMENTS)
def test_save_and_reload(base_dir, saved, placement):
    path, trained = saved[placement]
    assert json.loads((path / "adapter_config.json").read_text())["peft_type"] == "BOTTLENECK"
    assert isinstance(PeftConfig.from_pretrained(path), BottleneckConfig)
    loaded = PeftModel.from_pretrained(_base(base_dir), path)
    torch.testing.assert_close(_logits(loaded), trained, atol=1e-6, rtol=0)


def test_reload_in_fresh_process(base_dir, saved):
    """A new interpreter only needs `import alpaca_cot.bottleneck` (imported twice here)."""
    script = (
        "import importlib, json, sys, torch\n"
        "import alpaca_cot.bottleneck as b\n"
        "importlib.reload(b)\n"
        "from peft import PeftModel\n"
        "from transformers import LlamaForCausalLM\n"
        "base_dir, ids, dirs = json.loads(sys.argv[1])\n"
        "out = {}\n"
        "for name, path in dirs.items():\n"
        "    m = PeftModel.from_pretrained(LlamaForCausalLM.from_pretrained(base_dir), path).eval()\n"
        "    with torch.no_grad():\n"
        "        out[name] = m(torch.tensor(ids)).logits.tolist()\n"
        "print(json.dumps(out))\n"
    )
    arg = json.dumps([str(base_dir), IDS.tolist(), {k: str(v[0]) for k, v in saved.items()}])
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", script, arg], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    for name, (_, trained) in saved.items():
        torch.testing.assert_close(torch.tensor(got[name]), trained, atol=1e-6, rtol=0)


@pytest.mark.parametrize("placement", ["sadapter_h", "padapter"])  # Linear and block targets
def test_merge_refused_and_unload(base_dir, saved, placement):
    ref = _logits(_base(base_dir))
    model = PeftModel.from_pretrained(_base(base_dir), saved[placement][0])
    with pytest.raises(NotImplementedError, match="non-linearity"):
        model.merge_and_unload()
    with pytest.raises(NotImplementedError, match="non-linearity"):
        model.merge_adapter()
    plain = model.unload()
    assert not any(isinstance(m, BottleneckLayer) for m in plain.modules())
    torch.testing.assert_close(_logits(plain), ref, atol=1e-6, rtol=0)


FAMILIES = {
    "bloom": lambda: BloomForCausalLM(BloomConfig(vocab_size=128, hidden_size=32, n_layer=2, n_head=4)),
    "gpt_neox": lambda: GPTNeoXForCausalLM(GPTNeoXConfig(
        vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4)),
    "gemma3_text": lambda: Gemma3ForCausalLM(Gemma3TextConfig(
        vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=8)),
}


@pytest.mark.parametrize("family", FAMILIES)
def test_placements_on_other_families(family):
    base = FAMILIES[family]().eval()
    assert base.config.model_type == family
    ref = _logits(base)
    for placement, n_layers in [("sadapter_h", 4), ("padapter", 2), ("mh_adapter", 2)]:
        cfg = placement_config(family, placement, bottleneck_size=4, init_weights=False)
        model = get_peft_model(base, cfg)
        assert sum(isinstance(m, BottleneckLayer) for m in model.modules()) == n_layers
        assert not torch.allclose(_logits(model), ref, atol=1e-4)
        with model.disable_adapter():
            torch.testing.assert_close(_logits(model), ref, atol=1e-6, rtol=0)
        base = model.unload()


def test_two_adapters(base_dir):
    model = get_peft_model(_base(base_dir), _config("sadapter_p"))
    model.add_adapter("second", _config("padapter", init_weights=False))
    ref = _logits(model)  # "default" is active and zero-initialised
    model.set_adapter("second")
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".second." in n for n in trainable)
    assert not torch.allclose(_logits(model), ref, atol=1e-4)
    model.set_adapter("default")
    torch.testing.assert_close(_logits(model), ref, atol=1e-6, rtol=0)
    model.delete_adapter("second")
    assert model.peft_config.keys() == {"default"}


def test_bf16_base_keeps_fp32_adapter(base_dir):
    model = get_peft_model(_base(base_dir, dtype=torch.bfloat16), _config("padapter", init_weights=False))
    adapter_dtypes = {p.dtype for n, p in model.named_parameters() if ".bottleneck_" in n}
    assert adapter_dtypes == {torch.float32}
    assert _logits(model).dtype == torch.bfloat16
    model(IDS, labels=IDS).loss.backward()


QUANT = {
    "nf4": BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.float32),
    "int8": BitsAndBytesConfig(load_in_8bit=True),
}


@pytest.mark.parametrize("quant, placement", [("nf4", "sadapter_h"), ("nf4", "padapter"), ("int8", "sadapter_p")])
def test_quantized_base_trains(tmp_path, quant, placement):
    # bitsandbytes' CPU 4-bit kernel needs in_features divisible by its block size (64).
    base = _base(_save_tiny_llama(tmp_path, hidden_size=64), quantization_config=QUANT[quant])
    assert type(base.model.layers[0].mlp.down_proj).__name__ in ("Linear4bit", "Linear8bitLt")
    # Forward in train mode: an eval-mode CPU forward repacks 4-bit weights into an inference
    # layout without autograd support (bitsandbytes 0.50), which would break training later.
    base.train()
    with torch.no_grad():
        ref = base(IDS).logits
    model = get_peft_model(base, _config(placement))
    with torch.no_grad():
        torch.testing.assert_close(model(IDS).logits, ref, atol=1e-6, rtol=0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        losses = _train(model, steps=3)
    assert not [w for w in caught if "autograd kernel was not registered" in str(w.message)]
    assert losses[-1] < losses[0]
