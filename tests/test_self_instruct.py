"""Self-instruct (data/self_instruct.py) against a real local HTTP teacher with canned replies.

The fake teacher is an ``http.server`` in a thread answering like an OpenAI-compatible chat
API; its script is a list of replies (a string is a 200 with that message content, a tuple
``(status, headers, body)`` an HTTP error), then a default. The slow test at the end uses our
own ``server.py --api`` on the embedded model as the teacher.
"""

from __future__ import annotations

import importlib.util
import json
import os
import random
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from alpaca_cot.data import self_instruct as si
from alpaca_cot.data.rouge import RougeIndex, lcs_length, rouge_l, tokens
from alpaca_cot.data.schema import DataError, record_problem
from alpaca_cot.data.teacher import ChatClient, TeacherError, chat_completions_url

ROOT = Path(__file__).resolve().parents[1]
SEED_DIR = ROOT / "data" / "self_instruct"

spec = importlib.util.spec_from_file_location("data_self_instruct", ROOT / "data" / "self_instruct.py")
cli = importlib.util.module_from_spec(spec)
spec.loader.exec_module(cli)


# ---------------------------------------------------------------- the fake teacher


class FakeTeacher:
    """An OpenAI-shaped chat server on a free loopback port, replying from a script."""

    def __init__(self, script=(), default="[]", delay: float = 0.0):
        self.script, self.default, self.delay = list(script), default, delay
        self.requests: list[dict] = []  # {"path", "headers", "body"} of every POST
        self.lock = threading.Lock()
        self.active = self.max_active = 0
        teacher = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                self._send(200, {}, {"object": "list", "data": [{"id": "fake", "object": "model"}]})

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with teacher.lock:
                    teacher.requests.append({"path": self.path, "headers": dict(self.headers), "body": body})
                    n = len(teacher.requests)
                    item = teacher.script.pop(0) if teacher.script else teacher.default
                    teacher.active += 1
                    teacher.max_active = max(teacher.max_active, teacher.active)
                try:
                    time.sleep(teacher.delay)
                    if callable(item):
                        item = item(n)
                    if isinstance(item, tuple):
                        self._send(*item)
                    else:
                        self._send(200, {}, {"id": f"c{n}", "object": "chat.completion", "choices": [
                            {"index": 0, "finish_reason": "stop",
                             "message": {"role": "assistant", "content": item}}]})
                finally:
                    with teacher.lock:
                        teacher.active -= 1

            def _send(self, status, headers, body):
                data = (body if isinstance(body, str) else json.dumps(body)).encode("utf-8")
                self.send_response(status)
                for k, v in {"Content-Type": "application/json", **headers}.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()

    def prompts(self) -> list[str]:
        return [r["body"]["messages"][-1]["content"] for r in self.requests]

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture()
def teacher():
    servers = []

    def make(*args, **kwargs) -> FakeTeacher:
        servers.append(FakeTeacher(*args, **kwargs))
        return servers[-1]

    yield make
    for s in servers:
        s.close()


def tasks(*items) -> str:
    """A JSON list of tasks; a string item is an instruction with a made-up answer."""
    return json.dumps([{"instruction": i, "input": "", "output": f"An answer to: {i}"} if isinstance(i, str) else i
                       for i in items], ensure_ascii=False)


SEEDS = [
    {"id": "seed_task_0", "name": "health", "instruction": "Give three tips for staying healthy.",
     "instances": [{"input": "", "output": "Eat well, sleep enough and move every day."}], "is_classification": False},
    {"id": "seed_task_1", "name": "french", "instruction": "Translate the sentence into French.",
     "instances": [{"input": "Good morning", "output": "Bonjour"}], "is_classification": False},
    {"id": "seed_task_2", "name": "animal", "instruction": "Classify the animal as a mammal or a bird.",
     "instances": [{"input": "penguin", "output": "bird"}, {"input": "cat", "output": "mammal"}],
     "is_classification": True},
]


@pytest.fixture()
def seed_file(tmp_path) -> Path:
    path = tmp_path / "seed_tasks.jsonl"
    path.write_text("".join(json.dumps(s) + "\n" for s in SEEDS), encoding="utf-8")
    return path


