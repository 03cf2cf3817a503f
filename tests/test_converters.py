"""Every source format converts its fixture (our own text, the real schema) to exactly the expected records."""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import pytest

from alpaca_cot.data.converters import (CONVERTERS, BadRecord, ConversionReport, Skip, convert_files,
                                        dialogue_record, register_converter, split_markers)
from alpaca_cot.data.converters.base import file_stem
from alpaca_cot.data.converters.tasks import COT_TEMPLATES
from alpaca_cot.data.readers import read_raw
from alpaca_cot.data.schema import DataError

RAW = Path(__file__).parent / "fixtures" / "raw"
SHARED_FIXTURE = {"hc3_human": "hc3.jsonl"}  # one raw file, two formats


def fixture(fmt: str) -> Path:
    if fmt in SHARED_FIXTURE:
        return RAW / SHARED_FIXTURE[fmt]
    return next(p for p in sorted(RAW.glob(f"{fmt}.*")) if not p.name.endswith(".expected.json"))


def expected(fmt: str) -> dict:
    return json.loads((RAW / f"{fmt}.expected.json").read_text(encoding="utf-8"))


def convert(fmt, paths, **kw):
    report = ConversionReport()
    records = list(convert_files(fmt, paths, report=report, **kw))
    return records, report


def test_every_format_has_a_fixture_and_expectation():
    assert {p.name[: -len(".expected.json")] for p in RAW.glob("*.expected.json")} == set(CONVERTERS)
    assert len(CONVERTERS) >= 24


@pytest.mark.parametrize("fmt", sorted(CONVERTERS))
def test_fixture_converts_to_expected_records(fmt):
    raw, want = fixture(fmt), expected(fmt)
    records, report = convert(fmt, [raw], skip_invalid=True)
    # The expectations name the format as the source; converted records name format and input file.
    provenance = f"{fmt}/{file_stem(raw)}"
    assert records == [{**r, "source": provenance} if r.get("source") == fmt else r for r in want["records"]]
    assert dict(report.skipped) == want["skipped"]
    assert [m.removeprefix(f"{raw}: ") for m in report.invalid] == want["invalid"]
    n_out = len(records) + sum(report.skipped.values()) + len(report.invalid)
    assert report.written == len(records) and report.read >= 1 and n_out >= report.read - 1


@pytest.mark.parametrize("fmt", sorted(f for f in CONVERTERS if expected(f)["invalid"]))
def test_first_malformed_record_is_an_error_naming_file_and_place(fmt):
    raw = fixture(fmt)
    with pytest.raises(DataError) as err:
        convert(fmt, [raw])
    assert str(err.value).startswith(f"{raw}: {expected(fmt)['invalid'][0]}")
    assert "--skip_invalid" in str(err.value)


def test_register_converter_rejects_duplicates_and_missing_docstrings():
    with pytest.raises(ValueError, match="already registered"):
        register_converter("alpaca")(lambda raw, ctx: iter(()))

    def undocumented(raw, ctx):
        yield raw
    with pytest.raises(ValueError, match="docstring"):
        register_converter("an_undocumented_format")(undocumented)
    assert "an_undocumented_format" not in CONVERTERS


def test_unknown_format_lists_the_known_ones():
    with pytest.raises(DataError, match="known formats: .*sharegpt"):
        convert("no_such_format", [fixture("alpaca")])


# ---------------------------------------------------------------- dialogue rules


def test_dialogue_history_and_last_turn():
    rec = dialogue_record([("user", "a"), ("assistant", "b"), ("user", "c"), ("assistant", "d")])
    assert rec == {"instruction": "c", "input": "", "output": "d", "history": [["a", "b"]]}


def test_dialogue_drops_trailing_human_and_leading_assistant_and_merges():
    rec = dialogue_record([("assistant", "hi"), ("user", "q1"), ("user", "q1b"), ("assistant", "a1"),
                           ("assistant", "a1b"), ("user", "dangling")], system="S")
    assert rec == {"instruction": "q1\n\nq1b", "input": "", "output": "a1\n\na1b", "history": [], "system": "S"}


@pytest.mark.parametrize("turns", [[], [("user", "only")], [("user", "q"), ("assistant", "  ")],
                                   [("assistant", "unprompted")]])
def test_dialogue_without_assistant_turn_is_skipped(turns):
    with pytest.raises(Skip, match="no assistant turn"):
        dialogue_record(turns)


def test_split_markers_only_at_line_starts():
    turns = split_markers("intro\nHuman: say Human: twice\nAssistant: ok", {"Human:": "user", "Assistant:": "assistant"})
    assert turns == [(None, "intro\n"), ("user", " say Human: twice\n"), ("assistant", " ok")]


# ---------------------------------------------------------------- chain-of-thought templates


