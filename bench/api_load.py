"""Load test of ``server.py --api``: N concurrent clients, answered count and latency percentiles.

    python bench/api_load.py --lora_dir out --clients 16 --max_tokens 64          # starts its own server
    python bench/api_load.py --url http://127.0.0.1:8000 --clients 16 --stream    # an already running one
    python bench/api_load.py --lora_dir out --max_batch_size 1 8                 # one server per batch size

Every client sends one ``/v1/chat/completions`` request at the same moment (a barrier); the
report gives how many got a valid answer, the latency percentiles (time to the last byte;
with ``--stream`` also time to the first content chunk) and the total tokens per second.
Only the standard library is used on the client side.
"""

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
QUESTIONS = ["Tom has 3 apples and buys 5 more. How many apples does he have?", "Name three colours.",
             "What is the capital of France?", "Write one sentence about the sea.",
             "How many legs do 3 cats have?", "Translate 'good morning' to French."]


def percentile(values, p):
    values = sorted(values)
    k = (len(values) - 1) * p / 100
    lo, hi = int(k), min(int(k) + 1, len(values) - 1)
    return values[lo] + (values[hi] - values[lo]) * (k - lo)


def one_request(url, i, args, barrier, results, key):
    body = {"messages": [{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]}], "max_tokens": args.max_tokens,
            "temperature": 0, "stream": args.stream}
    if args.stream:
        body["stream_options"] = {"include_usage": True}
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {key}"} if key else {})}
    request = urllib.request.Request(f"{url}/v1/chat/completions", json.dumps(body).encode(), headers)
    barrier.wait()
    start = time.perf_counter()
    first, tokens, ok = None, 0, False
    try:
        with urllib.request.urlopen(request, timeout=args.timeout) as response:
            if args.stream:
                for line in response:
                    line = line.decode().strip()
                    if line == "data: [DONE]":
                        ok = True
                    elif line.startswith("data: "):
                        chunk = json.loads(line[6:])
                        if chunk.get("usage"):
                            tokens = chunk["usage"]["completion_tokens"]
                        if first is None and chunk.get("choices") and chunk["choices"][0]["delta"].get("content"):
                            first = time.perf_counter() - start
            else:
                answer = json.loads(response.read())
                ok = bool(answer["choices"]) and "content" in answer["choices"][0]["message"]
                tokens = answer["usage"]["completion_tokens"]
    except Exception as e:  # noqa: BLE001 - counted as unanswered
        results[i] = {"ok": False, "error": repr(e)}
        return
    results[i] = {"ok": ok, "latency": time.perf_counter() - start, "first": first, "tokens": tokens}


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(args, max_batch_size=None):
    port = free_port()
    cmd = [sys.executable, str(ROOT / "server.py"), "--api", "--port", str(port)]
    cmd += ["--max_batch_size", str(max_batch_size)] if max_batch_size else []
    cmd += ["--lora_dir", args.lora_dir] if args.lora_dir else []
    cmd += ["--model_name_or_path", args.model_name_or_path] if args.model_name_or_path else []
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1")})
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        if proc.poll() is not None:
            sys.exit(f"server exited: {proc.stderr.read()[-2000:]}")
        try:
            urllib.request.urlopen(f"{url}/v1/models", timeout=1)
            return proc, url
        except OSError:
            time.sleep(0.5)
    proc.terminate()
    sys.exit("server did not start within 5 minutes")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", help="a running server (default: start server.py on a free loopback port)")
    parser.add_argument("--lora_dir", help="fine-tune to serve when starting the server")
    parser.add_argument("--model_name_or_path", help="model to serve when starting the server")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--max_tokens", type=int, default=64)
    parser.add_argument("--stream", action="store_true", help="stream the answers (SSE)")
    parser.add_argument("--timeout", type=float, default=1800)
    parser.add_argument("--api_key", default=os.environ.get("ALPACA_COT_API_KEY"))
    parser.add_argument("--max_batch_size", type=int, nargs="+", default=[None],
                        help="server.py --max_batch_size; several values: one server and one report each")
    args = parser.parse_args(argv)
    if args.url and args.max_batch_size != [None]:
        parser.error("--max_batch_size needs a server started here (no --url)")
    return [load(args, size) for size in args.max_batch_size]


def load(args, max_batch_size):
    """Start a server (unless --url), send the clients' requests at once, print and return the report."""
    proc, url = (None, args.url.rstrip("/")) if args.url else start_server(args, max_batch_size)
    try:
        results = [None] * args.clients
        barrier = threading.Barrier(args.clients)
        threads = [threading.Thread(target=one_request, args=(url, i, args, barrier, results, args.api_key))
                   for i in range(args.clients)]
        started = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - started
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=30)
    answered = [r for r in results if r and r["ok"]]
    report = {"max_batch_size": max_batch_size or "server default", "clients": args.clients,
              "answered": len(answered), "stream": args.stream,
              "max_tokens": args.max_tokens, "wall_s": round(wall, 2),
              "tokens_per_s": round(sum(r["tokens"] for r in answered) / wall, 2)}
    if answered:
        latencies = [r["latency"] for r in answered]
        report.update({f"latency_p{p}_s": round(percentile(latencies, p), 2) for p in (50, 90, 99)},
                      latency_max_s=round(max(latencies), 2), latency_mean_s=round(statistics.mean(latencies), 2))
        firsts = [r["first"] for r in answered if r["first"] is not None]
        if firsts:
            report.update({f"first_token_p{p}_s": round(percentile(firsts, p), 2) for p in (50, 90)})
    errors = [r["error"] for r in results if r and not r["ok"] and "error" in r]
    if errors:
        report["first_error"] = errors[0]
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
