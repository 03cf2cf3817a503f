"""Templates render the exact prompt strings of each format, for training and inference alike."""

import pytest

from alpaca_cot.templates import TEMPLATES, get_template

SINGLE = {"instruction": "Add 2 and 3.", "input": "", "output": "5"}
WITH_INPUT = {"instruction": "Sort the numbers.", "input": "3, 1, 2", "output": "1, 2, 3"}
MULTI = {"instruction": "And a third?", "input": "", "output": "Three.",
         "history": [["Say one.", "One."], ["Now two.", "Two."]]}


def test_alpaca_without_input():
    assert get_template("alpaca").turns(SINGLE) == [(
        "Below is an instruction that describes a task. Write a response that appropriately completes the "
        "request.\n\n### Instruction:\nAdd 2 and 3.\n\n### Response:\n", "5")]


def test_alpaca_with_input():
    assert get_template("alpaca").turns(WITH_INPUT) == [(
        "Below is an instruction that describes a task, paired with an input that provides further context. "
        "Write a response that appropriately completes the request.\n\n### Instruction:\nSort the numbers."
        "\n\n### Input:\n3, 1, 2\n\n### Response:\n", "1, 2, 3")]


def test_alpaca_zh_multi_turn():
    turns = get_template("alpaca_zh").turns(MULTI)
    assert turns == [
        ("下面是一条描述任务的指令。请写出恰当完成该请求的回答。\n\n### 指令：\nSay one.\n\n### 回答：\n", "One."),
        ("\n\n### 指令：\nNow two.\n\n### 回答：\n", "Two."),
        ("\n\n### 指令：\nAnd a third?\n\n### 回答：\n", "Three."),
    ]


def test_chatglm_rounds_and_inference_request():
    # ChatGLM-6B: earlier rounds are context of the last one (its model sees them bidirectionally).
    turns = get_template("chatglm").turns(MULTI, with_response=False)
    assert turns == [("[Round 0]\n问：Say one.\n答：One.\n[Round 1]\n问：Now two.\n答：Two.\n"
                      "[Round 2]\n问：And a third?\n答：", None)]
    assert get_template("chatglm").turns(SINGLE) == [("Add 2 and 3.", "5")]  # no history: the bare query
    assert get_template("chatglm2").turns(SINGLE)[0][0] == "[Round 1]\n\n问：Add 2 and 3.\n\n答："


def test_input_joins_instruction_where_no_input_slot():
    assert get_template("internlm").turns(WITH_INPUT) == [
        ("<|User|>:Sort the numbers.\n3, 1, 2<eoh>\n<|Bot|>:", "1, 2, 3<eoa>")]


def test_moss_meta_instruction_and_end_of_turn():
    (prompt, response), = get_template("moss").turns(SINGLE)
    assert prompt.startswith("You are an AI assistant whose name is MOSS.\n- MOSS is a conversational")
    assert prompt.endswith("Capabilities and tools that MOSS can possess.\n<|Human|>: Add 2 and 3.<eoh>\n<|MOSS|>:")
    assert response == " 5"  # the space after "<|MOSS|>:" belongs to the reply; <eom> is its eos id
    assert get_template("moss").clean_response(" 5<eom>\n<|Human|>: more") == "5"


def test_record_system_overrides_default():
    record = {**SINGLE, "system": "Be brief.\n"}
    assert get_template("alpaca").turns(record)[0][0].startswith("Be brief.\n### Instruction:")


def test_chat_template_segments_are_a_prefix_of_the_rendered_conversation(tokenizer):
    turns = get_template("chat").turns(MULTI, tokenizer=tokenizer)
    rendered = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Say one."}, {"role": "assistant", "content": "One."},
         {"role": "user", "content": "Now two."}, {"role": "assistant", "content": "Two."},
         {"role": "user", "content": "And a third?"}, {"role": "assistant", "content": "Three."}], tokenize=False)
    eos = tokenizer.eos_token
    joined = "".join(p + r + eos for p, r in turns)
    assert rendered.startswith(joined)
    assert [r for _, r in turns] == ["One.", "Two.", "Three."]
    assert turns[0][0].endswith("<|im_start|>user\nSay one.<|im_end|>\n<|im_start|>assistant\n")