def test_flan_cot_template_choice_is_seeded_and_order_free(tmp_path):
    rows = (RAW / "flan_cot.tsv").read_text(encoding="utf-8").splitlines(keepends=True)[:3]
    reversed_file = tmp_path / "rev.tsv"
    reversed_file.write_text("".join(reversed(rows)), encoding="utf-8")
    forward, _ = convert("flan_cot", [fixture("flan_cot")], skip_invalid=True, seed=42, source="flan_cot")
    backward, _ = convert("flan_cot", [reversed_file], seed=42, source="flan_cot")
    assert backward == list(reversed(forward))
    others = [convert("flan_cot", [reversed_file], seed=s)[0] for s in range(1, 6)]
    assert any(o != backward for o in others), "the seed should change some template choices"
    used = {r["instruction"] for seed_records in others for r in seed_records}
    assert all(any(t[0].split("{question}")[0] in i for t in COT_TEMPLATES) for i in used)


# ---------------------------------------------------------------- readers


def test_gzip_and_multiple_inputs(tmp_path):
    gz = tmp_path / "part2.jsonl.gz"
    with gzip.open(gz, "wt", encoding="utf-8") as f:
        f.write((RAW / "dolly.jsonl").read_text(encoding="utf-8"))
    records, report = convert("dolly", [fixture("dolly"), gz], skip_invalid=True, source="dolly")
    assert records == expected("dolly")["records"] * 2
    assert report.read == 8 and len(report.invalid) == 2
    assert report.invalid[1].startswith(f"{gz}: line 4:")


def test_gzip_recognised_by_magic_bytes(tmp_path):
    disguised = tmp_path / "data.jsonl"  # gzip content without the .gz suffix
    disguised.write_bytes(gzip.compress((RAW / "xp3.jsonl").read_bytes()))
    records, _ = convert("xp3", [disguised], skip_invalid=True, source="xp3")
    assert records == expected("xp3")["records"]


def test_csv_with_header(tmp_path):
    import csv

    rows = [json.loads(line) for line in (RAW / "dolly.jsonl").read_text(encoding="utf-8").splitlines()][:3]
    path = tmp_path / "dolly.csv"
    with open(path, "w", encoding="utf-8", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["instruction", "context", "response", "category"])
        writer.writeheader()
        writer.writerows(rows)  # the third row has no "context": an empty cell
    records, _ = convert("dolly", [path], source="dolly")
    assert records == expected("dolly")["records"]


def test_json_file_holding_json_lines_is_read_as_jsonl(tmp_path):
    path = tmp_path / "actually_lines.json"
    shutil.copy(RAW / "firefly.jsonl", path)
    assert [w for w, _ in read_raw(path)] == ["line 1", "line 2", "line 3"]


@pytest.mark.parametrize("name,content,message", [
    ("broken.json", '[{"instruction": "a",\n "output": }]', "broken.json: invalid JSON at line 2"),
    ("broken.jsonl", '{"a": 1}\n{"a": \n', "broken.jsonl: line 2: invalid JSON"),
    ("data.txt", "hello", "unknown file type '.txt'"),
    ("short.csv", "instruction,context,response\nonly,two\n", "short.csv: line 2: expected 3 columns"),
])
def test_unreadable_files_are_named(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    with pytest.raises(DataError, match=message.replace("(", r"\(").replace(".", r"\.")):
        convert("dolly", [path], skip_invalid=True)  # a file-level problem is never skipped


def test_missing_input_file():
    with pytest.raises(DataError, match="no-such.json: no such file"):
        convert("alpaca", ["no-such.json"])


# ---------------------------------------------------------------- into the core


def test_converted_dialogue_trains_only_on_assistant_turns(tokenizer):
    """A converted multi-turn record goes through the core's label masking: labels cover exactly
    the assistant turns (and their EOS), never a user turn or the template."""
    from alpaca_cot.templates import get_template
    from alpaca_cot.tokenize import IGNORE_INDEX, encode_records

    record = convert("sharegpt", [fixture("sharegpt")], skip_invalid=True)[0][0]
    assert record["history"], "the fixture's first dialogue is multi-turn"
    [encoded] = encode_records([record], tokenizer, get_template("alpaca"), cutoff_len=512)
    ids, labels = encoded["input_ids"], encoded["labels"]
    spans, current = [], []
    for token, label in zip(ids, labels):
        if label == IGNORE_INDEX:
            if current:
                spans.append(current)
            current = []
        else:
            assert label == token
            current.append(token)
    spans.append(current)
    eos = tokenizer.eos_token_id
    answers = [a for _, a in record["history"]] + [record["output"]]
    assert [tokenizer.decode(s[:-1]) for s in spans] == answers
    assert all(s[-1] == eos for s in spans)
    prompt_text = tokenizer.decode([t for t, lab in zip(ids, labels) if lab == IGNORE_INDEX])
    assert record["instruction"] in prompt_text and record["history"][0][0] in prompt_text
    assert not any(a in prompt_text for a in answers)


def test_skip_and_badrecord_are_distinct():
    assert not issubclass(Skip, BadRecord) and not issubclass(BadRecord, Skip)
