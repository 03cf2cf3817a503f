"""The judge client against a real local OpenAI-compatible HTTP server with scripted replies."""

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from alpaca_cot.evaluation.judged import (JudgeError, ROUGE_NOTE, ask_judge, judge_client, judge_query,
                                          load_prompts, parse_score, score_items)

FIXTURES = Path(__file__).parent / "fixtures" / "eval"

# The answer to grade -> what the fake judge does. A list is played one entry per request.
SCRIPT = {
    "good answer": "It matches the reference.\nScore: 1",
    "half answer": "部分正确。\n分数：0.5",
    "json answer": '{"reason": "close", "score": 0.25}',
    "rambling answer": "I would rather not grade this one.",
    "overrated answer": "Score: 7",
    "flaky answer": [500, "Score: 0.8"],
    "broken answer": [500, 500, 500, 500],
    "garbage answer": ["<not json>"],
    "refused answer": [400],
}


class FakeJudge(BaseHTTPRequestHandler):
    calls: list = []
    lock = threading.Lock()

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        prompt = body["messages"][0]["content"]
        answer = prompt.split("Answer to grade:\n", 1)[1].split("\n", 1)[0]
        with self.lock:
            self.calls.append({"path": self.path, "model": body["model"], "answer": answer,
                               "auth": self.headers.get("Authorization"), "temperature": body.get("temperature")})
            step = SCRIPT.get(answer, "Score: 0.5")  # e.g. a tiny random model's answer
            if isinstance(step, list):
                done = sum(c["answer"] == answer for c in self.calls) - 1
                step = step[min(done, len(step) - 1)]
        if isinstance(step, int):
            self._send(step, b'{"error": {"message": "scripted failure"}}')
        elif step == "<not json>":
            self._send(200, b"this is not a chat completion")
        else:
            self._send(200, json.dumps({"choices": [{"message": {"role": "assistant", "content": step}}]}).encode())

    def _send(self, status, payload):
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args):
        pass


@pytest.fixture()
def judge_server():
    FakeJudge.calls = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeJudge)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1", FakeJudge.calls
    server.shutdown()
    server.server_close()


def _items(answers):
    return [{"id": str(i), "category": "math" if i % 2 else "open qa", "question": f"question {i}",
             "reference": "a reference"} for i in range(len(answers))]


@pytest.mark.parametrize("text,score", [
    ("Score: 1", 1.0), ("score: 0.75", 0.75), ("The grade is fine.\nScore: 0", 0.0), ("分数：0.5", 0.5),
    ("得分为0.9", 0.9), ('{"score": 0.25}', 0.25), ("**Score:** 0.6", 0.6), ("Score: 8/10", 0.8),
    ("Score: 80%", 0.8), ("score 3 out of 4", 0.75), ("0.3", 0.3), ("1", 1.0),
    ("Score: 0.2 ... on reflection, Score: 0.4", 0.4),
    ("Score: 7", None), ("Score: -1", None), ("The answer is good.", None), ("", None), (None, None),
    ("I give it 2 and 3", None),
])
def test_parse_score(text, score):
    assert parse_score(text) == score


def test_judgements_failures_and_retries(judge_server):
    url, calls = judge_server
    answers = list(SCRIPT)[:-1]  # every scripted case except the 400
    client = judge_client(url, "judge-1", api_key="k-123", retries=3, backoff=0.01)
    rows, extra = score_items(_items(answers), answers, judge=client, workers=3)
    by_answer = {r["output"]: r for r in rows}
    assert by_answer["good answer"]["score"] == 1.0 and by_answer["half answer"]["score"] == 0.5
    assert by_answer["json answer"]["score"] == 0.25
    assert by_answer["flaky answer"]["score"] == 0.8  # a 500, then a reply: retried
    for name in ("rambling answer", "overrated answer"):  # judged, but no readable 0-1 score
        assert by_answer[name]["status"] == "unparseable" and by_answer[name]["score"] is None
    for name in ("broken answer", "garbage answer"):  # no usable reply: a 500 after the retries, not a completion
        assert by_answer[name]["status"] == "failed" and by_answer[name]["score"] is None
    assert sum(c["answer"] == "broken answer" for c in calls) == 4  # 1 try + 3 retries
    assert "500" in by_answer["broken answer"]["error"] and "not a chat completion" in by_answer["garbage answer"]["error"]
    assert extra["scored"] == 4 and extra["unparseable"] == 2 and extra["failed"] == 2
    assert all(c["path"] == "/v1/chat/completions" and c["model"] == "judge-1" and c["auth"] == "Bearer k-123"
               and c["temperature"] == 0 for c in calls)


