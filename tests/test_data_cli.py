"""The data tools end to end: data/convert.py, data/download.py (offline and with a fake hub), data/stats.py."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from alpaca_cot.data.converters import CONVERTERS
from alpaca_cot.data.loading import REPO_DATA_DIR, load_records, resolve_files

ROOT = Path(__file__).resolve().parents[1]
RAW = Path(__file__).parent / "fixtures" / "raw"


def script(name: str):
    """Import data/<name>.py as a module (its main(argv) is the CLI)."""
    spec = importlib.util.spec_from_file_location(f"data_{name}", ROOT / "data" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


convert, download, stats = script("convert"), script("download"), script("stats")


# ---------------------------------------------------------------- convert.py


def test_list_formats_prints_one_name_per_line(capsys):
    assert convert.main(["--list-formats"]) == 0
    assert capsys.readouterr().out.splitlines() == sorted(CONVERTERS)


def test_describe_prints_the_raw_schema(capsys):
    assert convert.main(["--describe", "prosocial_dialog"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("prosocial_dialog (rows grouped across the file)") and "dialogue_id" in out


def test_convert_writes_a_json_list_and_a_summary(tmp_path, capsys):
    out = tmp_path / "sub" / "chats.json"
    rc = convert.main(["--format", "sharegpt", "--input", str(RAW / "sharegpt.json"), "--output", str(out),
                       "--skip_invalid"])
    assert rc == 0
    records = json.loads(out.read_text(encoding="utf-8"))
    want = json.loads((RAW / "sharegpt.expected.json").read_text(encoding="utf-8"))["records"]
    assert records == [{**r, "source": "sharegpt/sharegpt"} for r in want]  # source: format / input file
    summary = capsys.readouterr().out
    assert "read 6 raw records, wrote 3 records, skipped 3" in summary
    assert "skipped 2: no assistant turn" in summary and "skipped 1 invalid" in summary
    assert load_records(out) and "Essayez « Le Quai »" in out.read_text(encoding="utf-8")  # non-ASCII kept as is


def test_convert_writes_jsonl_and_takes_several_inputs(tmp_path, capsys):
    out = tmp_path / "both.jsonl"
    rc = convert.main(["--format", "dolly", "--input", str(RAW / "dolly.jsonl"), str(RAW / "dolly.jsonl"),
                       "--output", str(out), "--skip_invalid", "--source", "dolly15k"])
    assert rc == 0
    lines = out.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 6 and all(json.loads(line)["source"] == "dolly15k" for line in lines)
    assert "read 8 raw records, wrote 6 records, skipped 2" in capsys.readouterr().out


def test_convert_writes_gzip_and_names_the_source_after_dataset_and_input_file(tmp_path, capsys):
    out = tmp_path / "belle_data0.5M_cn.jsonl.gz"
    assert convert.main(["--format", "belle_multiturn", "--input", str(RAW / "belle_multiturn.json"),
                         "--output", str(out), "--skip_invalid", "--dataset", "multiturn_chat"]) == 0
    records = load_records(out)
    assert len(records) == 4 and {r["source"] for r in records} == {"multiturn_chat/belle_multiturn"}
    assert records[0]["history"] == [["写一句关于秋天的诗。", "秋风吹落一地金黄。"]]


def test_malformed_record_stops_and_leaves_the_output_untouched(tmp_path, capsys):
    out = tmp_path / "out.json"
    out.write_text("previous contents")
    rc = convert.main(["--format", "alpaca", "--input", str(RAW / "alpaca.json"), "--output", str(out)])
    assert rc == 1
    err = capsys.readouterr().err
    assert f"{RAW / 'alpaca.json'}: record 4: empty 'instruction'" in err and "--skip_invalid" in err
    assert out.read_text() == "previous contents"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.json"]  # no temp file left behind


def test_validate_writes_nothing(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert convert.main(["--format", "flan_cot", "--input", str(RAW / "flan_cot.tsv"), "--validate",
                         "--skip_invalid"]) == 0
    assert "validated 3 records" in capsys.readouterr().out
    assert list(tmp_path.iterdir()) == []
    assert convert.main(["--format", "hh_rlhf", "--input", str(RAW / "hh_rlhf.jsonl"), "--validate"]) == 1
    assert "hh_rlhf.jsonl: line 4: missing field 'chosen'" in capsys.readouterr().err


def test_convert_argument_errors(capsys):
    with pytest.raises(SystemExit):
        convert.main(["--format", "alpaca", "--input", str(RAW / "alpaca.json")])  # neither --output nor --validate
    assert convert.main(["--format", "nope", "--input", "x.json", "--validate"]) == 1
    assert "unknown source format 'nope'" in capsys.readouterr().err


def test_convert_as_a_subprocess(tmp_path):
    out = tmp_path / "oig.json"
    proc = subprocess.run([sys.executable, "data/convert.py", "--format", "oig", "--input", str(RAW / "oig.jsonl"),
                           "--output", str(out), "--skip-invalid"], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert len(json.loads(out.read_text(encoding="utf-8"))) == 3


# ---------------------------------------------------------------- download.py


def test_download_offline_fails_with_a_clear_message(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "data/download.py", "alpaca", "--data_dir", str(tmp_path)],
                          cwd=ROOT, capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 1
    assert "offline mode is on (HF_HUB_OFFLINE=1)" in proc.stderr
    assert "QingyiSi/Alpaca-CoT" in proc.stderr and "python data/download.py alpaca" in proc.stderr
    assert str(tmp_path / "alpaca" / "alpaca_data_cleaned.json") in proc.stderr
    assert not (tmp_path / "alpaca" / "alpaca_data_cleaned.json").exists()


def test_download_dry_run_and_list(capsys):
    assert download.main(["alpaca-belle-cot", "--dry_run"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines == [
        f"alpaca: QingyiSi/Alpaca-CoT/alpaca/alpaca_data_cleaned.json -> {REPO_DATA_DIR / 'alpaca/alpaca_data_cleaned.json'}",
        f"belle: QingyiSi/Alpaca-CoT/belle_cn/belle_instructions/belle_data0.5M_cn.json -> "
        f"{REPO_DATA_DIR / 'belle_cn/belle_instructions/belle_data0.5M_cn.json'}",
        f"cot: QingyiSi/Alpaca-CoT/Chain-of-Thought/CoT_data.json -> {REPO_DATA_DIR / 'Chain-of-Thought/CoT_data.json'}"]
    assert download.main(["--list"]) == 0
    names = capsys.readouterr().out.split()
    assert "alpaca" in names and "xp3" in names and "stack_llama" not in names


def test_download_of_a_dataset_not_on_the_hub_says_how_to_convert(capsys):
    assert download.main(["stack_llama"]) == 1
    assert "data/convert.py --format stack_exchange_paired" in capsys.readouterr().err


def test_download_places_files_where_loading_finds_them(tmp_path, monkeypatch):
    """With a fake hub: files (single, glob, zip) land under --data_dir and then resolve by name."""
    import huggingface_hub
    from huggingface_hub import constants

    calls = []

    def fake_file(repo_id, repo_type, filename, local_dir, revision=None):
        calls.append(("file", repo_id, repo_type, filename))
        path = Path(local_dir) / filename
        path.parent.mkdir(parents=True, exist_ok=True)
        if filename.endswith(".zip"):
            with zipfile.ZipFile(path, "w") as z:
                z.writestr("tasks/task001.json", json.dumps([{"instruction": "zipped", "output": "yes"}]))
        else:
            path.write_text(json.dumps([{"instruction": filename, "output": "ok"}]))
        return str(path)

    def fake_snapshot(repo_id, repo_type, allow_patterns, local_dir, revision=None):
        calls.append(("snapshot", repo_id, repo_type, tuple(allow_patterns)))
        for lang in ("zh", "fr"):
            path = Path(local_dir) / "xP3" / lang / f"merged_{lang}.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps([{"instruction": lang, "output": "ok"}]))
        return str(local_dir)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_file)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    assert download.main(["alpaca", "xp3", "natural_instructions", "--data_dir", str(tmp_path)]) == 0
    assert calls == [("file", "QingyiSi/Alpaca-CoT", "dataset", "alpaca/alpaca_data_cleaned.json"),
                     ("snapshot", "QingyiSi/Alpaca-CoT", "dataset", ("xP3/*/merged_*.json",)),
                     ("file", "QingyiSi/Alpaca-CoT", "dataset", "Natural-Instructions/natural-instructions-1700tasks.zip")]
    shutil.copy(REPO_DATA_DIR / "datasets.json", tmp_path / "datasets.json")
    monkeypatch.setenv("ALPACA_COT_DATA_DIR", str(tmp_path))
    assert resolve_files("alpaca") == [tmp_path / "alpaca" / "alpaca_data_cleaned.json"]
    assert [p.name for p in resolve_files("xp3")] == ["merged_fr.json", "merged_zh.json"]
    [task] = resolve_files("natural_instructions")
    assert task.name == "task001.json" and load_records(task)[0]["instruction"] == "zipped"


# ---------------------------------------------------------------- stats.py


@pytest.mark.parametrize("text,script_name", [
    ("The quick brown fox.", "Latin"), ("今天天气很好。", "CJK"), ("用 Python 写一个排序函数", "CJK"),
    ("Привет, мир", "other"), ("1234 !!", "none"), ("Ein kurzer Satz über Käse.", "Latin"),
    ("A long English sentence that mentions 北京 once.", "Latin"),
])
def test_script_detector(text, script_name):
    assert stats.script_of(text) == script_name


def small_dataset(tmp_path) -> Path:
    rows = [
        {"instruction": "Add the numbers.", "input": "2 and 3", "output": "5"},
        {"instruction": "Add the numbers.", "input": "2 and 3", "output": "Five."},        # duplicate instruction
        {"instruction": "把它翻译成英文。", "input": "你好", "output": "Hello"},
        {"instruction": "And now?", "input": "", "output": "Done.", "history": [["Start.", "Started."]]},
    ]
    path = tmp_path / "small.json"
    path.write_text(json.dumps(rows, ensure_ascii=False), encoding="utf-8")
    return path


def test_stats_without_tokenizer(tmp_path, capsys):
    path = small_dataset(tmp_path)
    assert stats.main([str(path), "--tokenizer", "none", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)[str(path)]
    assert result == {"records": 4, "with_input_pct": 75.0, "multi_turn_pct": 25.0,
                      "language_pct": {"Latin": 75.0, "CJK": 25.0},
                      "duplicate_instructions": 1, "duplicate_instructions_pct": 25.0}
    assert stats.main([str(path), "--tokenizer", "none"]) == 0
    text = capsys.readouterr().out
    assert "records               4" in text and "duplicate instructions 1 (25.0%)" in text


def test_stats_on_registry_names_and_raw_files(capsys):
    assert stats.main(["demo_test:10", "--tokenizer", "none", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["demo_test:10"]["records"] == 10
    assert stats.main([str(RAW / "ultrachat.jsonl"), "--format", "ultrachat", "--skip_invalid",
                       "--tokenizer", "none", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)[str(RAW / "ultrachat.jsonl")]
    assert result["records"] == 2 and result["multi_turn_pct"] == 50.0
    assert stats.main(["no_such_dataset", "--tokenizer", "none"]) == 1
    assert "not a file and not a registered dataset" in capsys.readouterr().err


def test_stats_token_lengths_with_the_embedded_tokenizer(tmp_path, capsys, tokenizer):
    """The default tokenizer is the embedded model's (the conftest ``tokenizer``)."""
    from alpaca_cot.templates import get_template

    path = small_dataset(tmp_path)
    assert stats.main([str(path), "--json"]) == 0
    tokens = json.loads(capsys.readouterr().out)[str(path)]["tokens"]
    records = json.loads(path.read_text(encoding="utf-8"))
    count = lambda s: len(tokenizer(s, add_special_tokens=False)["input_ids"])  # noqa: E731
    turns = [get_template("alpaca").turns(r) for r in records]
    prompts = sorted(sum(count(p) for p, _ in t) for t in turns)
    responses = sorted(sum(count(r) for _, r in t) for t in turns)
    assert tokens["sample"] == 4
    assert tokens["prompt"]["max"] == prompts[-1] and tokens["prompt"]["p50"] == prompts[1]
    assert tokens["response"]["max"] == responses[-1]
    assert tokens["total"]["max"] == max(sum(count(x) for pair in t for x in pair) for t in turns)


def test_percentiles_nearest_rank():
    assert stats.percentiles(list(range(1, 101))) == {"p50": 50, "p90": 90, "p99": 99, "max": 100}
    assert stats.percentiles([7]) == {"p50": 7, "p90": 7, "p99": 7, "max": 7}
    assert stats.percentiles([]) == {"p50": 0, "p90": 0, "p99": 0, "max": 0}


def test_registry_table_option_prints_the_generated_table(capsys):
    from alpaca_cot.data.registry import registry_table

    assert stats.main(["--registry-table"]) == 0
    assert capsys.readouterr().out.strip() == registry_table()
