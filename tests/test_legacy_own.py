"""ChatGLM-6B (v1) and the Baichuans on our own modules / LLaMA, converted from their legacy layout.

The packs ``chatglm`` (ChatGLM-6B) and ``baichuan`` (Baichuan2-13B, ALiBi) carry what the family's own
upstream code computed under transformers 4.33 on a tiny checkpoint: the converted folder, loaded by
plain ``AutoModelForCausalLM`` (our modules registered by ``import alpaca_cot.legacy``), must give the
same logits (1e-4 at real positions, eager and SDPA), loss (1e-5) and greedy tokens (with and without
a cache). Baichuan-7B / Baichuan2-7B have no pack: their ``W_pack`` split and NormHead folding are
checked against the fused layers computed directly here.
"""

import json
import logging
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from legacy_packs import load_pack, valid_positions

import alpaca_cot.legacy  # noqa: F401  registers the families and our Auto classes
from alpaca_cot.legacy import baichuan, chatglm6b
from alpaca_cot.legacy.convert import LegacyConversionError, convert_checkpoint, detect_family
from alpaca_cot.legacy.modeling_chatglm6b import chatglm_positions

PACKS = ("chatglm", "baichuan")
NATIVE = {"chatglm": "ChatGLM6BForCausalLM", "baichuan": "BaichuanAlibiForCausalLM"}
LORA_TARGETS = {"chatglm": ["query_key_value"], "baichuan": ["q_proj", "v_proj"]}
GMASK, SOP, EOP, PAD = 501, 504, 505, 3  # the chatglm pack's ids (reference.json special_tokens)


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """``name -> folder`` of each pack converted once."""
    folders = {}

    def get(name):
        if name not in folders:
            folders[name] = convert_checkpoint(load_pack(name)[0], tmp_path_factory.mktemp(name) / "model")
        return folders[name]

    return get


def load(folder, attn="sdpa", dtype=torch.float32):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, attn_implementation=attn).eval()


def max_diff_at(logits, expected, positions):
    return max((logits[row, pos] - expected[row, pos]).abs().max().item() for row, pos in enumerate(positions))


def padded(rows, pad_id, side):
    """``(input_ids, attention_mask)`` of ``rows`` padded on ``side`` to the longest."""
    width = max(len(r) for r in rows)
    ids, mask = [], []
    for r in rows:
        fill = [pad_id] * (width - len(r))
        ids.append(fill + r if side == "left" else r + fill)
        mask.append([0] * len(fill) + [1] * len(r) if side == "left" else [1] * len(r) + [0] * len(fill))
    return torch.tensor(ids), torch.tensor(mask)


# --- detection and variants ------------------------------------------------------------------------------

def test_detection_and_variant_rules(caplog):
    assert detect_family(load_pack("chatglm")[0]).name == "chatglm"
    assert detect_family(load_pack("baichuan")[0]).name == "baichuan"
    chatglm2 = json.loads((load_pack("chatglm2")[0] / "config.json").read_text())
    assert chatglm2["model_type"] == "chatglm" and not chatglm6b.detect(chatglm2, {})
    published = {  # the fields that decide, as baichuan-inc's config.json files have them
        "baichuan-7b": {"architectures": ["BaiChuanForCausalLM"], "hidden_size": 4096, "vocab_size": 64000,
                        "max_position_embeddings": 4096},
        "baichuan2-7b": {"architectures": ["BaichuanForCausalLM"], "hidden_size": 4096, "vocab_size": 125696,
                         "max_position_embeddings": 4096, "model_max_length": 4096},
        "baichuan-13b": {"architectures": ["BaichuanForCausalLM"], "hidden_size": 5120, "vocab_size": 64000,
                         "model_max_length": 4096},
        "baichuan2-13b": {"architectures": ["BaichuanForCausalLM"], "hidden_size": 5120, "vocab_size": 125696,
                          "model_max_length": 4096},
    }
    with caplog.at_level(logging.WARNING, logger="alpaca_cot.legacy.baichuan"):
        for name, config in published.items():
            assert baichuan.identify(config).name == name
        assert not caplog.text
        assert baichuan.identify({"hidden_size": 64, "vocab_size": 512, "max_position_embeddings": 64}).name \
            == "baichuan2-7b"
    assert "unpublished sizes" in caplog.text and "VARIANT_FAMILIES" in caplog.text


