"""merge.py --gguf: GGUF files that load back with the merged model's logits, chat templates and an
Ollama Modelfile that render exactly our training prompt tokens, and refusals with reasons.

Round trips load the GGUF with transformers (``from_pretrained(dir, gguf_file=...)``), which
dequantizes it. The Modelfile's TEMPLATE is rendered with Go's own text/template (the engine
Ollama uses), through the ``py-go-template`` package; llama.cpp itself runs in the last test
when ``llama-cpp-python`` is installed.
"""

import json
import math
from pathlib import Path

import pytest
import torch

from alpaca_cot.cli_args import GENERATION_PRESETS, GenerationArguments
from alpaca_cot.export_templates import TemplateExportError, go_template, jinja_template
from alpaca_cot.gguf_export import GgufExportError, export_gguf, permute_qk
from alpaca_cot.templates import PromptTemplate, get_template
from alpaca_cot.tokenize import encode_prompts, encode_records, special_prefix
from merge import main as merge_main
from test_merge import PROMPT, finetune

RECORDS = {  # the record kinds a chat template must render as training does
    "single": {"instruction": "Name three colours.", "input": "", "output": "Red, green and blue."},
    "input": {"instruction": "Translate to French.", "input": "Good morning", "output": "Bonjour"},
    "multi": {"instruction": "And the next one?", "input": "", "output": "Four.",
              "history": [["Count to three.", "One, two, three."], ["Again, faster!", "1 2 3"]]},
    "system": {"instruction": "Hi", "input": "", "output": "Hello!", "system": "You are terse.\n",
               "history": [["Who are you?", "A bot."]]},
    "chinese": {"instruction": "王芳有49个橘子。", "input": "李华有23个", "output": "答案是26。"},
}


# A plain-text template using every feature the registered ones (alpaca, alpaca_zh) do not: round
# numbers, a response suffix, a separator, no input slot (the input joins the instruction).
ROUNDS = PromptTemplate(name="rounds", prompt="[Round {round}]\nQ: {query}\nA:", system="Sys.\n", sep="\n",
                        response_suffix="<eom>", round_start=1, stop_strings=("[Round",))
SUFFIXED = PromptTemplate(name="suffixed", prompt="<|User|>:{query}<eoh>\n<|Bot|>:", sep="\n",
                          response_suffix="<eoa>")


def template_named(name):
    return {"rounds": ROUNDS, "suffixed": SUFFIXED}.get(name) or get_template(name)


def messages(record, with_output: bool) -> list[dict]:
    """The chat messages of a record: a system message, the history, the request (with its input)."""
    out = [{"role": "system", "content": record["system"]}] if record.get("system") else []
    for user, assistant in record.get("history") or []:
        out += [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]
    last = {"role": "user", "content": record["instruction"]}
    if record.get("input"):
        last["input"] = record["input"]
    out.append(last)
    if with_output:
        out.append({"role": "assistant", "content": record["output"]})
    return out


# ---------------------------------------------------------------- chat templates vs our renderer


@pytest.mark.parametrize("name", ["alpaca", "alpaca_zh", "chat", "rounds", "suffixed"])
def test_jinja_chat_template_renders_our_prompt_and_training_tokens(name, tokenizer):
    template = template_named(name)
    jinja = jinja_template(template, tokenizer, bos=bool(special_prefix(tokenizer)))
    for kind, record in RECORDS.items():
        if name == "chat" and record.get("input"):
            continue  # the tokenizer's own template has no input slot: our "chat" renderer joins it to the message
        want = encode_prompts([record], tokenizer, template)[0]
        got = tokenizer.apply_chat_template(messages(record, False), chat_template=jinja, tokenize=True,
                                            add_generation_prompt=True, return_dict=False)
        assert got == want, (name, kind, tokenizer.decode(got), tokenizer.decode(want))
        trained = encode_records([record], tokenizer, template, cutoff_len=4096)[0]["input_ids"]
        full = tokenizer.apply_chat_template(messages(record, True), chat_template=jinja, tokenize=True,
                                             return_dict=False)
        assert full[:len(trained)] == trained, (name, kind)
        # a tokenizer's own template may write text after the last EOS ("\n"), which training drops
        assert full == trained or (name == "chat" and not tokenizer.decode(full[len(trained):]).strip())


