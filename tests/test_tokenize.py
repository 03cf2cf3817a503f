"""Label masking, EOS handling, truncation and train/inference prompt parity, on the real tokenizer."""

import pytest

from alpaca_cot.templates import get_template
from alpaca_cot.tokenize import (IGNORE_INDEX, TruncationReport, encode_prompts, encode_records,
                                 tokenize_cached)

M = IGNORE_INDEX
SINGLE = {"instruction": "Add 2 and 3.", "input": "", "output": "5"}
WITH_INPUT = {"instruction": "Sort the numbers.", "input": "3, 1, 2", "output": "1, 2, 3"}
MULTI = {"instruction": "And a third?", "input": "", "output": "Three.",
         "history": [["Say one.", "One."], ["Now two.", "Two."]]}


def ids(tokenizer, text):
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def expected(tokenizer, segments):
    """Expected (input_ids, labels) from literal (prompt, response) strings: prompt masked, response + EOS kept."""
    eos = tokenizer.eos_token_id
    input_ids, labels = [], []
    for prompt, response in segments:
        p, r = ids(tokenizer, prompt), ids(tokenizer, response)
        input_ids += p + r + [eos]
        labels += [M] * len(p) + r + [eos]
    return input_ids, labels


ALPACA_HEAD = ("Below is an instruction that describes a task. Write a response that appropriately "
               "completes the request.\n\n")


@pytest.mark.parametrize("record,segments", [
    (SINGLE, [(ALPACA_HEAD + "### Instruction:\nAdd 2 and 3.\n\n### Response:\n", "5")]),
    (WITH_INPUT, [("Below is an instruction that describes a task, paired with an input that provides further "
                   "context. Write a response that appropriately completes the request.\n\n### Instruction:\n"
                   "Sort the numbers.\n\n### Input:\n3, 1, 2\n\n### Response:\n", "1, 2, 3")]),
    (MULTI, [(ALPACA_HEAD + "### Instruction:\nSay one.\n\n### Response:\n", "One."),
             ("\n\n### Instruction:\nNow two.\n\n### Response:\n", "Two."),
             ("\n\n### Instruction:\nAnd a third?\n\n### Response:\n", "Three.")]),
])
def test_alpaca_labels_exact(tokenizer, record, segments):
    (encoded,) = encode_records([record], tokenizer, get_template("alpaca"), cutoff_len=1024)
    assert (encoded["input_ids"], encoded["labels"]) == expected(tokenizer, segments)


@pytest.mark.parametrize("record,segments", [
    # ChatGLM-6B: a request without history is the bare query (its chat()); earlier rounds are
    # context (masked), only the last reply is learned.
    (SINGLE, [("Add 2 and 3.", "5")]),
    (WITH_INPUT, [("Sort the numbers.\n3, 1, 2", "1, 2, 3")]),
    (MULTI, [("[Round 0]\n问：Say one.\n答：One.\n[Round 1]\n问：Now two.\n答：Two.\n[Round 2]\n问：And a third?\n答：",
              "Three.")]),
])
def test_chatglm_labels_exact(tokenizer, record, segments):
    (encoded,) = encode_records([record], tokenizer, get_template("chatglm"), cutoff_len=1024)
    assert (encoded["input_ids"], encoded["labels"]) == expected(tokenizer, segments)


def test_three_turn_labels_cover_exactly_the_assistant_turns(tokenizer):
    (encoded,) = encode_records([MULTI], tokenizer, get_template("alpaca"), cutoff_len=1024)
    labelled = [t for t in encoded["labels"] if t != M]
    eos = tokenizer.eos_token_id
    assert labelled == ids(tokenizer, "One.") + [eos] + ids(tokenizer, "Two.") + [eos] + ids(tokenizer, "Three.") + [eos]


def test_eos_is_an_id_never_a_string(tokenizer):
    (encoded,) = encode_records([SINGLE], tokenizer, get_template("chat"), cutoff_len=1024)
    eos = tokenizer.eos_token_id
    # <|im_end|> appears once per rendered message in the chat template; the response's one is our EOS id.
    assert encoded["labels"][-1] == eos and encoded["input_ids"][-1] == eos
    assert encoded["labels"].count(eos) == 1


@pytest.mark.parametrize("template", ["alpaca", "alpaca_zh", "chat", "chatglm", "chatglm2", "moss", "internlm",
                                      "baichuan"])