def test_chatglm_refuses_layouts_it_cannot_convert():
    config = json.loads((load_pack("chatglm")[0] / "config.json").read_text())
    for change, words in (({"pre_seq_len": 128}, "P-tuning"), ({"quantization_bit": 4}, "quantized"),
                          ({"mask_token_id": None}, "first release")):
        legacy = {k: v for k, v in {**config, **change}.items() if v is not None}
        with pytest.raises(LegacyConversionError, match=words):
            chatglm6b.convert_config(legacy)
    with pytest.raises(ValueError, match="multiple of 4"):  # each head is cut in two rotary halves
        chatglm6b.convert_config({**config, "hidden_size": 40, "num_attention_heads": 4})


# --- the reference packs ---------------------------------------------------------------------------------

@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("name", PACKS)
def test_reference_logits_and_loss(converted, name, attn):
    _, reference, tensors = load_pack(name)
    model = load(converted(name), attn)
    assert type(model).__name__ == NATIVE[name]
    with torch.no_grad():
        out = model(input_ids=tensors["a.input_ids"], labels=tensors["a.input_ids"])
        assert (out.logits - tensors["a.logits"]).abs().max().item() < 1e-4
        assert abs(out.loss.item() - reference["cases"]["a"]["loss"]) < 1e-5
        c = model(input_ids=tensors["c.input_ids"]).logits
        assert (c - tensors["c.logits"]).abs().max().item() < 1e-4
        # b: the padded batch as the family's code pads it (chatglm: left, baichuan: right), 2-D mask
        ids = tensors["b.input_ids"]
        mask = (ids != PAD).long() if name == "chatglm" else tensors["b.attention_mask"]
        b = model(input_ids=ids, attention_mask=mask).logits
        assert max_diff_at(b, tensors["b.logits"], valid_positions(reference, "b", 2)) < 1e-4
        if name == "chatglm":  # the positions the real tokenizer built are ours too
            assert torch.equal(chatglm_positions(ids, mask, model.config) * mask[:, None], tensors["b.position_ids"])
            given = model(input_ids=ids, attention_mask=mask, position_ids=tensors["b.position_ids"]).logits
            assert max_diff_at(given, tensors["b.logits"], valid_positions(reference, "b", 2)) < 1e-4


@pytest.mark.parametrize("name", PACKS)
def test_greedy_continuation_with_and_without_cache(converted, name):
    _, reference, tensors = load_pack(name)
    model = load(converted(name))
    expected = reference["cases"]["a"]["generate"]["use_cache_true"]["new_tokens"]
    prompt = tensors["a.input_ids"]
    for use_cache in (True, False):
        out = model.generate(prompt, max_new_tokens=len(expected), do_sample=False, use_cache=use_cache,
                             output_scores=True, return_dict_in_generate=True)
        assert out.sequences[0, prompt.shape[1]:].tolist() == expected, use_cache
        assert (torch.stack(out.scores)[:, 0] - tensors["a.generate.scores"]).abs().max().item() < 1e-4


# --- padding -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", PACKS)
def test_padded_rows_equal_single_rows(converted, name):
    _, reference, tensors = load_pack(name)
    model = load(converted(name))
    rows = reference["cases"]["b"]["rows"]
    pad = PAD if name == "chatglm" else 0
    with torch.no_grad():
        alone = [model(input_ids=torch.tensor([r])).logits[0] for r in rows]
        for side in ("left", "right"):
            ids, mask = padded(rows, pad, side)
            logits = model(input_ids=ids, attention_mask=mask).logits
            for row, single in enumerate(alone):
                real = logits[row][mask[row].bool()]
                assert (real - single).abs().max().item() < 1e-4, (side, row)


