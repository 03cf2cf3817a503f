"""The Arrow data path: the same samples as the list path, bounded work per record, sampling, weights, the split,
the per-split report and refusal, provenance, streaming.

Sizes are small (2k-6k records): the code paths are the ones a million records take
(``bench/preprocess.py`` measures those).
"""

import json
import logging
import random

import pytest

import alpaca_cot.train as train
from alpaca_cot.cli_args import DataArguments, FinetuneArguments, ModelArguments, PeftArguments
from alpaca_cot.data.loading import load_data
from alpaca_cot.data.mixing import load_parts, mix, split_parts
from alpaca_cot.data.schema import DataError
from alpaca_cot.models import get_spec
from alpaca_cot.templates import get_template
from alpaca_cot.tokenize import TruncationReport, encode_records, tokenize_dataset


def make(i: int, source: str | None = None) -> dict:
    r = random.Random(i)
    words = " ".join(r.choice(["alpha", "beta", "gamma", "delta", "数据", "模型"]) for _ in range(r.randint(3, 30)))
    record = {"instruction": f"({i}) Repeat: {words}", "input": "" if i % 3 else "twice", "output": words}
    if i % 50 == 7:  # a prompt far longer than the cutoff: dropped
        record["instruction"] += " filler" * 200
    if i % 13 == 0:
        record["history"] = [["hello", "hi"]]
    if source:
        record["source"] = source
    return record


pytestmark = pytest.mark.usefixtures("module_cache_home")  # the Arrow records cache of these tests


@pytest.fixture(scope="module")
def big_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "big.jsonl"
    path.write_text("".join(json.dumps(make(i), ensure_ascii=False) + "\n" for i in range(6000)), encoding="utf-8")
    return path


def test_worker_processes_write_the_same_samples_as_encode_records(big_file, tokenizer):
    template = get_template("alpaca")
    records, _ = load_data([str(big_file)])
    expected_report = TruncationReport()
    expected = encode_records(records, tokenizer, template, 64, expected_report)
    part = load_parts([str(big_file)])[0]
    dataset, report, hit = tokenize_dataset(part.dataset, tokenizer, template, 64, key=part.key, num_workers=2)
    assert not hit and report.dropped > 10 and report.truncated > report.dropped  # many drops per 1,000-row batch
    assert (report.total, report.truncated, report.dropped) == (expected_report.total, expected_report.truncated,
                                                                 expected_report.dropped)
    assert report.dropped_examples == expected_report.dropped_examples and report.dropped_by_source == {
        "big": report.dropped}
    assert list(dataset["input_ids"]) == [e["input_ids"] for e in expected]
    assert list(dataset["labels"]) == [e["labels"] for e in expected]
    assert set(dataset["source"]) == {"big"}
    again, _, hit = tokenize_dataset(part.dataset, tokenizer, template, 64, key=part.key, num_workers=1)
    assert hit and len(again) == len(dataset)


def test_sampling_matches_the_list_loader_and_weights_oversample(big_file):
    specs = [f"{big_file}:300", f"{big_file}:0.1"]
    parts = load_parts(specs, seed=5)
    listed, _ = load_data(specs, seed=5)
    assert [r for p in parts for r in p.dataset["instruction"]] == [r["instruction"] for r in listed]
    (part,) = load_parts([f"{big_file}:2.5"], seed=5)
    assert part.weight == 2.5 and len(part.dataset) == 6000
    dataset, _, lines = mix([part], seed=5)
    counts = {}
    for text in dataset["instruction"]:
        counts[text] = counts.get(text, 0) + 1
    assert len(dataset) == 15000 and set(counts.values()) == {2, 3} and "(x2.50)" in lines[0]
    assert list(mix([part], seed=5)[0]["instruction"]) == list(dataset["instruction"])  # seeded, deterministic
    with pytest.raises(DataError, match=r"asked for 7000 records but only 6000.*big.jsonl:1.2\)"):
        load_parts([f"{big_file}:7000"])


