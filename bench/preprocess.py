"""Preprocessing benchmark: a data file read, validated, split, tokenized and cached; then the second run.

    python bench/preprocess.py                                   # 50,000 records, workers 1 and 2, two rounds
    python bench/preprocess.py --records 2000 --workers 1 --repeats 1        # a quick check
    python bench/make_big_data.py --records 1000000 --output /tmp/big_1m.jsonl
    python bench/preprocess.py --data_file /tmp/big_1m.jsonl --workers 2 --repeats 1 --memory_limit_gb 10
    python bench/preprocess.py --data_file /tmp/big_100k.jsonl --root /tmp/before   # another checkout's code

Every measurement runs in a fresh process with its own empty cache folder ("cold"), then again
in another fresh process on that folder ("warm"), the way a user's first and second
``uniform_finetune.py`` runs would. The time is that of ``alpaca_cot.train.prepare_data``, the
data path of a fine-tune: from the data file to the tokenized datasets; process start-up
(imports, loading the tokenizer) is reported apart. Memory is the peak resident set size of
the whole process tree (the process and every tokenizer worker it starts), sampled every
0.1 s with psutil; ``--memory_limit_gb`` kills the tree above that size (reported as
"killed"), so a run that would exhaust the machine stops first.

Without ``--data_file`` the records are ``bench/make_big_data.py``'s (seeded, half English,
half Chinese), written to a temporary folder.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def worker(args) -> None:
    """One measurement in this (fresh) process; prints a JSON line."""
    sys.path.insert(0, args.root)
    os.environ["ALPACA_COT_HOME"] = args.cache_home
    t0 = time.perf_counter()
    from alpaca_cot.cli_args import DataArguments
    from alpaca_cot.loader import load_tokenizer, resolve_spec
    from alpaca_cot.templates import get_template
    from alpaca_cot.train import prepare_data

    import datasets  # noqa: F401 - imported by every fine-tune anyway: start-up, not preprocessing

    spec, path = resolve_spec(None, None)
    load_tokenizer(path, spec)  # once, so the start-up time holds the tokenizer's first load
    data_args = DataArguments(data=[args.data_file], cutoff_len=args.cutoff_len, val_set_size=args.val_set_size,
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
    import pyarrow.compute as pc

    tokens = pc.sum(pc.list_value_length(dataset.data.column("input_ids"))).as_py()  # no Python lists
    print(json.dumps({"hit": hit, "seconds": t2 - t1, "tokenizer_seconds": t1 - t0, "samples": len(dataset),
                      "truncated": report.truncated, "tokens": tokens}))


def tree_memory(proc) -> tuple[int, int]:
    """(RSS, PSS) in bytes summed over ``proc`` and all its descendants (processes that are gone count 0).

    The RSS sum counts pages that forked workers share with their parent once per process (what
    ``top`` adds up, and what the issue's 18 GB figure was); PSS splits each shared page between
    its sharers, so its sum is the memory the tree really holds.
    """
    import psutil

    rss = pss = 0
    try:
        procs = [proc] + proc.children(recursive=True)
    except psutil.Error:
        return 0, 0
    for p in procs:
        try:
            info = p.memory_full_info()
            rss += info.rss
            pss += getattr(info, "pss", info.rss)
        except psutil.Error:
            pass
    return rss, pss


def run_watched(cmd: list[str], env: dict, limit_bytes: float) -> tuple[subprocess.CompletedProcess, tuple, bool]:
    """Run ``cmd``; returns (result, (peak tree RSS, peak tree PSS) in bytes, killed: the RSS sum passed
    ``limit_bytes``)."""
    import psutil

    popen = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                             start_new_session=True)
    proc = psutil.Process(popen.pid)
    peak, peak_pss, killed = 0, 0, [False]
    out: dict = {}
    reader = threading.Thread(target=lambda: out.update(zip(("stdout", "stderr"), popen.communicate())))
    reader.start()
    while reader.is_alive():
        rss, pss = tree_memory(proc)
        peak, peak_pss = max(peak, rss), max(peak_pss, pss)
        if rss > limit_bytes and not killed[0]:
            killed[0] = True
            os.killpg(popen.pid, 9)  # the session we started: the worker and its children
        time.sleep(0.1)
    reader.join()
    return subprocess.CompletedProcess(cmd, popen.returncode, out.get("stdout", ""), out.get("stderr", "")), (peak, peak_pss), killed[0]


def measure(data_file: str, workers: int, args) -> dict:
    with tempfile.TemporaryDirectory(prefix="alpaca_cot_pre_") as home:
        models = Path(home) / "models"
        models.mkdir()
        real = Path(os.environ.get("ALPACA_COT_HOME", Path.home() / ".cache" / "alpaca_cot")) / "models"
        for child in real.iterdir() if real.exists() else []:  # the converted model, not its tokenized data
            (models / child.name).symlink_to(child)
        runs = []
        for phase in ("cold", "warm"):
            cmd = [sys.executable, __file__, "--worker", "--data_file", data_file, "--cache_home", home,
                   "--workers", str(workers), "--cutoff_len", str(args.cutoff_len), "--root", args.root,
                   "--val_set_size", str(args.val_set_size)]
            env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
                   "HF_DATASETS_CACHE": str(Path(home) / "hf_datasets")}
            started = time.perf_counter()
            out, peak, killed = run_watched(cmd, env, args.memory_limit_gb * 2**30)
            wall = time.perf_counter() - started
            if killed:
                return {"workers": workers, "killed": True, "phase": phase, "peak_gb": peak[0] / 2**30,
                        "peak_pss_gb": peak[1] / 2**30, "wall": wall}
            if out.returncode:
                raise SystemExit(out.stderr[-3000:])
            run = json.loads(out.stdout.strip().splitlines()[-1])
            run.update(peak_gb=peak[0] / 2**30, peak_pss_gb=peak[1] / 2**30, wall=wall)
            runs.append(run)
    assert not runs[0]["hit"] and runs[1]["hit"], runs
    return {"workers": workers, "killed": False, "cold": runs[0]["seconds"], "warm": runs[1]["seconds"],
            "cold_peak_gb": runs[0]["peak_gb"], "warm_peak_gb": runs[1]["peak_gb"],
            "cold_peak_pss_gb": runs[0]["peak_pss_gb"], "warm_peak_pss_gb": runs[1]["peak_pss_gb"],
            "cold_wall": runs[0]["wall"], "warm_wall": runs[1]["wall"],
            "startup": runs[1]["tokenizer_seconds"], "samples": runs[0]["samples"], "tokens": runs[0]["tokens"],
            "truncated": runs[0]["truncated"]}


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=50_000, help="generated records (without --data_file)")
    parser.add_argument("--data_file", help="an existing data file to measure instead")
    parser.add_argument("--root", default=str(ROOT), help="repository whose alpaca_cot package is measured")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="--preprocessing_num_workers values")
    parser.add_argument("--repeats", type=int, default=2, help="rounds over the worker values (alternating)")
    parser.add_argument("--cutoff_len", type=int, default=512)
    parser.add_argument("--val_set_size", type=float, default=0)
    parser.add_argument("--memory_limit_gb", type=float, default=10.0, help="kill a run whose process tree exceeds this")
    parser.add_argument("--json_out", help="append the results as JSON lines to this file")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--cache_home", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.root = str(Path(args.root).resolve())
    if args.worker:
        args.workers = args.workers[0]
        return worker(args)

    with tempfile.TemporaryDirectory(prefix="alpaca_cot_pre_data_") as tmp:
        data_file = args.data_file
        if data_file is None:
            sys.path.insert(0, str(ROOT / "bench"))
            from make_big_data import write

            data_file = str(Path(tmp) / "records.jsonl")
            write(Path(data_file), args.records, 0, json_list=False)
        size_mb = os.path.getsize(data_file) / 1e6
        print(f"{data_file} ({size_mb:.0f} MB), code from {args.root}, cutoff_len {args.cutoff_len}, "
              f"{os.cpu_count()} CPUs", flush=True)
        results = []
        for rnd in range(args.repeats):
            for w in args.workers if rnd % 2 == 0 else args.workers[::-1]:
                r = measure(data_file, w, args)
                r.update(data_file=data_file, root=args.root, mb=size_mb)
                results.append(r)
                if args.json_out:
                    with open(args.json_out, "a") as f:
                        f.write(json.dumps(r) + "\n")
                if r["killed"]:
                    print(f"round {rnd + 1} workers {w}: KILLED in the {r['phase']} run at {r['peak_gb']:.1f} GB "
                          f"(PSS {r['peak_pss_gb']:.1f} GB) after {r['wall']:.0f} s", flush=True)
                    continue
                print(f"round {rnd + 1} workers {w}: cold {r['cold']:.2f} s (peak RSS {r['cold_peak_gb']:.2f} GB, "
                      f"PSS {r['cold_peak_pss_gb']:.2f}), warm {r['warm']:.2f} s (peak RSS {r['warm_peak_gb']:.2f} GB, "
                      f"PSS {r['warm_peak_pss_gb']:.2f}); start-up {r['startup']:.2f} s; "
                      f"{r['samples']} samples, {r['tokens']} tokens, {r['truncated']} truncated", flush=True)
    done = [r for r in results if not r["killed"]]
    print("\n| workers | cold s (median, min-max) | warm s | peak RSS (PSS) cold / warm GB |\n|---|---|---|---|")
    for w in args.workers:
        rows = [r for r in done if r["workers"] == w]
        if not rows:
            continue
        cold, warm = [r["cold"] for r in rows], [r["warm"] for r in rows]
        print(f"| {w} | {statistics.median(cold):.2f} ({min(cold):.2f}-{max(cold):.2f}) "
              f"| {statistics.median(warm):.2f} ({min(warm):.2f}-{max(warm):.2f}) "
              f"| {max(r['cold_peak_gb'] for r in rows):.2f} ({max(r['cold_peak_pss_gb'] for r in rows):.2f}) / "
              f"{max(r['warm_peak_gb'] for r in rows):.2f} ({max(r['warm_peak_pss_gb'] for r in rows):.2f}) |")
    return results


if __name__ == "__main__":
    main()
