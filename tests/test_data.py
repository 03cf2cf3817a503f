"""Loading unified records: clear errors for bad data, --skip_invalid, registry names and NAME:N specs."""

import json

import pytest

from alpaca_cot.data.loading import LoadReport, load_data, load_records, parse_data_spec
from alpaca_cot.data.schema import DataError

GOOD = {"instruction": "Say hi.", "input": "", "output": "Hi."}


def write(path, records, jsonl=False):
    text = "\n".join(json.dumps(r, ensure_ascii=False) for r in records) if jsonl else json.dumps(records)
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize("bad,problem", [
    ({"instruction": "x", "input": ""}, "missing key 'output'"),
    ({"input": "", "output": "y"}, "missing key 'instruction'"),
    ({"instruction": "x", "input": "", "output": 5}, "'output' must be a string, got int"),
    ({"instruction": ["x"], "input": "", "output": "y"}, "'instruction' must be a string, got list"),
    ({"instruction": "x", "input": "", "output": "  "}, "empty 'output'"),
    ({"instruction": "x", "input": "", "output": "y", "history": [["only one"]]},
     "'history[0]' must be a [user, assistant] pair"),
    ("just a string", "expected a JSON object, got str"),
])
@pytest.mark.parametrize("jsonl", [False, True], ids=["json", "jsonl"])
def test_invalid_record_error_names_file_record_and_problem(tmp_path, bad, problem, jsonl):
    path = write(tmp_path / ("d.jsonl" if jsonl else "d.json"), [GOOD, GOOD, bad], jsonl=jsonl)
    with pytest.raises(DataError) as info:
        load_records(path)
    where = "line 3" if jsonl else "record 2"
    assert str(info.value).startswith(f"{path}: {where}: {problem}")
    assert "--skip_invalid" in str(info.value)


def test_skip_invalid_counts_and_continues(tmp_path):
    path = write(tmp_path / "d.json", [GOOD, {"instruction": "x"}, GOOD, {"output": 1}])
    report = LoadReport()
    records = load_records(path, skip_invalid=True, report=report)
    assert len(records) == 2 and report.kept == 2 and len(report.skipped) == 2
    assert "record 1: missing key 'output'" in report.skipped[0]


def test_missing_input_defaults_to_empty_and_history_is_normalised(tmp_path):
    path = write(tmp_path / "d.json", [{"instruction": "a", "output": "b", "history": [["u", "v"]]}])
    assert load_records(path) == [{"instruction": "a", "input": "", "output": "b", "history": [["u", "v"]]}]


@pytest.mark.parametrize("content,message", [
    (b"[{\"instruction\": \"x\",", "invalid JSON at line 1"),
    (b"{\"instruction\": \"x\", \"output\": \"y\"}\nnot json\n", "line 2: invalid JSON"),
    (b"\xff\xfe\x00garbage", "cannot read file"),
])
def test_unreadable_files(tmp_path, content, message):
    path = tmp_path / "bad.json"
    path.write_bytes(content)
    with pytest.raises(DataError, match=message) as info:
        load_records(path)
    assert str(path) in str(info.value)


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match="not a file and not a registered dataset"):
        load_data([str(tmp_path / "nope.json")])


def test_registered_dataset_without_its_file_says_how_to_get_it(tmp_path, monkeypatch):
    (tmp_path / "datasets.json").write_text(json.dumps(
        {"alpaca": {"files": ["alpaca/alpaca_data.json"], "hub_files": ["alpaca/alpaca_data.json"]}}))
    monkeypatch.setenv("ALPACA_COT_DATA_DIR", str(tmp_path))
    with pytest.raises(DataError) as info:
        load_data(["alpaca"])
    assert str(tmp_path / "alpaca/alpaca_data.json") in str(info.value)
    assert "python data/download.py alpaca" in str(info.value)


def test_demo_registry_entry_loads():
    records, report = load_data(["demo"])
    assert len(records) == 1000 and not report.skipped
    assert all(r["source"] == "demo" for r in records)


def test_counts_and_fractions_are_seeded_and_deterministic():
    a, _ = load_data(["demo:50", "demo_test:0.1"], seed=1)
    b, _ = load_data(["demo:50", "demo_test:0.1"], seed=1)
    c, _ = load_data(["demo:50"], seed=2)
    assert len(a) == 60 and a == b and c != a[:50]


def test_asking_for_more_records_than_exist_is_an_error():
    with pytest.raises(DataError, match="asked for 5000 records but only 1000"):
        load_data(["demo:5000"])


@pytest.mark.parametrize("spec,parsed", [("alpaca", ("alpaca", None)), ("alpaca:200", ("alpaca", 200)),
                                         ("belle_cn:0.25", ("belle_cn", 0.25)), ("C:\\x", ("C:\\x", None))])
def test_parse_data_spec(spec, parsed):
    assert parse_data_spec(spec) == parsed
