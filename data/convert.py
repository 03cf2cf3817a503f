"""Convert raw files of a public instruction dataset into unified records.

    python data/convert.py --list-formats
    python data/convert.py --describe sharegpt
    python data/convert.py --format sharegpt --input part1.json part2.jsonl.gz --output data/ShareGPT/sharegpt.json
    python data/convert.py --format flan_cot --input gsm8k_train.tsv --validate

Inputs may be JSON (a list, one object per file, or JSON Lines, told apart by the content;
UTF-8 with or without a BOM), CSV/TSV, each optionally gzipped. The output is a JSON list, or
JSONL when its name ends in ".jsonl"; it is written to a temporary file and moved into place,
so it is never left half-written. A malformed record stops the run with FILE: line/record:
problem; ``--skip_invalid`` counts and skips. Every record's ``source`` names the dataset and
the input file it came from (``flan_cot/aqua_train``; ``--dataset`` names the first part,
``--source`` replaces both). Escapes a source is known to leave in its text are decoded (FLAN
CoT's literal \n); ``--unescape`` decodes more, and the summary counts records still holding any.
"""

from __future__ import annotations

import argparse
import gzip
import io
import json
import os
import sys
import tempfile
from collections.abc import Iterable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from alpaca_cot.data.converters import CONVERTERS, ConversionReport, convert_files, get_converter  # noqa: E402
from alpaca_cot.data.converters.base import ESCAPES  # noqa: E402
from alpaca_cot.data.schema import DataError  # noqa: E402


def write_records(path: str | os.PathLike, records: Iterable[dict]) -> int:
    """Write records atomically (temp file + os.replace): JSONL for ``*.jsonl``, else a JSON list.

    A name ending in ``.gz`` is gzip-compressed (``x.jsonl.gz``, ``x.json.gz``).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    compressed = path.name.endswith(".gz")
    jsonl = path.name.removesuffix(".gz").endswith(".jsonl")
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    n = 0
    try:
        raw = os.fdopen(fd, "wb")
        stream = gzip.open(raw, "wb") if compressed else raw
        with raw, stream, io.TextIOWrapper(stream, encoding="utf-8") as f:
            if not jsonl:
                f.write("[")
            for record in records:
                line = json.dumps(record, ensure_ascii=False)
                if jsonl:
                    f.write(line + "\n")
                else:
                    f.write(("\n" if n == 0 else ",\n") + line)
                n += 1
            if not jsonl:
                f.write("\n]\n" if n else "]\n")
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
    return n


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--list-formats", "--list_formats", action="store_true",
                   help="print the source-format names, one per line")
    p.add_argument("--describe", metavar="FORMAT", help="print the raw schema a format assumes")
    p.add_argument("--format", help="source format of the raw files (see --list-formats)")
    p.add_argument("--input", nargs="+", metavar="RAW", help="raw file(s) of that format")
    p.add_argument("--output", help="unified-record file to write (.json list or .jsonl, optionally .gz)")
    p.add_argument("--validate", action="store_true", help="check the inputs, write nothing")
    p.add_argument("--skip_invalid", "--skip-invalid", action="store_true",
                   help="count and skip malformed records instead of stopping")
    p.add_argument("--source", help="value of every record's 'source' (default: DATASET/FILE, the dataset "
                                    "and the input file's name without suffixes, e.g. flan_cot/aqua_train)")
    p.add_argument("--dataset", help="the DATASET part of the default source (default: the format name)")
    p.add_argument("--unescape", nargs="+", default=[], choices=sorted(ESCAPES),
                   help="decode escapes the source text holds beyond the format's own: backslash (\\n, \\t), "
                        "html (&amp; ...), unicode (\\uXXXX); the summary counts records still holding any")
    p.add_argument("--seed", type=int, default=42, help="seed for template choices (flan_cot)")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.list_formats:
        print("\n".join(sorted(CONVERTERS)))
        return 0
    try:
        if args.describe:
            conv = get_converter(args.describe)
            print(f"{conv.name}{' (rows grouped across the file)' if conv.grouped else ''}\n\n{conv.doc}")
            return 0
        if not args.format or not args.input:
            parser.error("--format and --input are required (or --list-formats)")
        if args.validate == bool(args.output):
            parser.error("give either --output FILE or --validate")
        get_converter(args.format)
        report = ConversionReport()
        records = convert_files(args.format, args.input, source=args.source, dataset=args.dataset, seed=args.seed,
                                skip_invalid=args.skip_invalid, report=report, unescape=args.unescape)
        if args.validate:
            for _ in records:
                pass
        else:
            write_records(args.output, records)
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(report.summary("validated" if args.validate else "wrote"))
    if not args.validate:
        print(f"output: {args.output}")
    for message in report.invalid[1:6]:
        print(f"  invalid: {message}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
