"""Fetch already-unified datasets of the registry from the original project's Hugging Face dataset.

    python data/download.py alpaca belle cot          # or a mixture: alpaca-belle-cot
    python data/download.py xp3 --dry_run             # show what would be fetched, and where
    python data/download.py --list                    # names with a known hub file

Files come from https://huggingface.co/datasets/QingyiSi/Alpaca-CoT and land where the
registry (data/datasets.json) expects them: data/<path in that repository>. Needs internet;
with HF_HUB_OFFLINE=1 or no network it stops with a message saying what to fetch elsewhere.
"""

from __future__ import annotations

import argparse
import sys
import zipfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from alpaca_cot.data.loading import data_dir, load_registry  # noqa: E402
from alpaca_cot.data.registry import HUB_REPO, HUB_REPO_TYPE, HubFile, hub_plan  # noqa: E402
from alpaca_cot.data.schema import DataError  # noqa: E402


class DownloadError(RuntimeError):
    pass


def _offline_message(item: HubFile, why: str) -> str:
    url = f"https://huggingface.co/datasets/{HUB_REPO}/" + (
        f"tree/main/{item.hub_path.split('*')[0].rstrip('/')}" if item.is_pattern else f"resolve/main/{item.hub_path}")
    return (f"cannot download {item.hub_path!r} (dataset {item.dataset}) from the Hugging Face Hub "
            f"dataset {HUB_REPO}: {why.rstrip('.')}.\n"
            f"On a machine with internet run: python data/download.py {item.dataset}\n"
            f"or fetch {url} by hand and place "
            + (f"the files under {str(item.target).split('*')[0]}" if item.is_pattern else f"it at {item.target}"))


def fetch(item: HubFile, root: Path, revision: str | None = None) -> list[Path]:
    """Download one hub file (or every file matching a glob) under ``root``; extract a .zip."""
    from huggingface_hub import constants, hf_hub_download, snapshot_download

    if constants.HF_HUB_OFFLINE:  # snapshot_download would quietly return the local folder
        raise DownloadError(_offline_message(item, "offline mode is on (HF_HUB_OFFLINE=1)"))
    try:
        if item.is_pattern:
            snapshot_download(repo_id=HUB_REPO, repo_type=HUB_REPO_TYPE, allow_patterns=[item.hub_path],
                              local_dir=root, revision=revision)
            paths = sorted(p for p in root.glob(item.hub_path) if p.is_file())
        else:
            paths = [Path(hf_hub_download(repo_id=HUB_REPO, repo_type=HUB_REPO_TYPE, filename=item.hub_path,
                                          local_dir=root, revision=revision))]
    except Exception as e:  # huggingface_hub raises many types (offline, HTTP, connection); all mean "not fetched"
        raise DownloadError(_offline_message(item, f"{type(e).__name__}: {e}")) from e
    if item.is_archive:
        target = item.extract_to
        with zipfile.ZipFile(paths[0]) as z:
            z.extractall(target)
        paths = [target]
    if not paths:
        raise DownloadError(f"no file on the hub matched {item.hub_path!r} (dataset {item.dataset})")
    return paths


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("names", nargs="*", metavar="NAME", help="registry names (mixtures expand to their parts)")
    p.add_argument("--data_dir", "--data-dir", type=Path, default=None,
                   help="where files land (default: the registry's folder, data/)")
    p.add_argument("--revision", default=None, help="hub revision (branch, tag or commit) to fetch")
    p.add_argument("--dry_run", "--dry-run", action="store_true", help="print the plan, fetch nothing")
    p.add_argument("--list", action="store_true", help="list the names that have hub files")
    args = p.parse_args(argv)
    registry = load_registry()
    if args.list:
        print("\n".join(n for n in sorted(registry) if registry[n].get("hub_files") or "mixture" in registry[n]))
        return 0
    if not args.names:
        p.error("name at least one dataset (see --list)")
    root = args.data_dir or data_dir()
    try:
        plan = hub_plan(args.names, registry, root)
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    for item in plan:
        where = item.extract_to if item.is_archive else item.target
        print(f"{item.dataset}: {HUB_REPO}/{item.hub_path} -> {where}")
        if args.dry_run:
            continue
        try:
            fetch(item, root, args.revision)
        except DownloadError as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
