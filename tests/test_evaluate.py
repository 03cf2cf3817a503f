"""evaluate.py: benchmark layouts, option log-likelihood scoring, cot_math scoring and its caches."""

import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from alpaca_cot.data.schema import DataError
from alpaca_cot.evaluation.multiple_choice import answer_text, continuation_logprobs, prompt_record, score_items
from alpaca_cot.evaluation.readers import load_items, parse_options
from alpaca_cot.infer import Generator, load_generator
from alpaca_cot.models import get_spec
from alpaca_cot.templates import get_template

FIXTURES = Path(__file__).parent / "fixtures" / "eval"
BOOST = 20.0  # logit of a scripted next token; every other token has logit 0


class Bigram(torch.nn.Module):
    """A language model whose next-token logits depend only on the previous token, from a script."""

    def __init__(self, vocab_size: int, script: dict[int, int]):
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(1))  # gives the module a device
        self.vocab_size, self.script = vocab_size, script

    def forward(self, input_ids, attention_mask=None, **kwargs):
        logits = torch.zeros(*input_ids.shape, self.vocab_size)
        for prev, nxt in self.script.items():
            logits[..., nxt] += BOOST * (input_ids == prev)
        return SimpleNamespace(logits=logits)


def chain_script(prompt_last: int, tokens: list[int]) -> dict[int, int]:
    script, prev = {}, prompt_last
    for tok in tokens:
        script[prev] = tok
        prev = tok
    return script


ITEM = {"id": "q0", "category": "fruit", "question": "Which fruit is yellow and curved?",
        "options": {"A": "cherry", "B": "banana", "C": "grape"}, "answer": "B"}


@pytest.mark.parametrize("target", ["text", "letter"])
def test_option_scoring_picks_the_certain_option(tokenizer, target):
    """A model that can only continue the prompt with the right option: it is picked, with log-prob ~0."""
    generator = Generator(model=Bigram(len(tokenizer), {}), tokenizer=tokenizer, template=get_template("alpaca"),
                          spec=get_spec("llama"), name="bigram", meta={})
    prompt = generator.prompt_ids([prompt_record(ITEM, [], target)])[0]
    right = tokenizer(answer_text(ITEM, "B", target), add_special_tokens=False)["input_ids"]
    right += [tokenizer.eos_token_id] if target == "text" else []
    generator.model.script = chain_script(prompt[-1], right)
    rows = score_items(generator, [ITEM, {**ITEM, "id": "q1", "answer": "A"}], target=target, batch_size=2)
    assert [r["prediction"] for r in rows] == ["B", "B"]
    assert rows[0]["score"] == 1.0 and rows[1]["score"] == 0.0
    sure = math.log(math.exp(BOOST) / (math.exp(BOOST) + len(tokenizer) - 1))  # one scripted token
    scores = rows[0]["option_scores"]
    assert scores["B"]["tokens"] == len(right)
    assert scores["B"]["logprob"] == pytest.approx(len(right) * sure, abs=1e-4)
    assert scores["A"]["logprob"] < -10 and scores["C"]["logprob"] < -10


def test_batched_option_scores_equal_one_at_a_time(tiny_llama_dir):
    generator = load_generator(model_name_or_path=tiny_llama_dir)
    ids = generator.tokenizer(["a short context", "a much longer context than the other one, with more words",
                               "mid length context here"], add_special_tokens=False)["input_ids"]
    conts = generator.tokenizer([" yes", " no way at all", " maybe"], add_special_tokens=False)["input_ids"]
    pairs = list(zip(ids, conts))
    alone = [continuation_logprobs(generator.model, [p], generator.tokenizer.pad_token_id)[0] for p in pairs]
    together = continuation_logprobs(generator.model, pairs, generator.tokenizer.pad_token_id, batch_size=3)
    for a, b in zip(alone, together):
        assert len(a) == len(b) and torch.allclose(torch.tensor(a), torch.tensor(b), atol=1e-4)


# ---------------------------------------------------------------- layouts


def test_mmcu_layout():
    items = load_items("multiple_choice", [str(FIXTURES / "mmcu_layout.json")])
    assert len(items) == 5 and items[0]["category"] == "医学" and items[0]["answer"] == "B"
    assert items[0]["options"] == {"A": "27", "B": "37", "C": "47", "D": "57"}
    assert items[2]["answer"] == "AC"  # several gold letters
    assert parse_options(["A. one", "B．two", "C、three"]) == {"A": "one", "B": "two", "C": "three"}
    assert parse_options("A：first line\ncontinued\nB: second") == {"A": "first line\ncontinued", "B": "second"}


