"""Contamination check: planted English and Chinese duplicates are found, near misses are not; --decontaminate."""

import importlib.util
import json
import logging
from pathlib import Path

import pytest

from alpaca_cot.data.overlap import OverlapIndex, check_overlap, decontaminate, units

ROOT = Path(__file__).resolve().parents[1]
EN_ITEM = ("Mary keeps twelve red marbles in a small wooden box under her bed and gives three of them "
           "to her younger brother Tom. How many marbles are left in the box?")
ZH_ITEM = "小明有十二个苹果，他给了妹妹三个苹果，又吃掉一个。小明还剩几个苹果？"
EN_WORDS = units(EN_ITEM)[0]


def _train_records() -> list[dict]:
    thirteen = " ".join(EN_WORDS[3:16])  # 13 consecutive words of the English item
    twelve = " ".join(EN_WORDS[3:15])  # only 12
    return [
        {"instruction": f"Write a story. It starts: {thirteen}.", "input": "", "output": "Once upon a time."},  # 0 hit
        {"instruction": f"Continue: {twelve}, then stop.", "input": "", "output": "Done."},  # 1 near miss
        {"instruction": "今天天气很好。", "input": "", "output": "他给了妹妹三个苹果，然后回家了。"},  # 2 hit: 8 characters
        {"instruction": "问题：", "input": "", "output": "给了妹妹三个苹，好的。"},  # 3 near miss: 7 characters
        {"instruction": "Sort 3, 1, 2.", "input": "", "output": "1, 2, 3"},  # 4 unrelated
        {"instruction": "Name a colour.", "input": "", "output": "Blue."},  # 5 = the short item, exactly
    ]


def _eval_file(tmp_path) -> Path:
    items = [{"instruction": EN_ITEM, "input": "", "output": "The answer is 9."},
             {"instruction": ZH_ITEM, "input": "", "output": "答案是8。"},
             {"instruction": "Name a colour.", "input": "", "output": "Blue."},
             {"instruction": "Hi", "input": "", "output": ""}]
    path = tmp_path / "eval.json"
    path.write_text(json.dumps(items, ensure_ascii=False))
    return path


def test_planted_duplicates_english_and_chinese(tmp_path):
    report, items = check_overlap([str(_eval_file(tmp_path))], _train_records())
    assert len(items) == 4
    assert report.hits[0][0] == 0 and len(report.hits[0][1].split()) == 13  # the 13-word span, as text
    assert report.hits[1] == (2, "他给了妹妹三个苹")  # the first 8-character span shared
    assert 2 in report.hits and report.exact == {2}  # "Name a colour. / Blue." is the whole of record 5
    assert report.records_hit == {0, 2, 5}  # never the 12-word or 7-character near misses
    assert report.too_short == 1  # "Hi": fewer than 3 units, counted rather than silently passed
    summary = report.summary()
    assert summary["overlapping"] == 3 and summary["exact_duplicates"] == 1 and summary["training_records"] == 6


def test_ngram_sizes_are_settings():
    index = OverlapIndex([EN_ITEM, ZH_ITEM], word_n=12, char_n=7)
    report = index.scan([r["instruction"] + "\n" + r["output"] for r in _train_records()])
    assert report.records_hit == {0, 1, 2, 3}  # now the near misses are long enough
    with pytest.raises(ValueError, match=">= 1"):
        OverlapIndex([EN_ITEM], word_n=0)


def test_decontaminate_drops_overlapping_records(tmp_path):
    kept, report = decontaminate(_train_records(), [str(_eval_file(tmp_path))])
    assert len(kept) == 3 and len(report.records_hit) == 3
    assert [r["output"] for r in kept] == ["Done.", "给了妹妹三个苹，好的。", "1, 2, 3"]


def test_stats_overlap_command(tmp_path, capsys):
    train = tmp_path / "train.json"
    train.write_text(json.dumps(_train_records(), ensure_ascii=False))
    spec = importlib.util.spec_from_file_location("data_stats", ROOT / "data" / "stats.py")
    stats = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(stats)

    assert stats.main(["--overlap", str(_eval_file(tmp_path)), "--data", str(train), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)[str(tmp_path / "eval.json")]
    assert result["overlapping"] == 3 and result["training_records_overlapping"] == 3
    assert stats.main(["--overlap", str(_eval_file(tmp_path)), "--data", str(train)]) == 0
    text = capsys.readouterr().out
    assert "sharing an n-gram          3 (75.0%" in text and "给了妹妹三个苹果" in text
    with pytest.raises(SystemExit):
        stats.main(["--overlap", str(_eval_file(tmp_path))])  # no --data


def test_finetune_decontaminate_flag(tmp_path, tiny_llama_dir, caplog):
    import uniform_finetune

    records = _train_records() * 2  # 12 records, 6 of them overlapping
    train = tmp_path / "train.json"
    train.write_text(json.dumps(records, ensure_ascii=False))
    with caplog.at_level(logging.WARNING, logger="alpaca_cot"):
        metrics = uniform_finetune.main(["--model_name_or_path", tiny_llama_dir, "--data", str(train),
                                         "--decontaminate", str(_eval_file(tmp_path)), "--max_steps", "1",
                                         "--cutoff_len", "64", "--output_dir", str(tmp_path / "out")])
    assert metrics["decontaminated"] == 6 and metrics["train_samples"] == 6
    assert "dropped 6 of 12 training records" in caplog.text