def test_chatglm_left_padded_generation_equals_single_rows(converted):
    _, reference, _ = load_pack("chatglm")
    model = load(converted("chatglm"))
    rows = reference["cases"]["b"]["rows"]
    ids, mask = padded(rows, PAD, "left")
    batch = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=6, do_sample=False,
                           eos_token_id=None, pad_token_id=PAD)[:, ids.shape[1]:]
    for row, r in enumerate(rows):
        single = model.generate(torch.tensor([r]), max_new_tokens=6, do_sample=False, eos_token_id=None)
        assert batch[row].tolist() == single[0, len(r):].tolist()


def test_chatglm_training_layout_and_missing_markers(converted):
    """prompt [gMASK] <sop> response <eop>, right-padded as our collator pads, with prompt labels masked."""
    model = load(converted("chatglm"))
    samples = [([30, 31, 32, 33], [40, 41, 42]), ([50, 51], [60, 61, 62, 63, 64])]
    rows = [p + [GMASK, SOP] + r + [EOP] for p, r in samples]
    ids, mask = padded(rows, PAD, "right")
    labels = torch.tensor([[-100] * (len(p) + 2) + r + [EOP] + [-100] * (ids.shape[1] - len(row))
                           for (p, r), row in zip(samples, rows)])
    positions = chatglm_positions(ids, mask, model.config)
    assert positions[1, :, :len(rows[1])].tolist() == [[0, 1, 2, 2, 2, 2, 2, 2, 2, 2],
                                                       [0, 0, 0, 1, 2, 3, 4, 5, 6, 7]]
    with torch.no_grad():
        batch = model(input_ids=ids, attention_mask=mask, labels=labels)
        singles = [model(input_ids=torch.tensor([row]), labels=labels[i:i + 1, :len(row)])
                   for i, row in enumerate(rows)]
    weights = [(labels[i, 1:len(row)] != -100).sum().item() for i, row in enumerate(rows)]
    expected = sum(w * s.loss.item() for w, s in zip(weights, singles)) / sum(weights)
    assert math.isfinite(batch.loss.item()) and abs(batch.loss.item() - expected) < 1e-5
    with pytest.raises(ValueError, match=r"\[gMASK\].*<sop>"):
        model(input_ids=torch.tensor([[30, 31, 32, 40]]))
    with pytest.raises(ValueError, match="2-D attention mask"):
        model(input_ids=ids, attention_mask=mask[:, None, None, :])


# --- training ----------------------------------------------------------------------------------------------

def _training_batch(name):
    _, reference, _ = load_pack(name)
    rows = reference["cases"]["b"]["rows"]
    ids, mask = padded(rows, PAD if name == "chatglm" else 0, "right")
    labels = ids.masked_fill(mask == 0, -100)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


@pytest.mark.parametrize("name", PACKS)
def test_lora_steps_reduce_the_loss(converted, name):
    from peft import LoraConfig, get_peft_model

    model = load(converted(name)).train()
    model.config.use_cache = False
    model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=LORA_TARGETS[name]))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    batch, losses = _training_batch(name), []
    for _ in range(5):
        loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert all(math.isfinite(x) for x in losses) and losses[-1] < losses[0] - 0.1, losses
    model.eval()  # the adapter generates, and merges into the plain module with the same logits
    prompt = batch["input_ids"][:1, :int(batch["attention_mask"][0].sum())]
    tuned = model.generate(input_ids=prompt, max_new_tokens=4, do_sample=False, eos_token_id=None)
    with torch.no_grad():
        adapted = model(input_ids=tuned).logits
        merged = model.merge_and_unload()
        assert type(merged).__name__ == NATIVE[name]
        assert (merged(input_ids=tuned).logits - adapted).abs().max().item() < 1e-4