def test_ceval_and_cmmlu_csv_layouts():
    ceval = load_items("multiple_choice", [str(FIXTURES / "ceval" / "arithmetic_val.csv")])
    assert [i["answer"] for i in ceval] == ["C", "A", "B"] and {i["category"] for i in ceval} == {"arithmetic"}
    assert ceval[0]["options"] == {"A": "5", "B": "6", "C": "7", "D": "8"}
    cmmlu = load_items("multiple_choice", [str(FIXTURES / "cmmlu")])  # a folder; BOM and an unnamed column
    assert len(cmmlu) == 2 and cmmlu[0]["category"] == "colours" and cmmlu[0]["answer"] == "B"
    assert cmmlu[0]["question"].startswith("晴朗")


def test_math_and_judged_layouts():
    gsm = load_items("cot_math", [str(FIXTURES / "gsm8k_layout.jsonl")])
    assert [i["gold"] for i in gsm] == ["16", "3750", "105"] and gsm[0]["category"] == "en"
    demo = load_items("cot_math", ["demo_test:6"])
    assert len(demo) == 6 and all(i["gold"] for i in demo) and {i["category"] for i in demo} <= {"en", "zh"}
    belle = load_items("judged", [str(FIXTURES / "belle_layout.json")])
    assert belle[2] == {"id": "belle_layout:2", "category": "math", "question": "小明有5个苹果，吃了2个，还剩几个？",
                        "reference": "还剩3个苹果。"}


def test_a_layout_the_task_cannot_read_is_refused():
    with pytest.raises(DataError, match="looks like the belle layout.*cot_math reads gsm8k or unified"):
        load_items("cot_math", [str(FIXTURES / "belle_layout.json")])
    with pytest.raises(DataError, match="lacks the mmcu field"):
        load_items("multiple_choice", [str(FIXTURES / "gsm8k_layout.jsonl")], fmt="mmcu")


# ---------------------------------------------------------------- evaluate.py end to end


def test_multiple_choice_end_to_end(tiny_llama_dir, tmp_path, capsys):
    import evaluate

    out = tmp_path / "mc"
    summary = evaluate.main(["--task", "multiple_choice", "--data", str(FIXTURES / "ceval" / "arithmetic_val.csv"),
                             str(FIXTURES / "mmcu_layout.json"), "--num_fewshot", "1", "--fewshot_data",
                             str(FIXTURES / "ceval" / "arithmetic_dev.csv"), "--model_name_or_path", tiny_llama_dir,
                             "--output_dir", str(out)])
    assert summary["n"] == 8 and summary["scored"] == 7 and summary["multi_answer"] == 1
    assert set(summary["per_category"]) == {"arithmetic", "医学", "教育"}
    assert summary["per_category"]["医学"] == {"n": 3, "scored": 2, "score": summary["per_category"]["医学"]["score"]}
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert len(rows) == 8 and set(rows[0]["option_scores"]) == {"A", "B", "C", "D"}
    assert rows[0]["shots"] == 1 and rows[3]["shots"] == 0  # arithmetic has dev examples, 医学 none
    assert json.loads((out / "summary.json").read_text())["score"] == summary["score"]
    assert "multi_answer: 1" in capsys.readouterr().out


def test_cot_math_scores_and_caches_generations(tiny_llama_dir, tmp_path, monkeypatch):
    import evaluate

    calls = []
    real = Generator.generate

    def scripted(self, records, gen_kwargs, batch_size=1, seed=None, progress=False):
        calls.append(len(records))
        real(self, records, gen_kwargs, batch_size=batch_size, seed=seed)  # the real path runs too
        return ["so the answer is 16." if "shells" in r["instruction"] else "答案是3,750。" if "1,250" in
                r["instruction"] else "I am not sure." for r in records]

    monkeypatch.setattr(Generator, "generate", scripted)
    argv = ["--task", "cot_math", "--data", str(FIXTURES / "gsm8k_layout.jsonl"), "--model_name_or_path",
            tiny_llama_dir, "--output_dir", str(tmp_path / "math"), "--max_new_tokens", "4", "--batch_size", "2"]
    first = evaluate.main(argv + ["--max_samples", "2"])
    assert first["n"] == 2 and first["score"] == 1.0 and sum(calls) == 2
    again = evaluate.main(argv)  # two cached, one new
    assert sum(calls) == 3 and again["n"] == 3 and again["score"] == pytest.approx(2 / 3)
    rows = [json.loads(line) for line in (tmp_path / "math" / "results.jsonl").read_text().splitlines()]
    assert [r["prediction"] for r in rows] == ["16", "3750", None] and rows[2]["correct"] is False
    evaluate.main(argv + ["--max_new_tokens", "5"])  # other generation settings: generated again
    assert sum(calls) == 6
