"""Stop strings end a reply with any tokenizer, and only on text the model generated."""

import torch

from alpaca_cot.stop_strings import StopOnStrings


def _ids(tokenizer, text):
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def test_stops_when_the_newest_token_completes_a_stop_string(tokenizer):
    stop = StopOnStrings(tokenizer, ["### Instruction:"])
    prompt = _ids(tokenizer, "### Instruction:\nAdd 2 and 3.\n\n### Response:\n")
    reply = _ids(tokenizer, "5\n\n### Instruction:")
    # Before the last token of the stop string: not stopped; with it: stopped.
    partial = torch.tensor([prompt + reply[:-1]])
    full = torch.tensor([prompt + reply])
    assert stop(partial).tolist() == [False]
    assert stop(full).tolist() == [True]
    # The same string inside the prompt (an earlier turn) never stops a row.
    assert stop(torch.tensor([prompt + _ids(tokenizer, "5")])).tolist() == [False]


def test_rows_are_judged_separately(tokenizer):
    stop = StopOnStrings(tokenizer, ["<eom>", "<|Human|>"])
    a = _ids(tokenizer, "Hello there<eom>")
    b = _ids(tokenizer, "Hello there, friend")
    width = max(len(a), len(b))
    pad = tokenizer.pad_token_id
    batch = torch.tensor([[pad] * (width - len(a)) + a, [pad] * (width - len(b)) + b])
    assert stop(batch).tolist() == [True, False]


def test_works_with_a_vocabulary_of_bare_whitespace_tokens(tokenizer):
    """MOSS's vocabulary has added tokens that are bare whitespace; transformers' StopStringCriteria
    fails on such vocabularies while building its tables. Ours decodes only the tail of each row."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tokenizer.name_or_path)
    tok.add_tokens([" ", "  ", "\t", "\n\n"])
    stop = StopOnStrings(tok, ["<|Human|>"])
    ids = _ids(tok, "Sure.  Here it is\t<|Human|>")
    assert stop(torch.tensor([ids])).tolist() == [True]
    assert stop(torch.tensor([ids[:-1]])).tolist() == [False]
