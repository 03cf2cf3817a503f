"""Split the demo training data by language: ``train_en.json`` and ``train_zh.json``.

    python data/demo/split_languages.py          # reads data/demo/train.json, writes both files

A record is Chinese when its instruction contains a CJK character, else English (the demo data
has no mixed records). Order is kept; ``source`` becomes ``demo_en`` / ``demo_zh``, so a run on
both files can report per-source results. Standard library only; the same input always gives
byte-identical files. ``studies/language.yaml`` uses them (English-only against English+Chinese).
"""

import argparse
import json
import os
import re
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
CJK = re.compile("[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")


def split(records: list[dict]) -> dict[str, list[dict]]:
    out = {"en": [], "zh": []}
    for record in records:
        lang = "zh" if CJK.search(record["instruction"]) else "en"
        out[lang].append({**record, "source": f"demo_{lang}"})
    return out


def write(path: Path, records: list[dict]) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(records, f, ensure_ascii=False, indent=1)
        f.write("\n")
    os.replace(tmp, path)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", default=str(HERE / "train.json"))
    parser.add_argument("--out_dir", default=str(HERE))
    args = parser.parse_args(argv)
    parts = split(json.loads(Path(args.input).read_text(encoding="utf-8")))
    for lang, records in parts.items():
        write(Path(args.out_dir) / f"train_{lang}.json", records)
        print(f"train_{lang}.json: {len(records)} records")


if __name__ == "__main__":
    main()
