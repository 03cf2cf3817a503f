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
    turns = get_template("chatglm").turns(MULTI, with_response=False)
    assert turns == [("[Round 0]\n问：Say one.\n答：", "One."), ("\n[Round 1]\n问：Now two.\n答：", "Two."),
                     ("\n[Round 2]\n问：And a third?\n答：", None)]
    assert get_template("chatglm2").turns(SINGLE)[0][0] == "[Round 1]\n\n问：Add 2 and 3.\n\n答："


def test_input_joins_instruction_where_no_input_slot():
    assert get_template("internlm").turns(WITH_INPUT) == [
        ("<|User|>:Sort the numbers.\n3, 1, 2<eoh>\n<|Bot|>:", "1, 2, 3<eoa>")]


def test_moss_suffix_and_system():
    (prompt, response), = get_template("moss").turns(SINGLE)
    assert prompt.startswith("You are an AI assistant whose name is MOSS.")
    assert prompt.endswith("<|Human|>: Add 2 and 3.<eoh>\n<|MOSS|>:")
    assert response == "5<eom>"
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