def config(seed_file, url, output, **kw) -> si.SelfInstructConfig:
    kw = {"num_workers": 1, "retry_backoff": 0.001, "save_interval": 0, "request_timeout": 10, **kw}
    return si.SelfInstructConfig(str(seed_file), url, "teacher-model", str(output), **kw)


HAIKU = "Write a haiku about autumn leaves."
WEATHER = "Explain the difference between weather and climate."
FRUITS = "List five fruits that are rich in vitamin C."
BILL = "Describe how a bill becomes a law in the United States."
BAKERY = "Suggest a name for a new bakery."
SEASONS = "What causes the seasons on Earth?"

SCRIPT = [
    (500, {}, {"error": {"message": "overloaded"}}),  # request 1, retried
    tasks(HAIKU, WEATHER),
    (429, {"Retry-After": "0"}, {"error": {"message": "rate limited"}}),  # request 2, retried
    "```json\n" + tasks(FRUITS, "Draw a picture of a cat sitting on a mat.")[:-1] + ",\n]\n```",  # trailing comma
    "Sure! Here are the new tasks:\n\n" + tasks(
        "give three tips for staying healthy!",            # the seed, token for token
        "Give three tips for staying healthy and fit.",    # ROUGE-L 0.86 with the seed
        "Write a short haiku about autumn leaves.",        # ROUGE-L 0.92 with a kept one
        BILL) + "\n\nI hope these help [1].",
    "I'm sorry, but I cannot produce that list.",  # nothing to parse
    tasks({"instruction": "Name the capital of Italy.", "input": "", "output": "  "},
          {"instruction": " ".join(["word"] * 151), "output": "x"},
          {"instruction": "Sing.", "output": "La la la."},
          {"instruction": "Count to three.", "output": [1, 2, 3]},
          {"input": "no instruction here", "output": "x"}),
    '[{"instruction": "%s", "input": "<noinput>", "output": "Rise & Shine"}, '
    '{"instruction": "Write a limerick about a' % BAKERY,  # cut off mid-reply: the complete object counts
    json.dumps({"tasks": [{"instruction": SEASONS, "output": "The tilt of the Earth's axis.", "input": 7},
                          {"instruction": "Convert 100 degrees Fahrenheit to Celsius.", "output": "37.8 C"}]}),
]


def test_run_keeps_the_right_records_and_counts_every_filter(seed_file, tmp_path, teacher):
    server = teacher(SCRIPT)
    out = tmp_path / "out.json"
    stats = si.generate(config(seed_file, server.url, out, num_instructions=6, teacher_api_key="sk-test",
                               max_tokens=512, tasks_per_request=5), progress=False)

    records = json.loads(out.read_text(encoding="utf-8"))
    assert [r["instruction"] for r in records] == [HAIKU, WEATHER, FRUITS, BILL, BAKERY, SEASONS]
    assert all(r["source"] == "self_instruct" and record_problem(r) is None for r in records)
    assert records[4]["input"] == "" and records[4]["output"] == "Rise & Shine"  # "<noinput>" means none
    assert records[5]["input"] == "7"

    assert (stats.existing, stats.kept, stats.requests, stats.attempts, stats.retries) == (0, 6, 7, 9, 2)
    assert stats.unparseable == 1 and stats.failed == 0
    assert dict(stats.filtered) == {"blocked_word": 1, "duplicate": 1, "near_duplicate": 2, "empty": 1,
                                    "too_long": 1, "too_short": 1, "malformed": 2}
    assert stats.stopped == "6 instructions reached"
    assert stats.tasks == 2 + 2 + 4 + 5 + 1 + 2

    # Every HTTP attempt reached the teacher as an OpenAI chat request.
    assert len(server.requests) == 9
    for r in server.requests:
        assert r["path"] == "/v1/chat/completions"
        assert r["headers"]["Authorization"] == "Bearer sk-test"
        assert r["body"]["model"] == "teacher-model" and r["body"]["max_tokens"] == 512
        prompt = r["body"]["messages"][0]["content"]
        assert "Write 5 new tasks" in prompt and '"instruction"' in prompt
        assert sum(s["instruction"] in prompt for s in SEEDS) == 3  # the seeds are shown
    assert HAIKU not in server.prompts()[0] and HAIKU in server.prompts()[2]  # then generated ones too
    assert '"input": "penguin"' in server.prompts()[0]  # a Stanford task shows its first instance


