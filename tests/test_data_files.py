"""One reader for every user file: the same awkward files give the same records (or the same error) at every entry point.

Entry points: training data (the Arrow records cache and the list loader), predict.py's
``--data``, evaluate.py's items, generate.py's request files, self-instruct seeds and outputs,
and data/convert.py. Awkward files: a UTF-8 byte-order mark (JSON list and JSONL), CRLF line
ends, blank lines, a JSON list on one line, JSON Lines in a file named ``.json``, gzip under a
plain name, one pretty-printed object; trailing commas are refused with a message naming them.
"""

import gzip
import json

import pytest

from alpaca_cot.data.converters import convert_files
from alpaca_cot.data.loading import load_data, load_records, read_requests
from alpaca_cot.data.records import file_records
from alpaca_cot.data.schema import DataError
from alpaca_cot.data.self_instruct import read_output
from alpaca_cot.data.self_instruct_tasks import load_seed_tasks
from alpaca_cot.evaluation.readers import load_items

A = {"instruction": "Name a colour.", "input": "", "output": "Blue, 1 of many."}
B = {"instruction": "写一个数字。", "input": "任意", "output": "7"}
LINES = [json.dumps(r, ensure_ascii=False) for r in (A, B)]

AWKWARD = {
    "bom_list.json": "\ufeff[\n" + ",\n".join(LINES) + "\n]\n",
    "bom_lines.jsonl": "\ufeff" + "\n".join(LINES) + "\n",
    "crlf_lines.jsonl": "\r\n".join(LINES) + "\r\n",
    "crlf_list.json": "[\r\n  " + ",\r\n  ".join(LINES) + "\r\n]\r\n",
    "blank_lines.jsonl": "\n\n" + LINES[0] + "\n   \n\n" + LINES[1] + "\n\n",
    "one_line_list.json": "[" + ",".join(LINES) + "]",
    "lines_named.json": "\n".join(LINES) + "\n",
    "gzip_plain_name.json": gzip.compress(("\n".join(LINES) + "\n").encode()),
    "single_object.json": json.dumps(A, indent=2, ensure_ascii=False),
}
REFUSED = {
    "trailing_comma_list.json": ("[" + ",\n".join(LINES) + ",\n]", "a trailing comma after record 1"),
    "trailing_comma_lines.jsonl": ("".join(line + ",\n" for line in LINES), "line 1: a trailing comma after the object"),
    "trailing_comma_object.json": ('[{"instruction": "x", "output": "y",}]', "a trailing comma before '}'"),
}


def instructions(records):
    return [r["instruction"] for r in records]


ENTRY_POINTS = {
    "training (Arrow records)": lambda p: list(file_records(p, source="t").dataset["instruction"]),
    "training (list loader)": lambda p: instructions(load_records(p)),
    "predict.py --data": lambda p: instructions(load_data([str(p)], require_output=False)[0]),
    "evaluate.py items": lambda p: [i["instruction"] for i in load_items("cot_math", [str(p)], "unified")],
    "generate.py requests": lambda p: instructions(read_requests(str(p))),
    "self-instruct seeds": lambda p: instructions(load_seed_tasks(p)),
    "self-instruct output": lambda p: instructions(read_output(p)),
    "data/convert.py": lambda p: instructions(convert_files("alpaca", [p])),
}


pytestmark = pytest.mark.usefixtures("module_cache_home")  # the Arrow records cache of these tests


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("awkward")
    out = {}
    for name, content in {**AWKWARD, **{k: v[0] for k, v in REFUSED.items()}}.items():
        path = folder / name
        path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
        out[name] = path
    return out


@pytest.mark.parametrize("entry", ENTRY_POINTS)
def test_every_entry_point_reads_every_awkward_file_the_same(entry, files):
    read = ENTRY_POINTS[entry]
    for name in AWKWARD:
        want = [A["instruction"]] if name == "single_object.json" else [A["instruction"], B["instruction"]]
        assert read(files[name]) == want, f"{entry}: {name}"


@pytest.mark.parametrize("entry", ENTRY_POINTS)
def test_every_entry_point_refuses_trailing_commas_saying_so(entry, files):
    for name, (_, message) in REFUSED.items():
        with pytest.raises(DataError) as info:
            ENTRY_POINTS[entry](files[name])
        assert str(files[name]) in str(info.value) and message in str(info.value), f"{entry}: {info.value}"


def test_plain_text_request_files_and_stdin_decide_by_content(tmp_path):
    text = tmp_path / "prompts.json"  # named .json, but plain text: one instruction per line
    text.write_text("\ufeffName a colour.\r\n\r\nCount to three.\r\n", encoding="utf-8")
    assert instructions(read_requests(str(text))) == ["Name a colour.", "Count to three."]
    assert instructions(read_requests("-", "\ufeff" + LINES[1] + "\n")) == [B["instruction"]]
    with pytest.raises(DataError, match="<stdin>: line 1: missing key 'instruction'.*read as JSON"):
        read_requests("-", '{"prompt": "x"}\n')


@pytest.mark.parametrize("content,message", [
    (b"\xff\xfe\x00garbage", "not UTF-8"),
    (b"hello\n", "not JSON data"),
    (b'[{"instruction": "x", "output": "y"}', "']' missing"),
    (b'[{"instruction": "x", "output": "y"}] [1]', "unexpected text after the JSON list"),
])
def test_unusable_files_say_what_is_wrong(tmp_path, content, message):
    path = tmp_path / "bad.json"
    path.write_bytes(content)
    for read in (ENTRY_POINTS["training (Arrow records)"], ENTRY_POINTS["data/convert.py"]):
        with pytest.raises(DataError, match=message) as info:
            read(path)
        assert str(path) in str(info.value)


def test_a_large_json_list_is_parsed_across_block_boundaries(tmp_path, monkeypatch):
    from alpaca_cot.data import jsonio

    monkeypatch.setattr(jsonio, "BLOCK", 7)  # every record spans several blocks
    values = [{"k": i, "s": "é\\n" * (i % 11), "n": 10**20 + i, "nested": [[i], {"x": None}]} for i in range(300)]
    path = tmp_path / "many.json"
    path.write_text(json.dumps(values, indent=1, ensure_ascii=False), encoding="utf-8")
    assert [v for _, v in jsonio.iter_json(path)] == values
    path.write_text(json.dumps(values)[:-40] + '"bad" 1]}]', encoding="utf-8")
    with pytest.raises(DataError, match="invalid JSON at line 1, column"):
        list(jsonio.iter_json(path))
