"""Equal budgets: runs on long and short records end with equal supervised tokens; counts are what trained."""

import json
import math

import pytest

from alpaca_cot.budget import FLOPS_PER_PARAM_TOKEN, select_budget, token_counts
from alpaca_cot.cli_args import DataArguments, FinetuneArguments, ModelArguments, PeftArguments
from alpaca_cot.train import ConfigError, run

BATCH = 2


def _records(long: bool) -> list[dict]:
    out = []
    for a in range(2, 14):
        steps = f"First {a} plus 3 is {a + 3}, and {a + 3} plus 4 is {a + 7}. " if long else ""
        out.append({"instruction": f"Add {a}, 3 and 4.", "input": "", "output": f"{steps}The answer is {a + 7}."})
    return out


def _train(model_dir, data_file, out, **ft) -> dict:
    ft = {"logging_steps": 1, "save_steps": 1000, **ft}
    return run(ModelArguments(model_name_or_path=model_dir, compute_dtype="fp32"),
               DataArguments(data=[str(data_file)], cutoff_len=96), PeftArguments(),
               FinetuneArguments(output_dir=str(out), per_gpu_train_batch_size=BATCH, **ft))


@pytest.fixture(scope="module")
def data_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("budget")
    files = {}
    for name, long in (("long", True), ("short", False)):
        files[name] = folder / f"{name}.json"
        files[name].write_text(json.dumps(_records(long)))
    return files


def _label_tokens(tokenizer, records) -> list[int]:
    return [len(tokenizer(r["output"], add_special_tokens=False)["input_ids"]) + 1 for r in records]  # + EOS


def test_token_budget_equalises_supervised_tokens(data_files, tiny_llama_dir, tokenizer, tmp_path):
    budget = 150
    metrics = {name: _train(tiny_llama_dir, path, tmp_path / name, budget_tokens=budget)
               for name, path in data_files.items()}
    largest = max(_label_tokens(tokenizer, _records(True)))
    for m in metrics.values():
        assert m["supervised_tokens"] == m["budget"]["supervised_tokens"]  # what trained is what was selected
        assert budget <= m["supervised_tokens"] < budget + largest  # the overshoot is under one sample
        assert m["global_step"] == math.ceil(m["budget"]["records"] / BATCH)  # one pass over the selection
    long, short = metrics["long"], metrics["short"]
    assert abs(long["supervised_tokens"] - short["supervised_tokens"]) <= BATCH * largest  # one micro-batch
    assert long["budget"]["records"] < short["budget"]["records"]  # long records: fewer of them
    assert short["budget"]["passes"] == 2  # 12 short records hold fewer than 150 label tokens: a second pass


def test_counts_without_budget_and_flops_budget(data_files, tiny_llama_dir, tmp_path):
    epoch = _train(tiny_llama_dir, data_files["long"], tmp_path / "epoch", epochs=1)
    assert epoch["supervised_tokens"] == epoch["train_set"]["supervised_tokens"]  # one epoch: every label token
    assert epoch["input_tokens"] == epoch["train_set"]["input_tokens"]  # no padding counted
    flops = 3e9
    m = _train(tiny_llama_dir, data_files["long"], tmp_path / "flops", budget_flops=flops)
    per_token = m["budget"]["flops"] / m["budget"]["input_tokens"]
    assert per_token % FLOPS_PER_PARAM_TOKEN == 0  # 6 x linear weights per token
    assert flops <= m["budget"]["flops"] < flops + per_token * 96  # over by less than one sample
    assert m["input_tokens"] == m["budget"]["input_tokens"]
    with pytest.raises(ConfigError, match="drop --max_steps"):
        _train(tiny_llama_dir, data_files["long"], tmp_path / "bad", budget_tokens=100, max_steps=3)
    with pytest.raises(ConfigError, match="not both"):
        _train(tiny_llama_dir, data_files["long"], tmp_path / "bad", budget_tokens=100, budget_flops=1e9)


def test_select_budget_order_and_passes():
    from datasets import Dataset

    data = Dataset.from_dict({"input_ids": [[1] * n for n in (4, 6, 8)],
                              "labels": [[-100, -100] + [1] * (n - 2) for n in (4, 6, 8)]})
    supervised, inputs = token_counts(data)
    assert supervised.tolist() == [2, 4, 6] and inputs.tolist() == [4, 6, 8]
    subset, info = select_budget(data, tokens=13, seed=1)
    assert info["passes"] == 2 and info["supervised_tokens"] >= 13 and info["records"] == len(subset)
    assert sorted(token_counts(subset)[0].tolist()[:3]) == [2, 4, 6]  # the first pass holds every sample once
    again, _ = select_budget(data, tokens=13, seed=1)
    assert again["input_ids"] == subset["input_ids"]  # seeded: the same selection every time


def test_a_resumed_run_reports_the_counts_and_mean_loss_of_the_whole_run(tiny_llama_dir, data_files, tmp_path):
    """Stopped at a checkpoint and resumed, a run reports what a straight run does: supervised and
    input tokens over every step (not only those after the resume) and train_loss over every step
    (the Trainer alone averages the resumed call's steps)."""
    import shutil

    straight = _train(tiny_llama_dir, data_files["long"], tmp_path / "straight", max_steps=6, save_steps=2,
                      logging_steps=3)
    resumed_dir = tmp_path / "resumed"
    resumed_dir.mkdir()
    shutil.copytree(tmp_path / "straight" / "checkpoint-2", resumed_dir / "checkpoint-2")  # stopped after step 2
    resumed = _train(tiny_llama_dir, data_files["long"], resumed_dir, max_steps=6, save_steps=2, logging_steps=3,
                     resume_from_checkpoint=str(resumed_dir / "checkpoint-2"))
    assert resumed["global_step"] == straight["global_step"] == 6
    for key in ("supervised_tokens", "input_tokens"):
        assert resumed[key] == straight[key], key
    assert resumed["train_loss"] == pytest.approx(straight["train_loss"], rel=1e-5)