def test_a_resumed_run_adds_only_new_records(seed_file, tmp_path, teacher):
    out = tmp_path / "out.json"
    first = teacher([tasks(HAIKU, WEATHER, FRUITS)])
    si.generate(config(seed_file, first.url, out, num_instructions=3), progress=False)
    before = json.loads(out.read_text(encoding="utf-8"))

    second = teacher([tasks(HAIKU, "Write a haiku about the autumn leaves", BILL,
                            "Give three tips for staying healthy.", BAKERY, SEASONS)])
    stats = si.generate(config(seed_file, second.url, out, num_instructions=5), progress=False)
    after = json.loads(out.read_text(encoding="utf-8"))
    assert after[:3] == before and [r["instruction"] for r in after[3:]] == [BILL, BAKERY]
    assert (stats.existing, stats.kept, stats.requests) == (3, 2, 1)
    assert dict(stats.filtered) == {"duplicate": 2, "near_duplicate": 1}
    assert len({r["instruction"] for r in after}) == len(after)
    assert all(r["instruction"] not in second.prompts()[0] or r in before for r in after)

    third = teacher()
    stats = si.generate(config(seed_file, third.url, out, num_instructions=5), progress=False)
    assert stats.requests == 0 and third.requests == [] and stats.stopped == "5 instructions reached"
    assert json.loads(out.read_text(encoding="utf-8")) == after


def test_jsonl_output_resumes_too(seed_file, tmp_path, teacher):
    out = tmp_path / "out.jsonl"
    server = teacher([tasks(HAIKU), tasks(HAIKU, WEATHER)])
    si.generate(config(seed_file, server.url, out, num_instructions=1), progress=False)
    si.generate(config(seed_file, server.url, out, num_instructions=2), progress=False)
    lines = out.read_text(encoding="utf-8").splitlines()
    assert [json.loads(line)["instruction"] for line in lines] == [HAIKU, WEATHER]


def test_the_request_budget_and_the_stall_limit_stop_a_useless_teacher(seed_file, tmp_path, teacher):
    server = teacher(default="No JSON here.")
    stats = si.generate(config(seed_file, server.url, tmp_path / "a.json", num_instructions=5, max_requests=3),
                        progress=False)
    assert (stats.requests, stats.unparseable, stats.kept, len(server.requests)) == (3, 3, 0, 3)
    assert stats.stopped == "request budget used up (--max_requests 3)"
    assert json.loads((tmp_path / "a.json").read_text()) == []

    server = teacher(default=tasks("Give three tips for staying healthy."))
    stats = si.generate(config(seed_file, server.url, tmp_path / "b.json", num_instructions=5, stall_limit=4),
                        progress=False)
    assert stats.requests == 4 and stats.filtered["duplicate"] == 4 and "in a row added nothing" in stats.stopped


def test_concurrent_workers_fill_the_target_without_duplicates(seed_file, tmp_path, teacher):
    def reply(n):  # three distinct tasks per request
        return tasks(*[f"Describe item{n}x{k} with item{n}y{k} and item{n}z{k}" for k in range(3)])

    server = teacher(default=reply, delay=0.05)
    out = tmp_path / "out.json"
    stats = si.generate(config(seed_file, server.url, out, num_instructions=20, num_workers=4,
                               tasks_per_request=3), progress=False)
    records = json.loads(out.read_text(encoding="utf-8"))
    assert len(records) == 20 == stats.kept and len({r["instruction"] for r in records}) == 20
    assert server.max_active > 1  # requests really overlapped
    assert 7 <= stats.requests <= 10  # ceil(20 / 3), plus at most the in-flight ones of the last round


