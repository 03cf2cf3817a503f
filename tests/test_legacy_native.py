"""InternLM v1, MOSS and ChatGLM2/3 checkpoints converted to native transformers classes.

Every pack in tests/fixtures/legacy_models/ carries what the family's own upstream code computed
(under transformers 4.33) on a tiny checkpoint in the legacy layout. The converted folder, loaded by
plain ``AutoModelForCausalLM``, must reproduce it: logits (1e-4 at the positions that count), the loss
(1e-5), the greedy continuation with and without a cache; batched rows must equal single rows.
"""

import json
import logging
import shutil

import pytest
import torch
from legacy_packs import case_inputs, load_pack, valid_positions

from alpaca_cot.legacy import LEGACY_FAMILIES
from alpaca_cot.legacy.convert import LegacyConversionError, convert_checkpoint, detect_family

PACKS = ("internlm", "moss", "chatglm2", "chatglm3")
NATIVE = {"internlm": "LlamaForCausalLM", "moss": "CodeGenForCausalLM", "chatglm2": "GlmForCausalLM",
          "chatglm3": "GlmForCausalLM"}


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """``name -> (model, reference_json, tensors)``: each pack converted once, loaded in float32."""
    from transformers import AutoModelForCausalLM

    models = {}

    def get(name):
        if name not in models:
            folder, reference, tensors = load_pack(name)
            out = convert_checkpoint(folder, tmp_path_factory.mktemp(f"native-{name}") / "model")
            model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
            models[name] = (model, reference, tensors)
        return models[name]

    return get


def _copy_pack(name, tmp_path):
    folder, _, _ = load_pack(name)
    dst = tmp_path / name
    shutil.copytree(folder, dst, ignore=shutil.ignore_patterns("reference.*", "README.md"))
    for path in dst.iterdir():
        path.chmod(0o644)  # the packs are read-only; the copies are edited
    return dst


def _edit_config(folder, **changes):
    config = json.loads((folder / "config.json").read_text())
    config.update(changes)
    (folder / "config.json").write_text(json.dumps(config))
    return config


# --- detection ------------------------------------------------------------------------------------------

def test_detection_picks_exactly_one_family_per_pack():
    from legacy_packs import pack_names

    for name in pack_names():  # the other families' packs too: ours must not claim them
        family = detect_family(load_pack(name)[0])
        if name in PACKS:
            assert family is not None and family.name == name, (name, family)
        else:
            assert family is None or family.name == name, (name, family.name)
    for name in PACKS:
        assert LEGACY_FAMILIES[name].native_class == NATIVE[name]
        assert LEGACY_FAMILIES[name].checkpoints


def test_chatglm_generation_from_the_folder_files(tmp_path, caplog):
    from alpaca_cot.legacy.chatglm2 import chatglm_generation

    folder = _copy_pack("chatglm2", tmp_path)
    config = _edit_config(folder, _name_or_path="/data/my-finetune")  # nothing in the files decides
    with caplog.at_level(logging.WARNING, logger="alpaca_cot.legacy.chatglm2"):
        assert detect_family(folder).name == "chatglm2"
    assert "taken as ChatGLM2 unless --model_type chatglm3" in caplog.text

    files = {"tokenizer_config.json": folder / "tokenizer_config.json"}
    (folder / "tokenizer_config.json").write_text(json.dumps(
        {"chat_template": "{% for m in messages %}<|{{ m['role'] }}|>\n {{ m['content'] }}{% endfor %}<|assistant|>"}))
    assert chatglm_generation(config, files)[0] == "chatglm3"
    (folder / "tokenizer_config.json").write_text(json.dumps({"name_or_path": "THUDM/chatglm2-6b"}))
    assert chatglm_generation(config, files)[0] == "chatglm2"
    # the tokenizer code decides over everything else (every published folder ships it)
    code = folder / "tokenization_chatglm.py"
    code.write_text('special_tokens = ["[MASK]", "[gMASK]", "[sMASK]", "sop", "eop", "<|system|>", "<|user|>", '
                    '"<|assistant|>", "<|observation|>"]\n')
    caplog.clear()
    assert detect_family(folder).name == "chatglm3" and "taken as" not in caplog.text
    code.write_text('special_tokens = ["[MASK]", "[gMASK]", "[sMASK]", "sop", "eop"]\n')
    assert detect_family(folder).name == "chatglm2"


