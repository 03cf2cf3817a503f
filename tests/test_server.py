"""server.py --api: OpenAI-shaped answers and SSE streams, 4xx for bad requests, 16 concurrent
requests all answered, the API key enforced. One server (a tiny fine-tune) serves the module."""

import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from alpaca_cot.api_schema import Message, chat_record
from alpaca_cot.cli_args import DataArguments, FinetuneArguments, ModelArguments, PeftArguments
from alpaca_cot.train import run
from net import free_port

ROOT = Path(__file__).resolve().parents[1]
KEY = "test-key-123"
AUTH = {"Authorization": f"Bearer {KEY}"}
HELLO = [{"role": "user", "content": "Say hello."}]


@pytest.fixture(scope="module")
def fine_tune(tiny_llama_dir, tmp_path_factory):
    """A one-step LoRA fine-tune of the tiny model (its output directory)."""
    folder = tmp_path_factory.mktemp("api")
    (folder / "data.json").write_text(json.dumps([{"instruction": "Say hi.", "input": "", "output": "hi"}] * 4))
    out = folder / "out"
    run(ModelArguments(model_type="llama", model_name_or_path=tiny_llama_dir),
        DataArguments(data=[str(folder / "data.json")], cutoff_len=64), PeftArguments(),
        FinetuneArguments(output_dir=str(out), max_steps=1, save_steps=1000))
    return out


