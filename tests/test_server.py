"""server.py --api: OpenAI-shaped answers and SSE streams, 4xx for bad requests, 16 concurrent
requests all answered, the API key enforced. One server (a tiny fine-tune) serves the module."""

import json
import os
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from alpaca_cot.api import chat_record, Message
from alpaca_cot.cli_args import DataArguments, FinetuneArguments, ModelArguments, PeftArguments
from alpaca_cot.train import run

ROOT = Path(__file__).resolve().parents[1]
KEY = "test-key-123"
AUTH = {"Authorization": f"Bearer {KEY}"}
HELLO = [{"role": "user", "content": "Say hello."}]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def api(tiny_llama_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("api")
    (folder / "data.json").write_text(json.dumps([{"instruction": "Say hi.", "input": "", "output": "hi"}] * 4))
    out = folder / "out"
    run(ModelArguments(model_type="llama", model_name_or_path=tiny_llama_dir),
        DataArguments(data=[str(folder / "data.json")], cutoff_len=64), PeftArguments(),
        FinetuneArguments(output_dir=str(out), max_steps=1, save_steps=1000))
    port, log = free_port(), open(folder / "server.log", "w+")
    proc = subprocess.Popen([sys.executable, str(ROOT / "server.py"), "--lora_dir", str(out), "--api", "--port",
                             str(port), "--api_key", KEY, "--max_new_tokens", "8"],
                            cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(240):
            assert proc.poll() is None, (folder / "server.log").read_text()[-3000:]
            try:
                if httpx.get(f"{url}/v1/models", headers=AUTH).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.5)
        yield url, folder / "server.log"
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


def chat(url, timeout=120, **body):
    return httpx.post(f"{url}/v1/chat/completions", json={"messages": HELLO, **body}, headers=AUTH, timeout=timeout)


def sse_events(url, **body):
    with httpx.stream("POST", f"{url}/v1/chat/completions", json={"messages": HELLO, "stream": True, **body},
                      headers=AUTH, timeout=120) as response:
        assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
        text = "".join(response.iter_text())
    assert text.endswith("\n\n")
    events = text[:-2].split("\n\n")
    assert all(e.startswith("data: ") for e in events)
    return [e[len("data: "):] for e in events]


def test_binds_to_loopback_and_enforces_the_api_key(api):
    url, log = api
    assert f"on http://127.0.0.1:{url.rsplit(':', 1)[1]}/v1 (auth: bearer key)" in log.read_text()
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY}):
        response = httpx.get(f"{url}/v1/models", headers=headers)
        assert response.status_code == 401 and response.json()["error"]["code"] == "invalid_api_key"
    assert httpx.post(f"{url}/v1/chat/completions", json={"messages": HELLO}).status_code == 401
    models = httpx.get(f"{url}/v1/models", headers=AUTH).json()
    assert models["object"] == "list" and models["data"][0]["id"] == "out"


def test_chat_completion_and_its_stream_are_openai_shaped(api):
    url, _ = api
    answer = chat(url, temperature=0).json()
    assert answer["id"].startswith("chatcmpl-") and answer["object"] == "chat.completion" and answer["model"] == "out"
    (choice,) = answer["choices"]
    assert choice["message"]["role"] == "assistant" and isinstance(choice["message"]["content"], str)
    assert choice["finish_reason"] in ("stop", "length")
    usage = answer["usage"]
    assert usage["prompt_tokens"] > 0 and usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]

    events = sse_events(url, temperature=0, stream_options={"include_usage": True})
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"} and len({c["id"] for c in chunks}) == 1
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert chunks[-2]["choices"][0]["finish_reason"] == choice["finish_reason"] and chunks[-1]["usage"] == usage
    streamed = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert streamed == choice["message"]["content"]  # greedy: the stream says what the answer said