def test_chatglm_detection_leaves_v1_and_glm4_alone():
    from alpaca_cot.legacy.chatglm2 import is_chatglm2_layout

    v1 = {"model_type": "chatglm", "position_encoding_2d": True, "inner_hidden_size": 16384, "vocab_size": 130528}
    glm4 = {"model_type": "chatglm", "multi_query_attention": True, "padded_vocab_size": 151552}
    assert not is_chatglm2_layout(v1) and not is_chatglm2_layout(glm4)
    with pytest.raises(LegacyConversionError, match="not a ChatGLM2/ChatGLM3 config"):
        LEGACY_FAMILIES["chatglm2"].convert_config(glm4)


# --- the references -------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", PACKS)
def test_logits_loss_and_greedy_match_the_upstream_code(converted, name):
    model, reference, tensors = converted(name)
    assert type(model).__name__ == NATIVE[name]
    with torch.no_grad():
        for case in reference["cases"]:  # a, b, c (and b_left for ChatGLM2/3)
            logits = model(**case_inputs(reference, tensors, case)).logits
            expected = tensors[f"{case}.logits"]
            assert logits.shape == expected.shape, case
            for row, positions in enumerate(valid_positions(reference, case, logits.shape[0])):
                diff = (logits[row, positions] - expected[row, positions]).abs().max().item()
                assert diff < 1e-4, (name, case, row, diff)
        loss = model(input_ids=tensors["a.input_ids"], labels=tensors["a.input_ids"]).loss.item()
        assert abs(loss - tensors["a.loss"].item()) < 1e-5
        for use_cache in (True, False):
            out = model.generate(tensors["a.input_ids"], max_new_tokens=8, do_sample=False, use_cache=use_cache,
                                 output_scores=True, return_dict_in_generate=True)
            assert torch.equal(out.sequences, tensors["a.generate.sequences"]), (name, use_cache)
            scores = torch.cat(out.scores)
            assert (scores - tensors["a.generate.scores"]).abs().max().item() < 1e-4


@pytest.mark.parametrize("name", PACKS)
def test_batched_rows_equal_single_rows(converted, name):
    model, reference, tensors = converted(name)
    rows = reference["cases"]["b"]["rows"]
    pad = model.config.pad_token_id if model.config.pad_token_id is not None else 0
    width = max(map(len, rows))
    with torch.no_grad():
        # forward: the padded row of case b alone, against its row in the batch
        alone = model(input_ids=torch.tensor([rows[1]])).logits[0]
        batch = model(**case_inputs(reference, tensors, "b")).logits[1, :len(rows[1])]
        assert (alone - batch).abs().max().item() < 1e-5
        # greedy generation, left-padded as generation pads
        ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows])
        mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
        batched = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=6, do_sample=False,
                                 pad_token_id=pad)[:, width:]
        for i, r in enumerate(rows):
            single = model.generate(input_ids=torch.tensor([r]), max_new_tokens=6, do_sample=False, pad_token_id=pad)
            assert batched[i].tolist() == single[0, len(r):].tolist(), (name, i)


# --- refusals and config variants -----------------------------------------------------------------------

def test_a_tensor_of_the_wrong_shape_is_refused_by_name(tmp_path):
    from safetensors.torch import load_file, save_file

    folder = _copy_pack("internlm", tmp_path)
    state = load_file(str(folder / "model.safetensors"))
    state["model.layers.1.mlp.up_proj.weight"] = state["model.layers.1.mlp.up_proj.weight"][:-1].clone()
    save_file(state, str(folder / "model.safetensors"))
    with pytest.raises(LegacyConversionError, match=r"model\.layers\.1\.mlp\.up_proj\.weight"):
        convert_checkpoint(folder, tmp_path / "out")
    assert not (tmp_path / "out").exists()

    folder = _copy_pack("chatglm2", tmp_path / "glm")
    state = load_file(str(folder / "model.safetensors"))
    name = "transformer.encoder.layers.0.self_attention.query_key_value.weight"
    state[name] = state[name][:-16].clone()
    save_file(state, str(folder / "model.safetensors"))
    with pytest.raises(LegacyConversionError, match=name.replace(".", r"\.")):
        convert_checkpoint(folder, tmp_path / "out")