def go_render(template_text: str, values: dict, tmp_path: Path) -> str:
    """Render with Go's text/template (Ollama's engine) through py-go-template."""
    go_template_lib = pytest.importorskip("go_template", reason="pip install py-go-template (requirements-dev.txt)")
    source = tmp_path / "template.tmpl"
    source.write_text(template_text, encoding="utf-8")
    return go_template_lib.render(source, values).decode("utf-8")


@pytest.mark.parametrize("name", ["alpaca", "alpaca_zh", "chat", "suffixed"])
def test_ollama_template_renders_our_prompt_tokens(name, tokenizer, tmp_path):
    """As Ollama does: the Modelfile's SYSTEM becomes the first message when a request has none."""
    template = template_named(name)
    code, default_system = go_template(template, tokenizer)
    for kind, record in RECORDS.items():
        if record.get("input"):
            continue  # Ollama's messages have no input field
        sent = messages(record, False)
        if sent[0]["role"] != "system" and default_system:
            sent.insert(0, {"role": "system", "content": default_system})
        text = go_render(code, {"Messages": [{"Role": m["role"], "Content": m["content"]} for m in sent]}, tmp_path)
        got = special_prefix(tokenizer) + tokenizer(text, add_special_tokens=False)["input_ids"]
        assert got == encode_prompts([record], tokenizer, template)[0], (name, kind, text)


def test_templates_go_cannot_express_are_refused(tokenizer):
    with pytest.raises(TemplateExportError, match="numbers its rounds"):
        go_template(ROUNDS, tokenizer)
    with pytest.raises(TemplateExportError, match="not a plain-text template"):
        jinja_template(get_template("chatglm2"), tokenizer, bos=False)  # token-level templates


# ---------------------------------------------------------------- GGUF round trips


def round_trip(gguf_path, hf_dir, tokenizer):
    """``(model read from the GGUF file, model from the Hugging Face folder, PROMPT's ids, their logits:
    GGUF's, the folder's)``, float32."""
    from transformers import AutoModelForCausalLM

    want = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
    got = gguf_logits(gguf_path)
    ids = tokenizer([PROMPT], return_tensors="pt")
    with torch.no_grad():
        return got, want, ids, (got(**ids).logits, want(**ids).logits)


