"""Preprocessing: tokenization in worker processes gives the same samples; unchanged files skip reading.

Timings are in ``bench/preprocess.py`` (50k records); here the behaviour that makes them so.
"""

import json
import logging

import pytest

import alpaca_cot.train as train
from alpaca_cot.cli_args import DataArguments
from alpaca_cot.templates import get_template
from alpaca_cot.tokenize import TruncationReport, encode_records, encode_records_parallel

RECORDS = [{"instruction": f"Count to {i}." + (" Then explain why, in great detail." * (i % 7 == 0) * 20),
            "input": "" if i % 3 else f"start at {i % 5}", "output": " ".join(str(k) for k in range(i % 40 + 1))}
           for i in range(60)]


def test_worker_processes_give_the_same_samples_and_report(tokenizer):
    template = get_template("alpaca")
    one, many = TruncationReport(), TruncationReport()
    expected = encode_records(RECORDS, tokenizer, template, 64, one)
    assert one.dropped and one.truncated  # the long prompts lose their response at cutoff 64
    assert encode_records_parallel(RECORDS, tokenizer, template, 64, 3, many) == expected
    assert many == one  # counts and the (global) indices of dropped records


@pytest.fixture()
def data_file(tmp_path):
    path = tmp_path / "data.json"
    path.write_text(json.dumps(RECORDS))
    return path


def prepare(path, model_dir, **kwargs):
    from alpaca_cot.models import get_spec

    args = DataArguments(data=[str(path)], **{"cutoff_len": 128, **kwargs})
    return train.prepare_data(args, 42, model_dir, get_spec("llama"), get_template("alpaca"))[1:]


def test_unchanged_files_skip_reading(isolated_cache, data_file, default_model_dir, monkeypatch, caplog):
    first_train, first_val, first_report = prepare(data_file, default_model_dir, val_set_size=5)

    def no_reading(*args, **kwargs):
        raise AssertionError("the data files were read again")

    with monkeypatch.context() as m, caplog.at_level(logging.INFO, logger="alpaca_cot"):
        m.setattr("alpaca_cot.data.mixing.load_parts", no_reading)
        train_set, val_set, report = prepare(data_file, default_model_dir, val_set_size=5)
    assert "data files unchanged" in caplog.text
    assert train_set["input_ids"] == first_train["input_ids"] and train_set["labels"] == first_train["labels"]
    assert val_set["input_ids"] == first_val["input_ids"] and report == first_report

    # Anything that changes the samples is a miss: the split, the cutoff, the file's bytes.
    for change in ({"val_set_size": 6}, {"cutoff_len": 96}):
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="alpaca_cot"):
            prepare(data_file, default_model_dir, **{"val_set_size": 5, **change})
        assert "data files unchanged" not in caplog.text
    data_file.write_text(json.dumps(RECORDS[:-1]))
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="alpaca_cot"):
        train_set, _, _ = prepare(data_file, default_model_dir, val_set_size=5)
    assert "data files unchanged" not in caplog.text and len(train_set) == len(first_train) - 1


def test_a_vanished_cache_entry_is_a_miss(isolated_cache, data_file, default_model_dir):
    import shutil

    prepare(data_file, default_model_dir)
    for entry in (isolated_cache / "tokenized").iterdir():
        if entry.name != "by_files":
            shutil.rmtree(entry)
    train_set, _, report = prepare(data_file, default_model_dir)  # index points at nothing: tokenized again
    assert len(train_set) == report.total - report.dropped


def test_worker_processes_only_where_they_help(monkeypatch):
    import os

    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")  # as under make: the tokenizer uses one core
    assert train.default_workers(50_000) == min(4, os.cpu_count()) and train.default_workers(1_000) == 1
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "true")  # the tokenizer already uses every core
    assert train.default_workers(50_000) == 1


def test_the_tokenizer_files_are_part_of_the_key(tmp_path, default_model_dir, data_file):
    import shutil

    from alpaca_cot.datacache import data_key

    model = tmp_path / "model"
    model.mkdir()
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(f"{default_model_dir}/{name}", model / name)
    key = lambda: data_key([str(data_file)], seed=42, skip_invalid=False, val_set_size=0,  # noqa: E731
                           model_path=str(model), template=get_template("alpaca"), cutoff_len=128)
    first = key()
    assert first and key() == first
    config = json.loads((model / "tokenizer_config.json").read_text())
    config["eos_token"] = "<|im_start|>"
    (model / "tokenizer_config.json").write_text(json.dumps(config))
    assert key() != first
    assert data_key(["demo"], seed=42, skip_invalid=False, val_set_size=0, model_path="org/hub-id",
                    template=get_template("alpaca"), cutoff_len=128) is None  # not a local folder: no shortcut