def test_chat_template_needs_a_tokenizer():
    with pytest.raises(ValueError, match="chat template"):
        get_template("chat").turns(SINGLE)


def test_unknown_template_lists_known_ones():
    with pytest.raises(ValueError, match="known templates: .*alpaca"):
        get_template("nope")


def test_every_family_template_is_registered():
    from alpaca_cot.models import MODEL_REGISTRY

    assert {spec.template for spec in MODEL_REGISTRY.values()} <= set(TEMPLATES)


# ---------------------------------------------------------------- the legacy families' chat formats

import json  # noqa: E402
from pathlib import Path  # noqa: E402

PACKS = Path(__file__).parent / "fixtures" / "legacy_models"
CASE_C = {"instruction": "讲个笑话", "input": "", "output": None, "history": [["你好", "你好！有什么可以帮你？"]]}
# Real ids with a meaning in the packs' case c, by name (their tokenizer configs and chat code).
CASE_C_NAMES = {
    "chatglm": {130001: "[gMASK]", 130004: "<sop>"},
    "chatglm2": {64790: "[gMASK]", 64792: "sop"},
    "chatglm3": {64790: "[gMASK]", 64792: "sop", 64795: "<|user|>", 64796: "<|assistant|>"},
    "baichuan": {195: 195, 196: 196},
    "internlm": {1: "<s>", 103027: "<eoh>", 103028: "<eoa>"},
    "moss": {106067: "<eoh>", 106068: "<eom>"},
}


def skeleton(ids, names):
    """The ids with every named id kept (as its name) and every run of other ids folded into "T"."""
    out = []
    for i in ids:
        name = names.get(i, "T")
        if not (name == "T" and out and out[-1] == "T"):
            out.append(name)
    return out


@pytest.mark.parametrize("family", ["chatglm", "chatglm2", "chatglm3", "baichuan", "internlm", "moss"])
def test_family_prompt_is_its_chat_code_prompt(family, legacy_tokenizers):
    """Case c of the reference packs: the same special ids in the same places as the real code built,
    and, with our small vocabulary, the ids the family's chat code builds (re-stated in legacy_vocabs)."""
    from legacy_vocabs import reference_chat_ids

    from alpaca_cot.tokenize import encode_prompts

    folder, tok = legacy_tokenizers[family]
    (ours,) = encode_prompts([CASE_C], tok, get_template(family))
    assert ours == reference_chat_ids(family, folder, [("你好", "你好！有什么可以帮你？")], "讲个笑话")
    real = json.loads((PACKS / family / "reference.json").read_text())["cases"]["c"]["real_ids"]
    names = CASE_C_NAMES[family]
    our_names = {(name if isinstance(name, int) else tok.convert_tokens_to_ids(name)): name for name in names.values()}
    assert skeleton(ours, our_names) == skeleton(real, names)
    if family == "chatglm":  # "\n" is one id (<n>), as the real ids' 4, five times
        assert ours.count(tok.convert_tokens_to_ids("<n>")) == real.count(4) == 5
    if family == "chatglm3":  # each piece encoded alone: every role id is followed by the "\n" piece, "▁" first
        piece = tok("\n", add_special_tokens=False)["input_ids"]
        roles = [i for i, t in enumerate(ours) if t in our_names and our_names[t] in ("<|user|>",)]
        assert all(ours[i + 1:i + 1 + len(piece)] == piece for i in roles) and real[3:5] == [30910, 13]
    if family == "chatglm2":  # one text: the reply and later rounds carry no dummy prefix ("▁") of their own
        assert tok("\n\n", add_special_tokens=False)["input_ids"][0] == tok.convert_tokens_to_ids("▁")


def test_family_templates_need_their_tokenizer(tokenizer):
    from alpaca_cot.tokenize import encode_prompts

    with pytest.raises(ValueError, match="needs the family's own tokenizer"):
        encode_prompts([SINGLE], tokenizer, get_template("chatglm3"))
