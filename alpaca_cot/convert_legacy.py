"""Convert a checkpoint of one of the original's older families to a native transformers folder.

    python -m alpaca_cot.convert_legacy SRC DST [--model_type chatglm3] [--overwrite]

SRC is a published checkpoint folder in its legacy layout (ChatGLM-6B, ChatGLM2-6B, ChatGLM3-6B,
Baichuan/Baichuan2, InternLM v1, MOSS: config.json, weights, vocabulary files; their remote code is
not run). DST receives the native folder: it loads with ``AutoModelForCausalLM.from_pretrained``
(after ``import alpaca_cot.legacy`` for ChatGLM-6B and the 13B Baichuans, whose modules are ours).
Every script does this conversion by itself, once, when given such a folder; this command is for
users who want the native folder.
"""

from __future__ import annotations

import argparse
import logging
import sys


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m alpaca_cot.convert_legacy", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("src", help="the legacy checkpoint folder")
    parser.add_argument("dst", help="the native folder to write (must be empty or absent)")
    parser.add_argument("--model_type", default=None,
                        help="the family, when detection cannot tell (e.g. chatglm3 for a ChatGLM folder without "
                             "its tokenizer files)")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty DST")
    args = parser.parse_args(argv)
    logging.basicConfig(format="%(levelname)s %(name)s: %(message)s", level=logging.INFO)
    from .legacy.convert import LegacyConversionError, conversion_info, convert_checkpoint

    try:
        out = convert_checkpoint(args.src, args.dst, args.model_type, overwrite=args.overwrite)
    except LegacyConversionError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    info = conversion_info(out)
    print(f"converted {args.src} ({info['family']}) to {info['native_class']}: wrote {out}; {info['tokenizer']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
