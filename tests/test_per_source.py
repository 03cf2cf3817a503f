"""Per-source results of a mixture: validation loss on each source's held-out records, token shares."""

import json
import math

from alpaca_cot.cli_args import DataArguments, FinetuneArguments, ModelArguments, PeftArguments
from alpaca_cot.train import run


def test_mixture_reports_loss_and_supervised_tokens_per_source(tmp_path, tiny_llama_dir):
    long = [{"instruction": f"Add {i} and 3.", "input": "", "source": "alpha",
             "output": f"First {i} plus 3 makes {i + 3}, so the sum is {i + 3}. The answer is {i + 3}."} for i in range(12)]
    short = [{"instruction": f"把{i}和4相加。", "input": "", "output": f"答案是{i + 4}。", "source": "beta"}
             for i in range(12)]
    files = []
    for name, records in (("alpha", long), ("beta", short)):
        files.append(tmp_path / f"{name}.json")
        files[-1].write_text(json.dumps(records, ensure_ascii=False))
    m = run(ModelArguments(model_name_or_path=tiny_llama_dir, compute_dtype="fp32"),
            DataArguments(data=[str(f) for f in files], cutoff_len=96, val_set_size=8), PeftArguments(),
            FinetuneArguments(output_dir=str(tmp_path / "out"), epochs=1, per_gpu_train_batch_size=4,
                              logging_steps=1, save_steps=1000))
    losses, tokens = m["eval_loss_by_source"], m["supervised_tokens_by_source"]
    assert set(losses) == {"alpha", "beta"} and all(math.isfinite(v) for v in losses.values())
    assert losses["alpha"] != losses["beta"]  # each source's own held-out records
    assert sum(m["eval_samples_by_source"].values()) == 8
    assert set(tokens) == {"alpha", "beta"} and sum(tokens.values()) == m["supervised_tokens"]
    # one epoch: every label token of the training records is counted once, under its own source
    assert m["supervised_tokens"] == m["train_set"]["supervised_tokens"] and m["train_samples"] == 16
    trained = {s: 12 - n for s, n in m["eval_samples_by_source"].items()}
    assert tokens["alpha"] / trained["alpha"] > 2 * tokens["beta"] / trained["beta"]  # alpha's responses are long
    from alpaca_cot.evaluation.report import _source_table

    table = "\n".join(_source_table([{"cell": "mix", "runs": [
        {"supervised_tokens_by_source": tokens, "eval_loss_by_source": losses}]}]))
    share = 100 * tokens["alpha"] / sum(tokens.values())
    assert f"| mix | alpha | {share:.1f}% | {losses['alpha']:.3f} |" in table