@pytest.mark.parametrize("record", [SINGLE, WITH_INPUT, MULTI], ids=["single", "input", "multi"])
def test_training_and_inference_prompts_are_identical(tokenizer, template, record):
    tpl = get_template(template)
    (encoded,) = encode_records([record], tokenizer, tpl, cutoff_len=4096)
    (prompt,) = encode_prompts([{k: v for k, v in record.items() if k != "output"} | {"output": None}],
                               tokenizer, tpl)
    n = len(prompt)
    assert encoded["input_ids"][:n] == prompt
    assert all(label == M for label in encoded["labels"][n - 1:n])  # the last prompt token is masked
    assert encoded["labels"][n] != M  # and the response starts right after it


def test_truncation_inside_response_keeps_eos(tokenizer):
    record = {"instruction": "Count.", "input": "", "output": " ".join(str(i) for i in range(200))}
    report = TruncationReport()
    (encoded,) = encode_records([record], tokenizer, get_template("alpaca"), cutoff_len=60, report=report)
    assert len(encoded["input_ids"]) == 60
    assert encoded["input_ids"][-1] == encoded["labels"][-1] == tokenizer.eos_token_id
    assert report.truncated == 1 and report.dropped == 0


def test_prompt_longer_than_cutoff_is_dropped_and_counted(tokenizer):
    long_prompt = {"instruction": "word " * 300, "input": "", "output": "ok"}
    report = TruncationReport()
    encoded = encode_records([long_prompt, SINGLE], tokenizer, get_template("alpaca"), cutoff_len=64, report=report)
    assert len(encoded) == 1 and encoded[0]["labels"][-1] == tokenizer.eos_token_id
    assert (report.total, report.truncated, report.dropped, report.dropped_examples) == (2, 1, 1, [0])


def test_a_single_surviving_response_token_is_not_enough(tokenizer):
    tpl = get_template("alpaca")
    n_prompt = len(encode_prompts([SINGLE | {"output": None}], tokenizer, tpl)[0])
    record = {**SINGLE, "output": "a long enough answer to be cut"}
    report = TruncationReport()
    assert encode_records([record], tokenizer, tpl, cutoff_len=n_prompt + 1, report=report) == []
    assert report.dropped == 1
    kept = encode_records([record], tokenizer, tpl, cutoff_len=n_prompt + 2)
    assert len(kept) == 1 and sum(t != M for t in kept[0]["labels"]) == 2


def test_later_turn_cut_in_its_prompt_keeps_earlier_turns(tokenizer):
    tpl = get_template("alpaca")
    (full,) = encode_records([MULTI], tokenizer, tpl, cutoff_len=4096)
    first_turn_end = full["labels"].index(tokenizer.eos_token_id) + 1
    (cut,) = encode_records([MULTI], tokenizer, tpl, cutoff_len=first_turn_end + 3)
    assert cut["input_ids"] == full["input_ids"][:first_turn_end]  # trailing prompt tokens trimmed


def test_collator_pads_without_touching_labels(tokenizer):
    """The classic failure: a language-modelling collator rebuilding labels from input_ids."""
    from transformers import DataCollatorForSeq2Seq

    encoded = encode_records([SINGLE, MULTI], tokenizer, get_template("alpaca"), cutoff_len=1024)
    batch = DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=M, padding=True)(
        [dict(e) for e in encoded])
    for row, e in zip(batch["labels"].tolist(), encoded):
        n = len(e["labels"])
        assert row[:n] == e["labels"] and set(row[n:]) <= {M}
    # pad == eos for this tokenizer: the EOS labels survive because labels are never derived from pad ids
    assert batch["labels"][0].tolist().count(tokenizer.eos_token_id) == 1


def test_tokenization_is_cached(tokenizer, tmp_path):
    records = [SINGLE, WITH_INPUT, MULTI]
    tpl = get_template("alpaca")
    first, report1, hit1 = tokenize_cached(records, tokenizer, tpl, 512, cache_dir=tmp_path)
    second, report2, hit2 = tokenize_cached(records, tokenizer, tpl, 512, cache_dir=tmp_path)
    assert (hit1, hit2) == (False, True)
    assert first["labels"] == second["labels"] and report1 == report2
    _, _, hit3 = tokenize_cached(records, tokenizer, tpl, 256, cache_dir=tmp_path)
    _, _, hit4 = tokenize_cached(records, tokenizer, get_template("alpaca_zh"), 512, cache_dir=tmp_path)
    assert not hit3 and not hit4