def test_history_stop_strings_and_generate_endpoint(api):
    url, _ = api
    text = chat(url, temperature=0).json()["choices"][0]["message"]["content"]
    longer = chat(url, temperature=0, messages=[{"role": "system", "content": "Be brief."}, *HELLO,
                                                {"role": "assistant", "content": "Hello!"}, *HELLO]).json()
    assert longer["usage"]["prompt_tokens"] > chat(url, temperature=0).json()["usage"]["prompt_tokens"]
    stop = text[len(text) // 2:len(text) // 2 + 3]
    assert len(stop) == 3
    cut = chat(url, temperature=0, stop=[stop]).json()["choices"][0]
    assert cut["message"]["content"] == text[:text.index(stop)] and cut["finish_reason"] == "stop"
    streamed = [json.loads(e) for e in sse_events(url, temperature=0, stop=stop)[:-1]]
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in streamed) == text[:text.index(stop)]
    result = httpx.post(f"{url}/generate", json={"instruction": "Say hello.", "input": "to Bob", "temperature": 0},
                        headers=AUTH, timeout=120).json()
    assert isinstance(result["response"], str) and result["model"] == "out"


@pytest.mark.parametrize("body", [
    b'{"messages": [', b"[]", b"{}", b'{"messages": []}', b'{"messages": [{"role": "robot", "content": "x"}]}',
    b'{"messages": [{"role": "assistant", "content": "x"}]}', b'{"messages": [{"role": "user"}]}',
    b'{"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]}',
    b'{"messages": [{"role": "user", "content": "x"}], "temperature": 3}',
    b'{"messages": [{"role": "user", "content": "x"}], "top_p": 0}',
    b'{"messages": [{"role": "user", "content": "x"}], "max_tokens": 0}',
    b'{"messages": [{"role": "user", "content": "x"}], "max_tokens": 100000000}',
    b'{"messages": [{"role": "user", "content": "x"}], "n": 2}',
    b'{"messages": [{"role": "user", "content": "x"}], "tools": []}',
    b'{"messages": [{"role": "user", "content": "x"}], "stop": ["a", "b", "c", "d", "e"]}',
    b'{"messages": [{"role": "user", "content": "x"}, {"role": "user", "content": "y"}]}',
])
def test_bad_requests_get_a_400_with_a_message(api, body):
    url, _ = api
    response = httpx.post(f"{url}/v1/chat/completions", content=body, headers={**AUTH, "Content-Type":
                                                                               "application/json"})
    assert response.status_code == 400, response.text
    assert response.json()["error"]["message"]


def test_other_bad_requests_and_the_server_survives(api):
    url, _ = api
    assert httpx.post(f"{url}/generate", json={"input": "x"}, headers=AUTH).status_code == 400
    assert httpx.post(f"{url}/generate", json={"instruction": "x", "top_k": -1}, headers=AUTH).status_code == 400
    assert httpx.get(f"{url}/nowhere", headers=AUTH).status_code == 404
    assert httpx.get(f"{url}/v1/chat/completions", headers=AUTH).status_code == 405
    assert chat(url).status_code == 200


def test_sixteen_concurrent_requests_are_all_answered(api):
    url, _ = api

    def one(i):
        if i % 2:
            return chat(url, timeout=300, seed=i).json()["choices"][0]["message"]["content"]
        events = sse_events(url, seed=i)
        assert events[-1] == "[DONE]"
        return "".join(json.loads(e)["choices"][0]["delta"].get("content", "") for e in events[:-1])

    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(one, range(16)))
    assert len(answers) == 16 and all(isinstance(a, str) for a in answers)


def test_messages_become_a_record_with_history():
    messages = [Message(role="system", content="Be brief."), Message(role="user", content="Hi"),
                Message(role="assistant", content="Hello!"),
                Message(role="user", content=[{"type": "text", "text": "How are "}, {"type": "text", "text": "you?"}])]
    assert chat_record(messages) == {"instruction": "How are you?", "input": "", "history": [["Hi", "Hello!"]],
                                     "system": "Be brief."}


def test_concurrent_requests_answer_as_they_would_alone(api):
    url, _ = api
    prompts = [f"Count to {n}." + " Slowly, please." * n for n in range(8)]

    def ask(prompt, **body):
        response = httpx.post(f"{url}/generate", json={"instruction": prompt, **body}, headers=AUTH, timeout=300)
        assert response.status_code == 200, response.text
        return response.json()["response"]

    alone = [ask(p, temperature=0) for p in prompts]
    with ThreadPoolExecutor(8) as pool:
        together = list(pool.map(lambda p: ask(p, temperature=0), prompts))
        seeded = list(pool.map(lambda _: ask(prompts[3], seed=5, temperature=1.5), range(4)))
    assert together == alone  # greedy answers do not depend on what shares the batch
    assert len(set(seeded)) == 1  # nor do seeded samples