def gguf_logits(path: Path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def lora_out(tiny_model_factory, tmp_path_factory):
    return finetune(tiny_model_factory("llama", hidden=64), tmp_path_factory.mktemp("gguf"))


@pytest.fixture(scope="module")
def merged(lora_out, tmp_path_factory):
    """merge.py --merged_dir --gguf: the merged checkpoint and its f16 GGUF."""
    folder = tmp_path_factory.mktemp("merged")
    merge_main(["--lora_dir", str(lora_out), "--merged_dir", str(folder / "merged"), "--gguf",
                str(folder / "model.gguf")])
    return folder / "merged", folder / "model.gguf"


# max |logit difference| against the merged fp32 model, per weight type. Rounding a weight to
# f16 changes it by at most 2^-11 (0.05%) of itself, bf16 by 2^-8 (0.4%); q8_0 stores blocks of
# 32 weights as int8 times one scale (the block's largest |weight| / 127), so a weight moves by
# up to 1/254 of its block's largest, which for a small weight is far more than 0.4% of itself.
# These errors add up with random signs over the 64-128 products of each output and 2 layers;
# on logits up to 0.8 (llama) and 4 (qwen2, gemma3) measured: f16 5.1e-4 / 3.1e-3 / 5.8e-3,
# bf16 5.6e-3, q8_0 1.1e-2. Bounds: 1e-2 for f16 and bf16 (the brief's), 3e-2 for q8_0 (a wrong
# tensor layout, norm shift or permutation is off by 1e-1 and more).
TOLERANCES = {"f16": 1e-2, "bf16": 1e-2, "q8_0": 3e-2}


@pytest.mark.parametrize("kind", ["f16", "bf16", "q8_0"])
def test_llama_fine_tune_round_trips_through_gguf(kind, merged, lora_out, tmp_path, tokenizer):
    merged_dir, f16 = merged
    path = f16 if kind == "f16" else tmp_path / f"model-{kind}.gguf"
    if kind != "f16":
        merge_main(["--lora_dir", str(lora_out), "--gguf", str(path), "--gguf_type", kind])
    got, want, ids, (a, b) = round_trip(path, merged_dir, tokenizer)
    print(f"GGUF {kind}: max |logit difference| {(a - b).abs().max():.3g}, logits up to {b.abs().max():.3g}")
    assert (a - b).abs().max() <= TOLERANCES[kind], (kind, (a - b).abs().max())
    assert b.abs().max() > 0.5  # the adapter moved the logits well away from the random base's ~0.05
    if kind == "f16":
        greedy = dict(max_new_tokens=8, do_sample=False, pad_token_id=tokenizer.pad_token_id)
        with torch.no_grad():
            assert got.generate(**ids, **greedy).tolist() == want.generate(**ids, **greedy).tolist()


def test_gguf_metadata_tokenizer_and_modelfile(merged, tokenizer):
    from gguf import GGUFReader
    from transformers import AutoTokenizer

    _, path = merged
    fields = GGUFReader(path).fields
    value = {k: fields[k].contents() for k in ("general.architecture", "tokenizer.ggml.model", "tokenizer.ggml.pre",
                                               "tokenizer.ggml.eos_token_id", "tokenizer.chat_template")}
    assert value["general.architecture"] == "llama" and value["tokenizer.ggml.model"] == "gpt2"
    assert value["tokenizer.ggml.pre"] == "gpt-2" and value["tokenizer.ggml.eos_token_id"] == tokenizer.eos_token_id
    assert value["tokenizer.chat_template"] == jinja_template(get_template("alpaca"), tokenizer, bos=False)
    loaded = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    for record in RECORDS.values():  # the tokenizer read back from the GGUF encodes prompts as ours
        assert encode_prompts([record], loaded, get_template("alpaca")) == \
            encode_prompts([record], tokenizer, get_template("alpaca"))
    modelfile = path.with_name(path.name + ".Modelfile").read_text(encoding="utf-8")
    code, system = go_template(get_template("alpaca"), tokenizer)
    assert f"FROM ./{path.name}\n" in modelfile and f'TEMPLATE """{code}"""' in modelfile
    assert f'SYSTEM """{system}"""' in modelfile
    assert 'PARAMETER stop "<|im_end|>"' in modelfile and 'PARAMETER stop "### Instruction:"' in modelfile
    preset = GENERATION_PRESETS["default"]
    sampling = GenerationArguments()
    assert sampling.temperature == preset["temperature"]
    for line in (f"PARAMETER temperature {preset['temperature']}", f"PARAMETER top_p {preset['top_p']}",
                 f"PARAMETER top_k {preset['top_k']}", f"PARAMETER repeat_penalty {preset['repetition_penalty']}",
                 f"PARAMETER num_predict {preset['max_new_tokens']}"):
        assert line in modelfile


def tiny_full_model(family: str, folder: Path, tokenizer) -> Path:
    """A tiny full checkpoint of ``family`` (what merge.py --gguf exports without merging)."""
    from transformers import AutoModelForCausalLM, Gemma3TextConfig, Qwen2Config

    common = dict(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                  pad_token_id=tokenizer.pad_token_id, initializer_range=0.08)
    if family == "qwen2":  # query/key/value biases; untied output head
        config = Qwen2Config(num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False, **common)
    else:  # Gemma 3 as llama.cpp reads it: head size 256, every 6th layer global (here: both sliding)
        config = Gemma3TextConfig(num_attention_heads=2, num_key_value_heads=1, head_dim=256,
                                  query_pre_attn_scalar=256, sliding_window=512, **common)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("norm.weight"):  # norms away from their init, so the shift is tested
                param.add_(torch.rand_like(param) * 0.5)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.mark.parametrize("family", ["qwen2", "gemma3"])
def test_qwen2_and_gemma3_round_trip(family, tokenizer, tmp_path):
    folder = tiny_full_model(family, tmp_path / family, tokenizer)
    path = tmp_path / f"{family}.gguf"
    merge_main(["--lora_dir", str(folder), "--gguf", str(path)])
    *_, (a, b) = round_trip(path, folder, tokenizer)
    print(f"GGUF {family} f16: max |logit difference| {(a - b).abs().max():.3g}, logits up to {b.abs().max():.3g}")
    assert b.abs().max() > 0.5 and (a - b).abs().max() <= TOLERANCES["f16"], (a - b).abs().max()


def test_permutation_matches_llama_cpp_rotary_pairs():
    """Row 2i of a head comes from row i, row 2i + 1 from row i + d/2 (d: head size)."""
    rows = torch.arange(2 * 8, dtype=torch.float32)[:, None].numpy()  # 2 heads of size 8
    out = permute_qk(rows, 2)[:, 0].tolist()
    assert out == [0, 4, 1, 5, 2, 6, 3, 7, 8, 12, 9, 13, 10, 14, 11, 15]


def test_unsupported_models_and_methods_are_refused_with_the_reason(tiny_model_factory, tokenizer, tmp_path,
                                                                   capsys):
    with pytest.raises(GgufExportError, match="a bloom model cannot be written as GGUF here; supported: "):
        export_gguf(tiny_model_factory("bloom"), tmp_path / "b.gguf")
    from transformers import AutoModelForCausalLM, LlamaConfig

    scaled = tmp_path / "scaled"
    AutoModelForCausalLM.from_config(LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
        rope_parameters={"rope_type": "linear", "factor": 2.0, "rope_theta": 10000.0})).save_pretrained(scaled)
    tokenizer.save_pretrained(scaled)
    with pytest.raises(GgufExportError, match="uses rope scaling"):
        export_gguf(scaled, tmp_path / "s.gguf")
    assert not (tmp_path / "s.gguf").exists()
    with pytest.raises(SystemExit) as info:
        merge_main(["--lora_dir", str(scaled)])
    assert "give --merged_dir (a checkpoint folder), --gguf (a GGUF file), or both" in str(info.value.code)