def test_a_teacher_that_keeps_failing_stops_the_run_and_keeps_what_was_made(seed_file, tmp_path, teacher):
    server = teacher([tasks(HAIKU, WEATHER)], default=(503, {}, {"error": {"message": "down"}}))
    out = tmp_path / "out.json"
    with pytest.raises(TeacherError, match="still failing after 3 attempts; last: HTTP 503") as e:
        si.generate(config(seed_file, server.url, out, num_instructions=5, max_retries=2), progress=False)
    assert (e.value.stats.kept, e.value.stats.failed, e.value.stats.attempts) == (2, 1, 4)
    assert [r["instruction"] for r in json.loads(out.read_text())] == [HAIKU, WEATHER]

    server = teacher(default=(401, {}, {"error": {"message": "invalid api key"}}))
    with pytest.raises(TeacherError, match="HTTP 401.*invalid api key"):
        si.generate(config(seed_file, server.url, tmp_path / "x.json", num_instructions=5), progress=False)
    assert len(server.requests) == 1  # not retried


def test_chinese_prompts_and_character_level_dedup(tmp_path, teacher):
    seeds = SEED_DIR / "seed_tasks_zh.jsonl"
    server = teacher([tasks("把下面这个句子翻译成英文。",      # a seed, one word changed: char-level ROUGE-L 0.87
                            "请描述这张图片中的内容。",        # blocked: 图片
                            "列举三种常见的中国传统节日。",
                            "列举三种常见的中国传统节日吧。")])  # near duplicate of the one before
    stats = si.generate(config(seeds, server.url, tmp_path / "zh.json", num_instructions=3, lang="zh",
                               max_requests=1), progress=False)
    assert "请再写 10 个新任务" in server.prompts()[0]
    kept = json.loads((tmp_path / "zh.json").read_text(encoding="utf-8"))
    assert [r["instruction"] for r in kept] == ["列举三种常见的中国传统节日。"]
    assert dict(stats.filtered) == {"near_duplicate": 2, "blocked_word": 1}