@pytest.mark.parametrize("name", PACKS)
def test_gradient_checkpointing_gives_the_same_gradients(converted, name):
    grads = []
    for checkpointing in (False, True):
        model = load(converted(name)).train()
        model.config.use_cache = False
        if checkpointing:
            model.gradient_checkpointing_enable()
        model(**_training_batch(name)).loss.backward()
        grads.append({n: p.grad for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) > 10
    for key, grad in grads[0].items():
        assert torch.allclose(grad, grads[1][key], atol=1e-6, rtol=1e-5), key


def test_alibi_packs_and_chatglm_falls_back_to_padding(converted):
    from alpaca_cot.packing import plan_batching

    alibi = plan_batching(load(converted("baichuan")).train(), False, 512)
    assert alibi.packing, alibi.message
    chatglm = plan_batching(load(converted("chatglm")).train(), False, 512)
    assert not chatglm.packing and "gMASK" in chatglm.message


# --- saving ------------------------------------------------------------------------------------------------

def test_save_and_reload_in_a_fresh_process(converted, tmp_path):
    code = ("import json, sys, torch\nimport alpaca_cot.legacy\nfrom transformers import AutoModelForCausalLM\n"
            "out = {}\nfor name, folder, ids in json.loads(sys.argv[1]):\n"
            "    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()\n"
            "    with torch.no_grad():\n"
            "        out[name] = model(input_ids=torch.tensor(ids)).logits.tolist()\n"
            "print(json.dumps(out))\n")
    jobs, expected = [], {}
    for name in PACKS:
        _, _, tensors = load_pack(name)
        model = load(converted(name))
        if name == "chatglm":
            assert model.lm_head.weight is model.get_input_embeddings().weight  # tied, as the original
        folder = tmp_path / name
        model.save_pretrained(folder)
        ids = tensors["c.input_ids"].tolist()
        with torch.no_grad():
            expected[name] = model(input_ids=torch.tensor(ids)).logits
        jobs.append((name, str(folder), ids))
    root = Path(__file__).resolve().parents[1]
    result = subprocess.run([sys.executable, "-c", code, json.dumps(jobs)], capture_output=True, text=True,
                            cwd=root, env={**os.environ, "PYTHONPATH": str(root), "HF_HUB_OFFLINE": "1"})
    assert result.returncode == 0, result.stderr[-2000:]
    for name, logits in json.loads(result.stdout.strip().splitlines()[-1]).items():
        assert (torch.tensor(logits) - expected[name]).abs().max().item() < 1e-5, name


# --- Baichuan-7B / Baichuan2-7B: no pack, checked against the fused layers ----------------------------------

def _fused_baichuan_7b_logits(state, config, ids, norm_head):
    """The published 7B forward with the fused W_pack, written out: RMSNorm, rotary (base 10000,
    rotate-half), causal softmax attention, SwiGLU MLP; the head normalised per row for Baichuan2."""
    heads, hidden = config["num_attention_heads"], config["hidden_size"]
    dim = hidden // heads

    def rms(x, w):
        return w * x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + config["rms_norm_eps"])

    length = ids.shape[1]
    inv_freq = 1.0 / (10000 ** (torch.arange(0, dim, 2).float() / dim))
    angles = torch.arange(length).float()[:, None] * inv_freq
    cos, sin = torch.cat([angles, angles], -1).cos(), torch.cat([angles, angles], -1).sin()

    def rotate(x):
        x1, x2 = x.chunk(2, -1)
        return x * cos + torch.cat([-x2, x1], -1) * sin

    x = state["model.embed_tokens.weight"][ids]
    for i in range(config["num_hidden_layers"]):
        p = f"model.layers.{i}."
        h = rms(x, state[p + "input_layernorm.weight"])
        q, k, v = (h @ state[p + "self_attn.W_pack.weight"].T).split(hidden, -1)
        q, k, v = (t.view(1, length, heads, dim).transpose(1, 2) for t in (q, k, v))
        scores = rotate(q) @ rotate(k).transpose(2, 3) / math.sqrt(dim)
        scores = scores.masked_fill(torch.ones(length, length).triu(1).bool(), float("-inf"))
        attended = (scores.softmax(-1) @ v).transpose(1, 2).reshape(1, length, hidden)
        x = x + attended @ state[p + "self_attn.o_proj.weight"].T
        h = rms(x, state[p + "post_attention_layernorm.weight"])
        gate, up = h @ state[p + "mlp.gate_proj.weight"].T, h @ state[p + "mlp.up_proj.weight"].T
        x = x + (F.silu(gate) * up) @ state[p + "mlp.down_proj.weight"].T
    head = state["lm_head.weight"]
    if norm_head:
        head = head / head.norm(dim=-1, keepdim=True)
    return rms(x, state["model.norm.weight"]) @ head.T