@pytest.fixture(scope="module")
def api(fine_tune):
    out, folder = fine_tune, fine_tune.parent
    port, log = free_port(), open(folder / "server.log", "w+")
    proc = subprocess.Popen([sys.executable, str(ROOT / "server.py"), "--lora_dir", str(out), "--api", "--port",
                             str(port), "--api_key", KEY, "--max_new_tokens", "8",
                             # the original's penalties: without them the tiny random model's greedy reply is blank
                             "--generation_preset", "original"],
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
    b'{"messages": [{"role": "user", "content": "x"}], "n": 17}',
    b'{"messages": [{"role": "user", "content": "x"}], "top_logprobs": 2}',
    b'{"messages": [{"role": "user", "content": "x"}], "logprobs": true, "top_logprobs": 21}',
    b'{"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}, '
    b'{"role": "assistant", "content": "z"}, {"role": "user", "content": "x"}]}',
    b'{"messages": [{"role": "user", "content": "x"}], "tools": []}',
    b'{"messages": [{"role": "user", "content": "x"}], "stop": ["a", "b", "c", "d", "e"]}',
    b'{"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}]}',
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
    assert chat_record(messages) == ({"instruction": "How are you?", "input": "", "history": [["Hi", "Hello!"]],
                                      "system": "Be brief."}, 0)


def test_empty_or_missing_replies_leave_their_turn_out_as_on_every_chat_surface():
    def record(*turns):
        return chat_record([Message(role=role, content=text) for role, text in turns])

    kept = ({"instruction": "Now?", "input": "", "history": [["Hi", "Hello!"]]}, 2)
    assert record(("user", "Hi"), ("assistant", "Hello!"), ("user", "Stopped?"), ("assistant", " "),
                  ("user", "Unanswered?"), ("user", "Now?")) == kept
    assert record(("user", "Hi"), ("assistant", "Hello!"), ("user", "x"), ("assistant", None), ("user", "Now?"))[1] == 1


def test_the_api_history_rule_in_the_served_prompt(api):
    url, log = api
    alone = chat(url, temperature=0, max_tokens=1).json()["usage"]["prompt_tokens"]
    for earlier in ([{"role": "user", "content": "Tell me a long story."}, {"role": "assistant", "content": ""}],
                    [{"role": "user", "content": "Tell me a long story."}]):
        answer = chat(url, temperature=0, max_tokens=1, messages=[*earlier, *HELLO]).json()
        assert answer["usage"]["prompt_tokens"] == alone
    assert "1 turn(s) with an empty or missing assistant reply left out" in log.read_text()


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


@pytest.fixture(scope="module")
def served_model(fine_tune):
    """The fine-tune loaded here as the server loads it (base + adapter), and a map from token bytes to ids."""
    from alpaca_cot.infer import load_generator
    from alpaca_cot.scoring import token_bytes

    generator = load_generator(str(fine_tune))
    tokenizer = generator.tokenizer
    ids_of = {token_bytes(tokenizer, i): i for i in range(len(tokenizer))}
    return generator, ids_of


def direct_logprobs(model, ids: list[int]):
    """log p(ids[t] | ids[:t]) for every t >= 1, and each position's distribution, from a plain forward pass."""
    import torch

    with torch.inference_mode():
        logprobs = model(input_ids=torch.tensor([ids])).logits[0].float().log_softmax(-1)
    return [logprobs[t - 1, ids[t]].item() for t in range(1, len(ids))], logprobs


def test_n_choices_each_with_a_seed_derived_from_the_request(api):
    url, _ = api
    body = {"temperature": 1.5, "seed": 7, "max_tokens": 6}
    three = chat(url, n=3, **body).json()
    assert [c["index"] for c in three["choices"]] == [0, 1, 2]
    texts = [c["message"]["content"] for c in three["choices"]]
    assert texts == [c["message"]["content"] for c in chat(url, n=3, **body).json()["choices"]]  # reproducible
    assert texts[0] == chat(url, n=1, **body).json()["choices"][0]["message"]["content"]  # choice 0: the seed itself
    assert len(set(texts)) > 1  # the others have seeds of their own
    assert three["usage"]["completion_tokens"] <= 18
    events = [json.loads(e) for e in sse_events(url, n=3, **body)[:-1]]
    streamed = ["".join(e["choices"][0]["delta"].get("content", "") for e in events if e["choices"][0]["index"] == j)
                for j in range(3)]
    assert streamed == texts
    greedy = chat(url, n=2, temperature=0).json()["choices"]
    assert greedy[0]["message"] == greedy[1]["message"]


def test_chat_logprobs_are_the_fine_tunes_under_its_template(api, served_model):
    url, _ = api
    generator, ids_of = served_model
    answer = chat(url, temperature=0, max_tokens=6, logprobs=True, top_logprobs=3).json()
    (choice,) = answer["choices"]
    content = choice["logprobs"]["content"]
    assert len(content) == answer["usage"]["completion_tokens"] > 0
    reply = [ids_of[bytes(entry["bytes"])] for entry in content]
    assert bytes(b for entry in content for b in entry["bytes"]).decode() == choice["message"]["content"]
    prompt = generator.prompt_ids([{"instruction": "Say hello.", "input": ""}])[0]  # the template's prompt
    expected, dist = direct_logprobs(generator.model, prompt + reply)
    for t, entry in enumerate(content):  # the model's own distribution (the repetition penalty only picks)
        assert abs(entry["logprob"] - expected[len(prompt) - 1 + t]) < 1e-4
        tops = dist[len(prompt) - 1 + t].topk(3)
        assert [ids_of[bytes(e["bytes"])] for e in entry["top_logprobs"]] == tops.indices.tolist()
        assert max(abs(e["logprob"] - v) for e, v in zip(entry["top_logprobs"], tops.values.tolist())) < 1e-4
    plain = chat(url, temperature=0, max_tokens=6).json()["choices"][0]
    assert plain["logprobs"] is None and plain["message"] == choice["message"]
    events = [json.loads(e) for e in sse_events(url, temperature=0, max_tokens=6, logprobs=True, top_logprobs=3)[:-1]]
    streamed = [entry for e in events if e["choices"] and e["choices"][0].get("logprobs")
                for entry in e["choices"][0]["logprobs"]["content"]]
    assert streamed == content


def completion(url, **body):
    response = httpx.post(f"{url}/v1/completions", json=body, headers=AUTH, timeout=120)
    assert response.status_code == 200, response.text
    return response.json()


def test_completions_echo_and_logprobs_score_the_raw_prompt(api, served_model):
    url, _ = api
    generator, ids_of = served_model
    text = "The cat sat on the mat."
    scored = completion(url, prompt=text, max_tokens=0, echo=True, logprobs=2)
    (choice,) = scored["choices"]
    assert choice["text"] == text and choice["finish_reason"] == "length" and scored["object"] == "text_completion"
    lp = choice["logprobs"]
    ids = generator.tokenizer(text)["input_ids"]  # no template: the prompt as it is
    assert [ids_of[t.encode()] for t in lp["tokens"]] == ids and lp["token_logprobs"][0] is None
    expected, _ = direct_logprobs(generator.model, ids)
    assert max(abs(a - b) for a, b in zip(lp["token_logprobs"][1:], expected)) < 1e-4
    assert all(len(top) in (2, 3) and lp["tokens"][i + 1] in top for i, top in enumerate(lp["top_logprobs"][1:]))
    assert lp["text_offset"][0] == 0 and "".join(lp["tokens"]) == text
    assert scored["usage"] == {"prompt_tokens": len(ids), "completion_tokens": 0, "total_tokens": len(ids)}

    # as lm-eval's local-completions asks: token ids, echo, one new token, logprobs 1
    asked = completion(url, prompt=[ids], max_tokens=1, echo=True, logprobs=1, temperature=0, seed=1234)
    lp1 = asked["choices"][0]["logprobs"]
    assert len(lp1["tokens"]) == len(ids) + 1
    assert max(abs(a - b) for a, b in zip(lp1["token_logprobs"][1:len(ids)], expected)) < 1e-4

    plain = completion(url, prompt=text, max_tokens=3, temperature=0, repetition_penalty=1.0, logprobs=1)
    chosen = plain["choices"][0]["logprobs"]
    assert plain["choices"][0]["text"] == "".join(chosen["tokens"])  # not stripped: blanks too
    assert all(max(top.values()) == lp for top, lp in zip(chosen["top_logprobs"], chosen["token_logprobs"]))  # greedy
    greedy = completion(url, prompt=text, max_tokens=5, temperature=0)["choices"][0]["text"]
    assert greedy and not greedy.startswith(text)  # no echo: the new text only, no template
    two = completion(url, prompt=[text, "Once upon a time"], n=2, max_tokens=5, temperature=0)
    assert [c["index"] for c in two["choices"]] == [0, 1, 2, 3] and two["choices"][1]["text"] == greedy
    with httpx.stream("POST", f"{url}/v1/completions", headers=AUTH, timeout=120,
                      json={"prompt": text, "max_tokens": 5, "temperature": 0, "stream": True, "echo": True}) as r:
        events = [e[len("data: "):] for e in "".join(r.iter_text()).strip().split("\n\n")]
    assert events[-1] == "[DONE]"
    assert "".join(json.loads(e)["choices"][0]["text"] for e in events[:-1]) == text + greedy


@pytest.mark.parametrize("body", [
    {"prompt": ""}, {"prompt": []}, {"prompt": [10 ** 9]}, {"prompt": "x", "best_of": 3},
    {"prompt": "x", "logprobs": 21},
    {"prompt": "x", "suffix": "y"}, {"prompt": "x", "max_tokens": -1}, {"prompt": "x", "n": 0},
])
def test_bad_completion_requests_get_a_400(api, body):
    url, _ = api
    response = httpx.post(f"{url}/v1/completions", json=body, headers=AUTH)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["message"]


def test_the_openai_client_drives_every_route(api):
    from openai import OpenAI

    url, _ = api
    client = OpenAI(base_url=f"{url}/v1", api_key=KEY, max_retries=0)
    chat_answer = client.chat.completions.create(model="out", messages=HELLO, n=2, seed=3, temperature=1.0,
                                                 max_tokens=4, logprobs=True, top_logprobs=2)
    assert len(chat_answer.choices) == 2 and all(c.logprobs.content for c in chat_answer.choices)
    assert all(len(t.top_logprobs) == 2 for c in chat_answer.choices for t in c.logprobs.content)
    streamed = "".join(chunk.choices[0].delta.content or "" for chunk in client.chat.completions.create(
        model="out", messages=HELLO, temperature=0, max_tokens=4, stream=True) if chunk.choices)
    assert streamed == client.chat.completions.create(model="out", messages=HELLO, temperature=0,
                                                      max_tokens=4).choices[0].message.content
    scored = client.completions.create(model="out", prompt="Hello there", max_tokens=0, echo=True, logprobs=1)
    assert scored.choices[0].text == "Hello there" and scored.choices[0].logprobs.token_logprobs[0] is None
    assert [m.id for m in client.models.list().data] == ["out"]


def test_a_completion_that_ends_at_eos_keeps_the_eos_token_for_echo_scoring(served_model, monkeypatch):
    """lm-eval asks echo + max_tokens 1 and drops the last token as the generated one: when the model's
    next token is EOS (a fine-tune that answers "B" and stops), EOS must be that last token."""
    from fastapi.testclient import TestClient

    from alpaca_cot.api import create_app
    from alpaca_cot.cli_args import GenerationArguments

    generator, _ = served_model

    def ends_at_once(record, kwargs, stats=None, stop=None, server=None, seed=None, prompt=None, use_template=True):
        stats.update(prompt_tokens=len(prompt), completion_tokens=0, token_ids=[], finish_reason="stop")
        yield from ()  # EOS first: no text

    monkeypatch.setattr(generator, "stream", ends_at_once)
    client = TestClient(create_app(generator, GenerationArguments(), "m", max_batch_size=1))
    text = "The cat sat on the mat."
    body = client.post("/v1/completions", json={"prompt": text, "max_tokens": 1, "echo": True, "logprobs": 1}).json()
    lp = body["choices"][0]["logprobs"]
    ids = generator.tokenizer(text)["input_ids"] + [generator.tokenizer.eos_token_id]
    expected, _ = direct_logprobs(generator.model, ids)
    assert body["choices"][0]["text"] == text and lp["tokens"][-1] == generator.tokenizer.eos_token
    assert len(lp["token_logprobs"]) == len(ids)
    assert max(abs(a - b) for a, b in zip(lp["token_logprobs"][1:], expected)) < 1e-4
    assert body["usage"]["completion_tokens"] == 1
