"""lm-evaluation-harness itself against `server.py --api` on the embedded model, offline: our own two
tasks in lm-eval's YAML format (tests/fixtures/lm_eval/), scored as evaluate.py scores the same items.

- alpaca_cot_mc (multiple choice by log-likelihood, lm-eval's local-completions model: token ids,
  echo, logprobs): its accuracy equals `evaluate.py --task multiple_choice --choice_target letter`,
  and so does every option's log-likelihood, up to one constant per question (lm-eval moves the
  prompt's final newline into the continuation, so it adds log p("\\n") to every option alike);
- alpaca_cot_arith (generation through local-chat-completions, the server applying the template):
  its greedy replies equal `evaluate.py --task cot_math`'s on the same problems.
"""

import glob
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

import evaluate
from net import free_port

pytest.importorskip("lm_eval", reason="needs lm-eval (requirements-dev.txt)")
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
TASKS = ROOT / "tests" / "fixtures" / "lm_eval"
MODEL = "smollm2-135m-instruct"


@pytest.fixture(scope="module")
def server(default_model_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("lm_eval")
    port, log = free_port(), open(folder / "server.log", "w+")
    proc = subprocess.Popen([sys.executable, "server.py", "--api", "--model_name_or_path", default_model_dir,
                             "--port", str(port), "--served_model_name", MODEL],
                            cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    url = f"http://127.0.0.1:{port}/v1"
    try:
        for _ in range(240):
            assert proc.poll() is None, (folder / "server.log").read_text()[-3000:]
            try:
                if httpx.get(f"{url}/models").status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.5)
        yield url, folder
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


def lm_eval(folder: Path, task: str, model: str, model_args: str, *extra: str) -> tuple[dict, list[dict]]:
    """Run the lm-eval CLI; its results and logged samples."""
    out = folder / task
    command = [sys.executable, "-m", "lm_eval", "run", "--model", model, "--model_args", model_args,
               "--tasks", task, "--include_path", str(TASKS), "--output_path", str(out), "--log_samples", *extra]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
                               "OPENAI_API_KEY": "none"})
    assert done.returncode == 0, done.stderr[-4000:]
    (results,) = glob.glob(str(out / "**" / "results_*.json"), recursive=True)
    (samples,) = glob.glob(str(out / "**" / f"samples_{task}_*.jsonl"), recursive=True)
    return json.loads(Path(results).read_text())["results"][task], \
        [json.loads(line) for line in Path(samples).read_text().splitlines()]


def test_lm_eval_multiple_choice_equals_evaluate_py(server, default_model_dir, tmp_path):
    url, folder = server
    results, samples = lm_eval(folder, "alpaca_cot_mc", "local-completions",
                               f"model={MODEL},base_url={url}/completions,tokenizer={default_model_dir},"
                               "tokenizer_backend=huggingface,max_retries=1")
    summary = evaluate.main(["--task", "multiple_choice", "--data", str(TASKS / "mc_items.jsonl"),
                             "--choice_target", "letter", "--model_name_or_path", default_model_dir,
                             "--output_dir", str(tmp_path / "mc")])
    assert summary["n"] == len(samples) == 8
    assert abs(results["acc,none"] - summary["score"]) < 1e-9
    ours = [json.loads(line) for line in (tmp_path / "mc" / "results.jsonl").read_text().splitlines()]
    worst = 0.0
    for sample in samples:
        row = ours[sample["doc_id"]]
        theirs = [float(r[0]) for r in sample["filtered_resps"]]
        mine = [row["option_scores"][letter]["logprob"] for letter in "ABCD"]
        shift = theirs[0] - mine[0]
        assert shift <= 1e-6  # log p("\n") after "### Response:", the same for every option
        worst = max(worst, *(abs(t - m - shift) for t, m in zip(theirs, mine)))
        assert "ABCD"[max(range(4), key=theirs.__getitem__)] == row["prediction"]
    assert worst < 1e-4
    print(f"lm-eval acc {results['acc,none']:.4f}, evaluate.py {summary['score']:.4f}, "
          f"largest log-likelihood difference after the per-question shift {worst:.2e}")


def test_lm_eval_generation_equals_evaluate_py(server, default_model_dir, tmp_path):
    url, folder = server
    results, samples = lm_eval(folder, "alpaca_cot_arith", "local-chat-completions",
                               f"model={MODEL},base_url={url}/chat/completions,max_retries=1",
                               "--apply_chat_template")
    summary = evaluate.main(["--task", "cot_math", "--data", str(TASKS / "arith_items.jsonl"),
                             "--max_new_tokens", "48", "--model_name_or_path", default_model_dir,
                             "--output_dir", str(tmp_path / "arith")])
    ours = [json.loads(line) for line in (tmp_path / "arith" / "results.jsonl").read_text().splitlines()]
    assert summary["n"] == len(samples) == 4
    for sample in samples:
        assert sample["resps"][0][0] == ours[sample["doc_id"]]["output"]
    print(f"lm-eval exact_match {results['exact_match,last_number']:.2f}, evaluate.py cot_math {summary['score']:.2f}")