def test_quantized_moss_and_chatglm_are_refused_clearly(tmp_path):
    moss = _copy_pack("moss", tmp_path)
    _edit_config(moss, wbits=4, groupsize=128)  # moss-moon-003-sft-int4's config
    with pytest.raises(LegacyConversionError, match=r"GPTQ-quantized \(wbits=4.*--quantization_bit"):
        convert_checkpoint(moss, tmp_path / "out")
    with pytest.raises(LegacyConversionError, match="qweight"):
        LEGACY_FAMILIES["moss"].convert_state_dict({"transformer.h.0.attn.qkv_proj.qweight": torch.zeros(1)}, {})

    glm = _copy_pack("chatglm3", tmp_path)
    _edit_config(glm, quantization_bit=4)  # chatglm2-6b-int4 / chatglm3-6b int4 uploads
    with pytest.raises(LegacyConversionError, match=r"quantized \(quantization_bit=4"):
        convert_checkpoint(glm, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    _edit_config(glm, quantization_bit=0, pre_seq_len=128)  # a P-tuning v2 checkpoint
    with pytest.raises(LegacyConversionError, match="P-tuning v2 prefix"):
        convert_checkpoint(glm, tmp_path / "out")
    with pytest.raises(LegacyConversionError, match="prefix_encoder"):
        LEGACY_FAMILIES["chatglm3"].convert_state_dict({"transformer.prefix_encoder.embedding.weight": torch.zeros(1)},
                                                       {})


def _rope(config):
    from transformers.models.glm.modeling_glm import GlmRotaryEmbedding

    return GlmRotaryEmbedding(config).inv_freq


def test_rope_ratio_means_what_each_generation_made_it_mean(tmp_path):
    """ChatGLM2-32k divides positions by rope_ratio; ChatGLM3-32k multiplies the rotary base by it."""
    config = json.loads((load_pack("chatglm2")[0] / "config.json").read_text())
    config["rope_ratio"] = 4
    dim = config["kv_channels"] // 2  # rotary on half of each head
    exponent = torch.arange(0, dim, 2, dtype=torch.float32) / dim
    positions = torch.arange(20, dtype=torch.float32)
    v2 = _rope(LEGACY_FAMILIES["chatglm2"].convert_config(config))
    v3 = _rope(LEGACY_FAMILIES["chatglm3"].convert_config(config))
    # the upstream formulas: angle = position / ratio * 10000^-e (ChatGLM2), position * (10000 * ratio)^-e (ChatGLM3)
    torch.testing.assert_close(torch.outer(positions, v2), torch.outer(positions / 4, 10000.0 ** -exponent))
    torch.testing.assert_close(torch.outer(positions, v3), torch.outer(positions, 40000.0 ** -exponent))


def test_explicit_family_overrides_detection(tmp_path):
    folder = _copy_pack("chatglm2", tmp_path)
    _edit_config(folder, _name_or_path="local", rope_ratio=50)
    out = convert_checkpoint(folder, tmp_path / "out", family="chatglm3")
    converted = json.loads((out / "config.json").read_text())
    assert converted["model_type"] == "glm" and converted["rope_parameters"]["rope_theta"] == 500000.0
    assert json.loads((out / "alpaca_cot_conversion.json").read_text())["family"] == "chatglm3"
    with pytest.raises(LegacyConversionError, match="unknown legacy family 'chatglm4'"):
        convert_checkpoint(folder, tmp_path / "out2", family="chatglm4")


def test_internlm_biases_and_rotary_from_the_config(tmp_path):
    """internlm-7b has q/k/v/o biases (config bias: true); later configs carry rotary: {base, type}."""
    from safetensors.torch import load_file, save_file
    from transformers import AutoModelForCausalLM

    folder = _copy_pack("internlm", tmp_path)
    _edit_config(folder, bias=True, rotary={"base": 10000, "type": "dynamic"})
    state = load_file(str(folder / "model.safetensors"))
    generator = torch.Generator().manual_seed(0)
    for layer in (0, 1):
        for proj in ("q", "k", "v", "o"):
            state[f"model.layers.{layer}.self_attn.{proj}_proj.bias"] = 0.1 * torch.randn(64, generator=generator)
    state["model.layers.0.self_attn.rotary_emb.inv_freq"] = torch.ones(8)  # a buffer some checkpoints saved
    save_file(state, str(folder / "model.safetensors"))
    out = convert_checkpoint(folder, tmp_path / "out")
    config = json.loads((out / "config.json").read_text())
    assert config["attention_bias"] is True and config["rope_parameters"]["rope_type"] == "dynamic"
    model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    torch.testing.assert_close(model.model.layers[1].self_attn.o_proj.bias,
                               state["model.layers.1.self_attn.o_proj.bias"])