def test_split_keeps_repeated_records_out_of_validation_and_mix_weights_set_shares(big_file, tmp_path):
    small = tmp_path / "small.json"
    small.write_text(json.dumps([make(10_000 + i, source="small") for i in range(200)]), encoding="utf-8")
    parts = load_parts([f"{big_file}:1000", f"{small}:3.0"], seed=1)
    train_parts, val, _ = split_parts(parts, 50, seed=1)
    assert len(val) == 50 and sum(len(p.dataset) for p in train_parts) == 1150
    mixture, _, _ = mix(train_parts, seed=1)
    held = set(val["instruction"])
    assert not held & set(mixture["instruction"])  # no validation record is trained on, however repeated
    shares, _, _ = mix([type(p)(p.spec, p.dataset, p.key) for p in train_parts], seed=1, mix_weights=[1, 1])
    sources = list(shares["source"])
    assert len(sources) == 1150 and abs(sources.count("small") - 575) <= 1
    with pytest.raises(DataError, match="either as NAME:weight or with --mix_weights"):
        mix(train_parts, seed=1, mix_weights=[1, 1])
    with pytest.raises(DataError, match="2 values for 3 --data entries"):
        mix(train_parts + train_parts[:1], seed=1, mix_weights=[1, 1])


def prepare(paths, model_dir, **kwargs):
    args = DataArguments(data=[str(p) for p in paths], **{"cutoff_len": 64, **kwargs})
    return train.prepare_data(args, 42, model_dir, get_spec("llama"), get_template("alpaca"))


def long_prompt(i: int) -> dict:
    return {**make(i), "instruction": f"({i}) Summarise:" + " filler" * 300}  # no response token fits at 256


def test_both_splits_get_the_same_report_and_an_unusable_validation_set_is_refused(tmp_path, default_model_dir,
                                                                                    tokenizer, caplog):
    path = tmp_path / "mixed.json"
    records = [long_prompt(i) if i % 4 == 0 else make(i) for i in range(400)]
    path.write_text(json.dumps(records), encoding="utf-8")
    whole = TruncationReport()
    encode_records(records, tokenizer, get_template("alpaca"), 256, whole)
    with caplog.at_level(logging.INFO, logger="alpaca_cot"):
        _, train_set, val_set, report = prepare([path], default_model_dir, val_set_size=40, cutoff_len=256)
    val_report = report.validation
    assert val_report.total == 40 and val_report.dropped > 0 and len(val_set) == 40 - val_report.dropped
    assert report.total == 360 and report.dropped > 0 and len(train_set) == 360 - report.dropped
    assert whole.dropped > 50 and report.dropped + val_report.dropped == whole.dropped  # the two splits: all drops
    for name in ("training", "validation"):
        assert f"{name} data: " in caplog.text and f"{name}: " in caplog.text  # summary and dropped warning each
    path.write_text(json.dumps([make(i) if i % 5 == 0 else long_prompt(i) for i in range(400)]), encoding="utf-8")
    with pytest.raises(train.ConfigError, match=r"only \d+ of the 40 validation records keep a response token.*"
                                                 "Raise --cutoff_len"):
        prepare([path], default_model_dir, val_set_size=40, cutoff_len=256)
    with pytest.raises(train.ConfigError, match="asks for 400 validation records but the data has only 400"):
        prepare([path], default_model_dir, val_set_size=400)