@pytest.mark.parametrize("variant", ["baichuan-7b", "baichuan2-7b", "baichuan-13b"])
def test_w_pack_split_and_head_folding_against_the_fused_layers(tmp_path, variant):
    from safetensors.torch import save_file

    config = {"architectures": ["BaichuanForCausalLM"], "model_type": "baichuan", "hidden_size": 32,
              "intermediate_size": 48, "num_attention_heads": 4, "num_hidden_layers": 2, "vocab_size": 96,
              "rms_norm_eps": 1e-6, "hidden_act": "silu", "max_position_embeddings": 64, "model_max_length": 64,
              "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2, "tie_word_embeddings": False}
    gen = torch.Generator().manual_seed(7)
    shapes = {"model.embed_tokens.weight": (96, 32), "model.norm.weight": (32,), "lm_head.weight": (96, 32)}
    for i in range(2):
        p = f"model.layers.{i}."
        shapes.update({p + "input_layernorm.weight": (32,), p + "post_attention_layernorm.weight": (32,),
                       p + "self_attn.W_pack.weight": (96, 32), p + "self_attn.o_proj.weight": (32, 32),
                       p + "mlp.gate_proj.weight": (48, 32), p + "mlp.up_proj.weight": (48, 32),
                       p + "mlp.down_proj.weight": (32, 48)})
    state = {k: (1 + 0.1 * torch.randn(s, generator=gen)) if len(s) == 1 else
             torch.randn(s, generator=gen) / math.sqrt(s[-1]) * (3 if k == "lm_head.weight" else 1)
             for k, s in shapes.items()}
    src = tmp_path / "legacy"
    src.mkdir()
    save_file(state, str(src / "model.safetensors"))
    (src / "config.json").write_text(json.dumps(config))
    out = convert_checkpoint(src, tmp_path / "native", family=baichuan.VARIANT_FAMILIES[variant])
    model = load(out)
    spec = baichuan.VARIANTS[variant]
    assert type(model).__name__ == ("BaichuanAlibiForCausalLM" if spec.alibi else "LlamaForCausalLM")
    layer = model.model.layers[1].self_attn
    fused = torch.cat([layer.q_proj.weight, layer.k_proj.weight, layer.v_proj.weight])
    assert torch.equal(fused, state["model.layers.1.self_attn.W_pack.weight"])
    head = model.lm_head.weight
    if spec.norm_head:
        assert torch.allclose(head.norm(dim=-1), torch.ones(96), atol=1e-6)
    else:
        assert torch.equal(head, state["lm_head.weight"])
    if not spec.alibi:
        ids = torch.tensor([[5, 17, 3, 88, 42, 9, 60, 1, 33]])
        with torch.no_grad():
            logits = model(input_ids=ids).logits
        expected = _fused_baichuan_7b_logits(state, config, ids, spec.norm_head)
        assert (logits - expected).abs().max().item() < 1e-4