# ---------------------------------------------------------------- the legacy families' token-level formats

FAMILY_RECORD = {"instruction": "讲个笑话", "input": "", "output": "好的。", "history": [["你好", "你好！有什么可以帮你？"]]}


def _family_expected_labels(family, tok):
    """The labelled ids of FAMILY_RECORD: each reply the family's chat format trains, with its end."""
    from alpaca_cot.tokenize import _continued_ids

    def enc(text):
        return tok(text, add_special_tokens=False)["input_ids"]

    def cont(text):
        return _continued_ids(tok, [text])[0]

    hist, reply, eos = "你好！有什么可以帮你？", "好的。", tok.eos_token_id
    return {
        "chatglm": enc(reply) + [eos],  # the earlier reply is context before <sop>
        "chatglm2": cont(hist) + cont(reply) + [eos],
        "chatglm3": enc("\n") + enc(hist) + [tok.convert_tokens_to_ids("<|user|>")] + enc("\n") + enc(reply) + [eos],
        "baichuan": tok(hist)["input_ids"] + [eos] + tok(reply)["input_ids"] + [eos],
        "internlm": cont(hist + "<eoa>") + cont(reply + "<eoa>"),
        "moss": enc(" " + hist) + [eos] + enc(" " + reply) + [eos],
    }[family]


@pytest.mark.parametrize("family", ["chatglm", "chatglm2", "chatglm3", "baichuan", "internlm", "moss"])
def test_family_training_and_inference_prompts_are_identical(family, legacy_tokenizers):
    _, tok = legacy_tokenizers[family]
    tpl = get_template(family)
    (row,) = encode_records([FAMILY_RECORD], tok, tpl, cutoff_len=4096)
    (prompt,) = encode_prompts([FAMILY_RECORD | {"output": None}], tok, tpl)
    n = len(prompt)
    assert row["input_ids"][:n] == prompt
    assert all(label != M for label in row["labels"][n:]) and row["labels"][n - 1] == M
    assert [label for label in row["labels"] if label != M] == _family_expected_labels(family, tok)
    end = tok.convert_tokens_to_ids("<eoa>") if family == "internlm" else tok.eos_token_id
    assert row["input_ids"][-1] == end
    if family == "baichuan":  # no eos in the input after the history reply: the user id carries its label
        k = row["input_ids"].index(195, 1)
        assert row["labels"][k] == tok.eos_token_id and tok.eos_token_id not in row["input_ids"][:-1]


def test_family_truncation_keeps_an_end_and_counts(legacy_tokenizers):
    _, tok = legacy_tokenizers["chatglm3"]
    record = {"instruction": "讲个笑话", "input": "", "output": "好的。" * 40}
    (prompt,) = encode_prompts([record | {"output": None}], tok, get_template("chatglm3"))
    report = TruncationReport()
    (row,) = encode_records([record], tok, get_template("chatglm3"), cutoff_len=len(prompt) + 5, report=report)
    assert len(row["input_ids"]) == len(prompt) + 5 and row["labels"][-1] == row["input_ids"][-1] == tok.eos_token_id
    assert report.truncated == 1


def test_family_stop_strings_cover_their_end_tokens(legacy_tokenizers):
    from alpaca_cot.stop_strings import StopOnStrings

    _, tok = legacy_tokenizers["chatglm3"]
    user = tok.convert_tokens_to_ids("<|user|>")
    stop = StopOnStrings(tok, get_template("chatglm3").stop_strings)
    import torch

    ids = tok("好的", add_special_tokens=False)["input_ids"]
    assert stop(torch.tensor([ids + [user]]), None).tolist() == [True]
    assert stop(torch.tensor([ids]), None).tolist() == [False]
    assert get_template("chatglm3").clean_response(tok.decode(ids + [user], skip_special_tokens=True)) == "好的"
    _, tok = legacy_tokenizers["internlm"]
    eoa = tok.convert_tokens_to_ids("<eoa>")
    text = tok.decode(tok("好的", add_special_tokens=False)["input_ids"] + [eoa], skip_special_tokens=True)
    assert get_template("internlm").clean_response(text) == "好的"