def test_cli_prints_a_summary_and_writes_counts(tmp_path, teacher, capsys):
    server = teacher([tasks(HAIKU, "Describe the water cycle in simple terms.")])
    out, summary = tmp_path / "gen.json", tmp_path / "summary.json"
    rc = cli.main(["--seed_tasks", str(SEED_DIR / "seed_tasks_en.jsonl"),
                   "--teacher_url", server.url.removesuffix("/v1"), "--teacher_model", "m",
                   "--num_instructions", "2", "--output", str(out), "--no_progress",
                   "--summary_json", str(summary), "--blocked_words", "haiku", "--num_workers", "1"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "kept 1 new instructions" in printed and "blocked_word 1" in printed and "requests" in printed
    counts = json.loads(summary.read_text())
    assert counts["kept"] == 1 and counts["filtered"]["blocked_word"] == 1
    assert server.requests[0]["path"] == "/v1/chat/completions" and "Authorization" not in server.requests[0]["headers"]

    server = teacher(default=(404, {}, {"error": {"message": "no such model"}}))
    rc = cli.main(["--seed_tasks", str(SEED_DIR / "seed_tasks_en.jsonl"), "--teacher_url", server.url,
                   "--teacher_model", "m", "--num_instructions", "2", "--output", str(out), "--no_progress",
                   "--num_workers", "1", "--num_instructions", "5"])
    captured = capsys.readouterr()
    assert rc == 2 and "HTTP 404" in captured.err and "kept 0 new instructions" in captured.out
    assert cli.main(["--seed_tasks", str(tmp_path / "missing.jsonl"), "--teacher_url", server.url,
                     "--teacher_model", "m", "--output", str(out)]) == 1
    assert "no such file" in capsys.readouterr().err


# ---------------------------------------------------------------- the pieces


def test_shipped_seed_tasks_load_and_are_distinct():
    for lang in ("en", "zh"):
        path = SEED_DIR / f"seed_tasks_{lang}.jsonl"
        raw = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
        assert len(raw) == 20 and all({"id", "name", "instruction", "instances", "is_classification"} <= set(r)
                                      for r in raw)
        seeds = si.load_seed_tasks(path)
        task_filter = si.TaskFilter(si.SelfInstructConfig("", "", "", "", lang=lang), [])
        assert [task_filter.reason(s) for s in seeds] == [None] * 20  # our seeds pass our own filters


def test_seed_tasks_as_unified_records_and_bad_seeds(tmp_path):
    path = tmp_path / "seeds.json"
    path.write_text(json.dumps([{"instruction": "Say hi.", "output": "Hi!"}]))
    assert si.load_seed_tasks(path) == [{"instruction": "Say hi.", "input": "", "output": "Hi!"}]
    path.write_text(json.dumps([{"instruction": "Say hi.", "instances": []}]))
    with pytest.raises(DataError, match="record 0: 'instances' must be a non-empty list"):
        si.load_seed_tasks(path)
    path.write_text("[]")
    with pytest.raises(DataError, match="no seed tasks"):
        si.load_seed_tasks(path)


@pytest.mark.parametrize("reply, instructions", [
    ('[{"instruction": "A b c.", "input": "", "output": "x"}]', ["A b c."]),
    ('Here you go:\n```json\n[{"instruction": "A", "output": "x"},]\n```\nEnjoy!', ["A"]),
    ('```\n[{"instruction": "A", "output": "x"}]\n```', ["A"]),
    ('See [1] and [2, 3]: [{"instruction": "A", "output": "x"}] thanks', ["A"]),
    ('He said "hi, [ok] {fine}": [{"instruction": "A", "output": "x",},]', ["A"]),
    ('{"instruction": "A", "output": "x"}\n{"instruction": "B", "output": "y"}', ["A", "B"]),
    ('[{"instruction": "A", "output": "x"}, {"instruction": "B", "output": "unterminated', ["A"]),
    ('[{"指令": "写一首诗。", "输入": "", "输出": "春风..."}]', ["写一首诗。"]),
    ('{"data": [{"instruction": "A", "output": "x"}]}', ["A"]),
])
def test_parse_is_tolerant(reply, instructions):
    items, parsed = si.parse_tasks(reply)
    assert parsed and [t["instruction"] for t in items] == instructions


def test_parse_never_invents_content():
    assert si.parse_tasks("Sorry, I can't.") == ([], False)
    assert si.parse_tasks('["just", "strings"]') == ([], False)
    assert si.parse_tasks('[{"instruction": "A", "output": "x"') == ([], False)  # no complete object
    items, parsed = si.parse_tasks('[{"instruction": "A"}, {"instruction": "B", "output": {"k": 1}}, 3, '
                                   '{"instruction": "C", "output": 42, "input": "<No Input>"}]')
    assert parsed and items == [None, None, None, {"instruction": "C", "input": "", "output": "42"}]


def test_blocked_words_match_whole_words_and_cjk_substrings():
    pattern = si.blocked_word_pattern(["file", "go to", "图片"])
    assert pattern.search("Summarize the attached FILE.") and pattern.search("Go to the shop.")
    assert not pattern.search("Update my profile summary.") and not pattern.search("a good tomato")
    assert pattern.search("描述这张图片。") and si.blocked_word_pattern(["", " "]) is None


def test_lcs_matches_dynamic_programming_and_rouge_l_values():
    def dp(a, b):
        table = [[0] * (len(b) + 1) for _ in range(len(a) + 1)]
        for i, x in enumerate(a):
            for j, y in enumerate(b):
                table[i + 1][j + 1] = table[i][j] + 1 if x == y else max(table[i][j + 1], table[i + 1][j])
        return table[-1][-1]

    rng = random.Random(0)
    for _ in range(300):
        a = [rng.choice("abcd") for _ in range(rng.randint(0, 80))]
        b = [rng.choice("abcd") for _ in range(rng.randint(0, 80))]
        assert lcs_length(a, b) == dp(a, b)
    assert tokens("Translate “Hello, world!” 翻译成中文 x_y") == ["translate", "hello", "world", "翻", "译", "成",
                                                               "中", "文", "x", "y"]
    assert rouge_l("Write a poem about the sea.", "write a short poem about the sea") == pytest.approx(12 / 13)
    assert rouge_l("把这句话翻译成英文", "把这句话翻译成法文") == pytest.approx(16 / 18)
    assert rouge_l("", "anything") == 0.0


def test_rouge_index_finds_exactly_the_texts_over_the_threshold():
    rng = random.Random(1)
    words = "the a write poem story list give explain describe summarize translate text about why how".split()
    indexed = [" ".join(rng.choice(words) for _ in range(rng.randint(1, 80))) for _ in range(150)]
    queries = [" ".join(rng.choice(words) for _ in range(rng.randint(1, 80))) for _ in range(40)]
    for text in rng.sample(indexed, 60):  # edited copies: some near, some far
        toks = text.split()
        for _ in range(rng.randint(1, 1 + len(toks) // 2)):
            toks[rng.randrange(len(toks))] = rng.choice(["cat", "dog", ""])
        queries.append(" ".join(toks) or "cat")
    indexed_tokens = [tokens(t) for t in indexed]
    best = [max(rouge_l(tokens(q), t) for t in indexed_tokens) for q in queries]
    for threshold in (0.5, 0.7, 0.9):
        index = RougeIndex(threshold)
        for t in indexed:
            index.add(t)
        assert len(index) == 150
        hits = 0
        for query, top in zip(queries, best):  # queries up to 80 tokens: both the numpy and the Python path
            score, match = index.find(query)
            if match is None:
                assert top < threshold and score == 0.0
            else:
                assert score >= threshold and rouge_l(query, match) == pytest.approx(score)
                hits += 1
        assert 5 < hits < len(queries), hits
    with pytest.raises(ValueError):
        RougeIndex(0)


def test_teacher_url_forms():
    assert chat_completions_url("http://h:8000") == "http://h:8000/v1/chat/completions"
    assert chat_completions_url("https://api.example.com/v1/") == "https://api.example.com/v1/chat/completions"
    assert chat_completions_url("http://h/x/chat/completions") == "http://h/x/chat/completions"
    with pytest.raises(TeacherError, match="http"):
        ChatClient("h:8000", "m")


def test_connection_errors_are_retried_with_back_off():
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    delays = []
    client = ChatClient(f"http://127.0.0.1:{port}", "m", max_retries=3, backoff=1.0, sleep=delays.append)
    with pytest.raises(TeacherError, match="after 4 attempts") as e:
        client.complete([{"role": "user", "content": "hi"}])
    assert e.value.attempts == 4 and len(delays) == 3
    assert [0.5 <= d / 2 ** i <= 1.0 for i, d in enumerate(delays)] == [True] * 3  # exponential, jittered


# ---------------------------------------------------------------- our own server as the teacher


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_end_to_end_with_our_own_server_as_teacher(tmp_path):
    if not (ROOT / "server.py").exists():
        pytest.skip("server.py does not exist yet")
    port = _free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    proc = subprocess.Popen([sys.executable, "server.py", "--api", "--host", "127.0.0.1", "--port", str(port)],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 240
        while True:
            assert proc.poll() is None, f"server.py exited:\n{proc.stdout.read()}"
            try:
                with urllib.request.urlopen(base + "/v1/models", timeout=5) as r:
                    model = json.loads(r.read())["data"][0]["id"]
                break
            except OSError:
                assert time.monotonic() < deadline, "server.py did not answer /v1/models in time"
                time.sleep(1)
        out, summary = tmp_path / "teacher.json", tmp_path / "summary.json"
        result = subprocess.run(
            [sys.executable, "data/self_instruct.py", "--seed_tasks", str(SEED_DIR / "seed_tasks_en.jsonl"),
             "--teacher_url", base, "--teacher_model", model, "--num_instructions", "2", "--max_requests", "2",
             "--max_tokens", "96", "--tasks_per_request", "2", "--num_workers", "1", "--output", str(out),
             "--no_progress", "--request_timeout", "300", "--summary_json", str(summary)],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stderr
        print(result.stdout)  # the embedded 135M model rarely writes usable JSON: any counts are fine
        assert "requests" in result.stdout and "unparseable replies" in result.stdout
        counts = json.loads(summary.read_text())
        assert 1 <= counts["requests"] <= 2 and counts["attempts"] == counts["requests"] and counts["failed"] == 0
        records = json.loads(out.read_text(encoding="utf-8"))
        assert len(records) == counts["kept"] <= 2
        assert all(r["source"] == "self_instruct" and record_problem(r) is None for r in records)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