def test_prompt_learning_fine_tunes_are_refused(tiny_model_factory, tmp_path):
    from alpaca_cot.cli_args import DataArguments, FinetuneArguments, ModelArguments, PeftArguments
    from alpaca_cot.train import run

    data = tmp_path / "data.json"
    data.write_text(json.dumps([{"instruction": "Hi", "input": "", "output": "Hello"}] * 4))
    out = tmp_path / "prefix"
    run(ModelArguments(model_type="llama", model_name_or_path=tiny_model_factory("llama", hidden=64)),
        DataArguments(data=[str(data)], cutoff_len=64),
        PeftArguments(peft_type="prefix", num_virtual_tokens=2, prompt_encoder_hidden_size=8),
        FinetuneArguments(output_dir=str(out), max_steps=1, per_gpu_train_batch_size=4, save_steps=1000))
    with pytest.raises(SystemExit) as info:
        merge_main(["--lora_dir", str(out), "--gguf", str(tmp_path / "p.gguf")])
    assert "it is prompt-based" in str(info.value.code) and not (tmp_path / "p.gguf").exists()


@pytest.mark.slow
def test_llama_cpp_gives_the_greedy_answers_of_transformers(merged, tokenizer):
    """llama.cpp itself (llama-cpp-python) on the f16 GGUF: same prompt tokens, same greedy answer."""
    llama_cpp = pytest.importorskip("llama_cpp", reason="pip install llama-cpp-python (compiles llama.cpp)")
    from transformers import AutoModelForCausalLM

    merged_dir, path = merged
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=256, n_threads=2, verbose=False, logits_all=False)
    want = AutoModelForCausalLM.from_pretrained(merged_dir, dtype=torch.float32).eval()
    template = get_template("alpaca")
    for record in RECORDS.values():
        prompt = encode_prompts([record], tokenizer, template)[0]
        text = tokenizer.apply_chat_template(messages(record, False), chat_template=llm.metadata[
            "tokenizer.chat_template"], tokenize=False, add_generation_prompt=True)
        assert llm.tokenize(text.encode("utf-8"), add_bos=False, special=True) == prompt
        with torch.no_grad():
            ids = torch.tensor([prompt])
            expected = want.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=8, do_sample=False,
                                     pad_token_id=tokenizer.pad_token_id)[0, len(prompt):].tolist()
        got = []
        llm.reset()
        for token in llm.generate(prompt, temp=0.0, top_k=1, repeat_penalty=1.0):
            if token == tokenizer.eos_token_id or len(got) == 8:
                break
            got.append(token)
        assert got == [t for t in expected if t != tokenizer.eos_token_id][:8], record
        assert math.isfinite(float(len(got)))
