"""predict.py: batched output equals unbatched greedy output, resume never loses or repeats a
record (an interrupted run leaves whole lines only), and bad input records are named."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from alpaca_cot.infer import load_generator
from alpaca_cot.predict import answered_prefix, predict, result_path
from predict import main as predict_main

ROOT = Path(__file__).resolve().parents[1]
GREEDY = {"max_new_tokens": 12, "do_sample": False, "num_beams": 1, "repetition_penalty": 1.0}
WORDS = ["apple", "river", "stone", "cloud", "lamp", "tiger", "piano", "maple", "tulip", "comet"]


def rows(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


@pytest.fixture(scope="module")
def tiny_generator(tiny_llama_dir):
    return load_generator(model_name_or_path=tiny_llama_dir, model_type="llama", template="alpaca")


@pytest.mark.slow
def test_batched_equals_unbatched_greedy(default_model_dir, tmp_path):
    generator = load_generator(model_name_or_path=default_model_dir, template="alpaca")
    records = [{"instruction": q, "input": ""} for q in
               ["Name a colour.", "What is 2 plus 3? Explain your reasoning step by step.", "Hi",
                "Write a haiku about the sea.", "List three fruits and say which one you like the most and why."]]
    records.append({"instruction": "Translate to French.", "input": "Good morning, my friend."})
    predict(generator, records, tmp_path / "b1.jsonl", GREEDY, batch_size=1, progress=False)
    report = predict(generator, records, tmp_path / "b4.jsonl", GREEDY, batch_size=4, progress=False)
    predict(generator, records, tmp_path / "b3.jsonl", {**GREEDY, "max_new_tokens": 40}, batch_size=3, progress=False)
    predict(generator, records, tmp_path / "b1_40.jsonl", {**GREEDY, "max_new_tokens": 40}, batch_size=1,
            progress=False)
    one, four = rows(tmp_path / "b1.jsonl"), rows(tmp_path / "b4.jsonl")
    assert [r["generate"] for r in four] == [r["generate"] for r in one]
    # Longer answers end at different steps, so finished rows are refilled mid-batch.
    three, one_long = rows(tmp_path / "b3.jsonl"), rows(tmp_path / "b1_40.jsonl")
    assert [r["generate"] for r in three] == [r["generate"] for r in one_long]
    assert all(r["generate"].strip() for r in one)
    assert [{k: r[k] for k in ("instruction", "input")} for r in four] == records  # input order, record kept
    assert report.answered == 6 and report.new_tokens > 0


@pytest.mark.parametrize("refill", [True, False])
def test_resume_after_an_interruption_answers_each_record_once(tiny_generator, tmp_path, monkeypatch, refill):
    records = [{"instruction": f"Repeat {w}" + " please" * (10 - i), "input": ""} for i, w in enumerate(WORDS)]
    path = tmp_path / "out.jsonl"
    if not refill:
        monkeypatch.setattr("alpaca_cot.infer.supports_refill", lambda model, kwargs: False)
    model, calls = tiny_generator.model, []
    real_forward = model.forward

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 40:
            raise KeyboardInterrupt  # Ctrl-C in the middle of generation
        return real_forward(*args, **kwargs)

    monkeypatch.setattr(model, "forward", interrupted)
    with pytest.raises(KeyboardInterrupt):
        predict(tiny_generator, records, path, GREEDY, batch_size=2, progress=False)
    monkeypatch.setattr(model, "forward", real_forward)
    written = path.read_bytes()
    kept = len(written.splitlines())
    assert written.endswith(b"\n") and 0 < kept < len(records)  # whole lines only, some of them
    with open(path, "ab") as f:  # and a torn line, as a crash in the middle of a write would leave
        f.write(b'{"instruction": "Repeat')

    report = predict(tiny_generator, records, path, GREEDY, batch_size=2, progress=False)
    assert (report.resumed, report.answered) == (kept, len(records) - kept)
    assert path.read_bytes().startswith(written)  # earlier answers untouched
    assert [r["instruction"] for r in rows(path)] == [r["instruction"] for r in records]  # each once, in order
    assert predict(tiny_generator, records, path, GREEDY, progress=False).answered == 0  # complete: nothing to do


def test_an_output_file_of_other_records_is_refused(tiny_generator, tmp_path):
    path = tmp_path / "other.jsonl"
    path.write_text(json.dumps({"instruction": "something else", "input": "", "generate": "x"}) + "\n")
    with pytest.raises(ValueError, match="line 1 does not answer record 0"):
        answered_prefix(path, [{"instruction": "Repeat apple", "input": ""}])
    report = predict(tiny_generator, [{"instruction": "Repeat apple", "input": ""}], path, GREEDY, progress=False,
                     overwrite=True)
    assert report.answered == 1 and rows(path)[0]["instruction"] == "Repeat apple"


def test_result_dir_may_be_a_folder(tmp_path):
    assert result_path(str(tmp_path)) == tmp_path / "predictions.jsonl"
    assert result_path(str(tmp_path / "new")) == tmp_path / "new" / "predictions.jsonl"
    assert result_path(str(tmp_path / "p.jsonl")) == tmp_path / "p.jsonl"


def test_script_names_a_malformed_record_then_skips_it_and_resumes(tiny_llama_dir, tmp_path, capsys):
    data = tmp_path / "in.json"
    data.write_text(json.dumps([{"instruction": "Repeat apple"}, {"input": "no instruction"},
                                {"instruction": "Repeat river", "input": "", "output": "river"}]))
    out = tmp_path / "preds.jsonl"
    base = [sys.executable, str(ROOT / "predict.py"), "--model_name_or_path", tiny_llama_dir, "--model_type", "llama",
            "--template", "alpaca", "--data", str(data), "--result_dir", str(out), "--greedy", "--max_new_tokens",
            "4", "--predict_batch_size", "2"]

    def run(*extra):
        return subprocess.run(base + list(extra), cwd=ROOT, capture_output=True, text=True, timeout=300)

    with pytest.raises(SystemExit) as bad:  # in-process (a subprocess costs seconds of imports)
        predict_main(base[2:])
    assert "record 1" in str(bad.value) and "instruction" in str(bad.value)
    assert not out.exists()
    ok = run("--skip_invalid")  # the script as a user runs it
    assert ok.returncode == 0, ok.stderr[-2000:]
    answers = rows(out)
    assert [r["instruction"] for r in answers] == ["Repeat apple", "Repeat river"]
    assert answers[1]["output"] == "river" and all(isinstance(r["generate"], str) for r in answers)
    predict_main(base[2:] + ["--skip_invalid"])
    assert "2/2 records answered (2 from an earlier run" in capsys.readouterr().err
    assert len(rows(out)) == 2
