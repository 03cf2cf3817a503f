"""Preprocessing benchmark: 50k records read, validated, tokenized and cached; then the cached reload.

    python bench/preprocess.py                      # 50,000 records, workers 1 and 2, two rounds
    python bench/preprocess.py --records 2000 --workers 1 --repeats 1   # a quick check

The records are synthetic but realistic: real instructions drawn (seeded) from the bundled
demo data and, when present, ``../shared/bench/bench512.json`` (English, Chinese,
chain-of-thought; read at run time, never copied), each made unique by a numbered prefix so
no two share a cache entry. Every measurement runs in a fresh process with its own empty
cache folder ("cold"), then again in another fresh process on that folder ("cached"), the
way a user's first and second ``uniform_finetune.py`` runs would. The time is that of
``alpaca_cot.train.prepare_data``, the data path of a fine-tune: from the data file to the
tokenized datasets. Process start-up (imports, loading the tokenizer) is reported apart.
Targets: cold < 30 s, cached < 2 s.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCH512 = ROOT.parent / "shared" / "bench" / "bench512.json"


def make_records(n: int, seed: int = 0) -> list[dict]:
    pool = json.loads((ROOT / "data" / "demo" / "train.json").read_text(encoding="utf-8"))
    if BENCH512.exists():
        pool += json.loads(BENCH512.read_text(encoding="utf-8"))
    rng = random.Random(seed)
    out = []
    for i in range(n):
        r = dict(rng.choice(pool))
        r["instruction"] = f"({i}) {r['instruction']}"
        out.append({k: r[k] for k in ("instruction", "input", "output") if k in r})
    return out


def worker(args) -> None:
    """One measurement in this (fresh) process; prints a JSON line."""
    sys.path.insert(0, str(ROOT))
    os.environ["ALPACA_COT_HOME"] = args.cache_home
    t0 = time.perf_counter()
    from alpaca_cot.cli_args import DataArguments
    from alpaca_cot.loader import load_tokenizer, resolve_spec
    from alpaca_cot.templates import get_template
    from alpaca_cot.train import prepare_data

    import datasets  # noqa: F401 - imported by every fine-tune anyway: start-up, not preprocessing

    spec, path = resolve_spec(None, None)
    load_tokenizer(path, spec)  # once, so the start-up time holds the tokenizer's first load
    data_args = DataArguments(data=[args.data_file], cutoff_len=args.cutoff_len,
                              preprocessing_num_workers=args.workers)
    import logging

    messages = []
    handler = logging.Handler()
    handler.emit = lambda record: messages.append(record.getMessage())
    logging.getLogger("alpaca_cot").addHandler(handler)
    logging.getLogger("alpaca_cot").setLevel(logging.INFO)
    t1 = time.perf_counter()
    _, dataset, _, report = prepare_data(data_args, 42, path, spec, get_template(spec.template))
    t2 = time.perf_counter()
    hit = any("data files unchanged" in m for m in messages)
    tokens = sum(len(x) for x in dataset["input_ids"]) if not hit else None
    print(json.dumps({"hit": hit, "seconds": t2 - t1, "tokenizer_seconds": t1 - t0, "samples": len(dataset),
                      "truncated": report.truncated, "tokens": tokens}))


def measure(data_file: str, workers: int, cutoff_len: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="alpaca_cot_pre_") as home:
        models = Path(home) / "models"
        models.mkdir()
        real = Path(os.environ.get("ALPACA_COT_HOME", Path.home() / ".cache" / "alpaca_cot")) / "models"
        for child in real.iterdir() if real.exists() else []:  # the converted model, not its tokenized data
            (models / child.name).symlink_to(child)
        runs = []
        for _ in ("cold", "cached"):
            cmd = [sys.executable, __file__, "--worker", "--data_file", data_file, "--cache_home", home,
                   "--workers", str(workers), "--cutoff_len", str(cutoff_len)]
            out = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
            if out.returncode:
                raise SystemExit(out.stderr[-3000:])
            runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
    assert not runs[0]["hit"] and runs[1]["hit"], runs
    return {"workers": workers, "cold": runs[0]["seconds"], "cached": runs[1]["seconds"],
            "tokenizer_load": runs[1]["tokenizer_seconds"], "samples": runs[0]["samples"],
            "tokens": runs[0]["tokens"], "truncated": runs[0]["truncated"]}


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=50_000)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="--preprocessing_num_workers values")
    parser.add_argument("--repeats", type=int, default=2, help="rounds over the worker values (alternating)")
    parser.add_argument("--cutoff_len", type=int, default=512)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--data_file", help=argparse.SUPPRESS)
    parser.add_argument("--cache_home", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        args.workers = args.workers[0]
        return worker(args)

    records = make_records(args.records)
    results = []
    with tempfile.TemporaryDirectory(prefix="alpaca_cot_pre_data_") as tmp:
        data_file = str(Path(tmp) / "records.jsonl")
        with open(data_file, "w", encoding="utf-8") as f:
            f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
        size_mb = os.path.getsize(data_file) / 1e6
        print(f"{len(records)} records ({size_mb:.0f} MB JSONL; sources: demo"
              f"{' + bench512' if BENCH512.exists() else ''}), cutoff_len {args.cutoff_len}, "
              f"{os.cpu_count()} CPUs", flush=True)
        for rnd in range(args.repeats):
            for w in args.workers if rnd % 2 == 0 else args.workers[::-1]:
                r = measure(data_file, w, args.cutoff_len)
                results.append(r)
                print(f"round {rnd + 1} workers {w}: cold {r['cold']:.2f} s, cached {r['cached']:.2f} s "
                      f"(start-up {r['tokenizer_load']:.2f} s; {r['samples']} samples, {r['tokens']} tokens, "
                      f"{r['truncated']} truncated)", flush=True)
    print("\n| workers | cold s (median, min-max) | cached s (median, min-max) |\n|---|---|---|")
    for w in args.workers:
        rows = [r for r in results if r["workers"] == w]
        cold, cached = [r["cold"] for r in rows], [r["cached"] for r in rows]
        print(f"| {w} | {statistics.median(cold):.2f} ({min(cold):.2f}-{max(cold):.2f}) "
              f"| {statistics.median(cached):.2f} ({min(cached):.2f}-{max(cached):.2f}) |")
    return results


if __name__ == "__main__":
    main()