def test_source_survives_conversion_sampling_split_and_tokenization(tmp_path, default_model_dir, capsys):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "data"))
    import convert

    raw = {}
    for task in ("aqua_train", "gsm8k_train"):  # FLAN's CoT files escape line breaks as backslash-n
        raw[task] = tmp_path / f"{task}.tsv"
        raw[task].write_text("".join(f"Q{i} of {task}?\\nOptions:\\n(A) {i}\\n(B) {i + 1}\t(A)\tStep one.\\nStep two.\n"
                                     for i in range(30)), encoding="utf-8")
    out = tmp_path / "cot.json"
    assert convert.main(["--format", "flan_cot", "--input", str(raw["aqua_train"]), str(raw["gsm8k_train"]),
                         "--output", str(out)]) == 0
    assert "decoded escapes: backslash" in capsys.readouterr().out
    converted = json.loads(out.read_text(encoding="utf-8"))
    assert not any("\\n" in r["instruction"] + r["output"] for r in converted)
    assert "Options:\n(A) 0\n(B) 1" in converted[0]["instruction"]
    assert {r["source"] for r in converted} == {"flan_cot/aqua_train", "flan_cot/gsm8k_train"}

    other = tmp_path / "other.jsonl"
    other.write_text("".join(json.dumps(make(i)) + "\n" for i in range(40)), encoding="utf-8")
    _, train_set, val_set, report = prepare([out, f"{other}:20"], default_model_dir, val_set_size=10, cutoff_len=128)
    sources = set(train_set["source"]) | set(val_set["source"])
    assert sources == {"flan_cot/aqua_train", "flan_cot/gsm8k_train", "other"}
    assert train._by_source(train_set) == {s: list(train_set["source"]).count(s) for s in set(train_set["source"])}


def test_convert_counts_escapes_nobody_decoded(tmp_path, capsys):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "data"))
    import convert

    raw = tmp_path / "raw.json"
    raw.write_text(json.dumps([{"instruction": "Fix &lt;b&gt; tags", "output": "Use \\u4e2d and a\\nb"},
                               {"instruction": "plain", "output": "text"}]), encoding="utf-8")
    assert convert.main(["--format", "alpaca", "--input", str(raw), "--validate"]) == 0
    summary = capsys.readouterr().out
    for kind in ("backslash", "html", "unicode"):
        assert f"warning: 1 records still contain {kind} escapes" in summary and f"--unescape {kind}" in summary
    out = tmp_path / "out.json"
    assert convert.main(["--format", "alpaca", "--input", str(raw), "--output", str(out),
                         "--unescape", "html", "unicode", "backslash"]) == 0
    assert json.loads(out.read_text(encoding="utf-8"))[0] == {"instruction": "Fix <b> tags", "input": "",
                                                              "output": "Use 中 and a\nb", "source": "alpaca/raw"}


def test_streaming_trains_with_packing_on_the_fly(tmp_path, tiny_llama_dir, big_file):
    other = tmp_path / "other.json"
    other.write_text(json.dumps([make(i, source="other") for i in range(300)]), encoding="utf-8")
    data = DataArguments(data=[f"{big_file}:500", str(other)], streaming=True, mix_weights=[3, 1], val_set_size=8,
                         cutoff_len=256, streaming_buffer_size=64)
    metrics = train.run(ModelArguments(model_type="llama", model_name_or_path=tiny_llama_dir), data, PeftArguments(),
                        FinetuneArguments(output_dir=str(tmp_path / "out"), max_steps=3, per_gpu_train_batch_size=4,
                                          logging_steps=1, save_steps=100))
    assert metrics["global_step"] == 3 and metrics["packing"] and "eval_loss" in metrics
    assert metrics["train_samples"] >= 12 and metrics["val_dropped"] == 0  # samples read from the stream so far
    with pytest.raises(train.ConfigError, match="--streaming needs --max_steps"):
        train.run(ModelArguments(model_type="llama", model_name_or_path=tiny_llama_dir), data, PeftArguments(),
                  FinetuneArguments(output_dir=str(tmp_path / "o2")))
    with pytest.raises(DataError, match="with --streaming the size of the data is not known"):
        train.prepare_data(DataArguments(data=[f"{big_file}:0.5"], streaming=True), 1, tiny_llama_dir,
                           get_spec("llama"), get_template("alpaca"))