def test_judgements_are_cached_and_failures_retried(judge_server, tmp_path):
    from alpaca_cot.evaluation.cache import JsonlCache

    url, calls = judge_server
    answers = ["good answer", "rambling answer", "broken answer"]
    client = judge_client(url, "judge-1", retries=0, backoff=0.01)
    score_items(_items(answers), answers, judge=client, cache=JsonlCache(tmp_path / "j.jsonl"))
    assert len(calls) == 3
    rows, _ = score_items(_items(answers), answers, judge=client, cache=JsonlCache(tmp_path / "j.jsonl"))
    assert len(calls) == 4 and calls[-1]["answer"] == "broken answer"  # only the failed one is asked again
    assert [r["status"] for r in rows] == ["scored", "unparseable", "failed"]


def test_a_client_error_is_not_retried(judge_server):
    url, calls = judge_server
    with pytest.raises(JudgeError, match="HTTP 400"):
        ask_judge(judge_client(url, "judge-1", retries=3, backoff=0.01),
                  judge_query({"default": "Grade it."}, "x", "q", "r", "refused answer"))
    assert len(calls) == 1


def test_an_unreachable_judge_fails_after_retries():
    client = judge_client("http://127.0.0.1:9/v1", "judge-1", retries=1, backoff=0.01, timeout=2)
    with pytest.raises(JudgeError, match="2 attempts"):
        ask_judge(client, "hello")


def test_without_a_judge_rouge_l_is_reported_as_such():
    items = [{"id": "0", "category": "generation", "question": "q", "reference": "秋天是树叶变黄的季节"},
             {"id": "1", "category": "open_qa", "question": "q", "reference": "the cat sat on the mat"}]
    rows, extra = score_items(items, ["秋天树叶变黄", "the cat sat"])
    assert extra["metric"] == "rouge_l" and extra["note"] == ROUGE_NOTE
    assert rows[0]["score"] == pytest.approx(2 * 6 / (6 + 10))  # character-level: LCS 6, lengths 6 and 10
    assert rows[1]["score"] == pytest.approx(2 * 3 / (3 + 6))


def test_prompt_files_in_both_layouts(tmp_path):
    ours = load_prompts()
    assert {"default", "math", "code", "open_qa", "closed_qa", "generation"} <= set(ours)
    jsonl = load_prompts(str(FIXTURES / "judge_prompts_layout.jsonl"))
    assert set(jsonl) == {"math", "default"}
    (tmp_path / "p.json").write_text(json.dumps({"Open QA": "grade open questions"}))
    assert load_prompts(str(tmp_path / "p.json")) == {"open_qa": "grade open questions"}
    query = judge_query(jsonl, "Math", "2+2?", "4", "five")
    assert query.startswith(jsonl["math"]) and "2+2?" in query and "five" in query and "Score: X" in query
    assert judge_query(jsonl, "poetry", "q", "r", "a").startswith(jsonl["default"])


def test_evaluate_judged_end_to_end(judge_server, tiny_llama_dir, tmp_path):
    """evaluate.py --task judged on the Belle-eval layout: generations cached, the judge's scores summarised."""
    import evaluate

    url, calls = judge_server
    out = tmp_path / "judged"
    argv = ["--task", "judged", "--data", str(FIXTURES / "belle_layout.json"), "--output_dir", str(out),
            "--model_name_or_path", tiny_llama_dir, "--max_new_tokens", "3"]
    summary = evaluate.main(argv + ["--judge_url", url, "--judge_model", "judge-1"])
    assert summary["metric"] == "judge" and summary["n"] == 4 and summary["score"] == 0.5
    assert set(summary["per_category"]) == {"generation", "brainstorming", "math", "classification"}
    assert len(calls) == 4
    lines = (out / "results.jsonl").read_text().splitlines()
    assert len(lines) == 4 and json.loads(lines[0])["judgement"] == "Score: 0.5"
    rouge = evaluate.main(argv)  # no judge: cached generations, ROUGE-L
    assert rouge["metric"] == "rouge_l" and "ROUGE-L" in rouge["note"] and len(calls) == 4
