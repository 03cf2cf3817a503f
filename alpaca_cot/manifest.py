"""What reproducing one run of a study needs: versions, data digests, the resolved settings, the commit.

Each run folder of a study holds ``manifest.json``:

- ``command``: the command that re-runs this cell and seed alone (into a fresh folder, then
  compares the numbers with these);
- ``versions``: Python, the libraries that decide the numbers, the platform and CPU threads;
- ``data``: the SHA-256 of every file the training and evaluation data resolve to;
- ``config``: the full resolved settings (training flags after learning-rate search and
  parameter matching, evaluation flags, the study's own keys);
- ``git``: the project's commit and whether the working tree had changes (None outside git).
"""

from __future__ import annotations

import json
import platform
import subprocess
from pathlib import Path

from .metadata import atomic_write_text

PACKAGES = ("torch", "transformers", "peft", "accelerate", "datasets", "tokenizers", "numpy", "scipy",
            "safetensors", "bitsandbytes")
ROOT = Path(__file__).resolve().parents[1]


def versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version(), "platform": platform.platform()}
    for name in PACKAGES:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    try:
        import torch

        out["torch_threads"] = torch.get_num_threads()
    except ImportError:
        pass
    return out


def git_state(root: Path = ROOT) -> dict | None:
    """``{"commit", "dirty"}`` of the project's checkout, or None when it is not a git checkout."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
        if commit.returncode:
            return None
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                                capture_output=True, text=True, timeout=30)
        return {"commit": commit.stdout.strip(), "dirty": bool(status.stdout.strip())}
    except (OSError, subprocess.SubprocessError):
        return None


def data_files(specs) -> list[Path]:
    """The files behind data specs: registry names (with mixtures), files, folders of evaluation files."""
    from .data.loading import parse_data_spec, resolve_files
    from .data.schema import DataError

    files: list[Path] = []
    for spec in [specs] if isinstance(specs, str) else specs or []:
        path = Path(spec)
        if path.is_dir():
            files += sorted(p for p in path.rglob("*") if p.is_file())
            continue
        try:
            files += [Path(f) for f in resolve_files(parse_data_spec(spec)[0])]
        except DataError:
            continue  # reported by the run itself
    return files


def digests(specs) -> dict[str, str]:
    from .datacache import file_digest

    return {str(f): file_digest(f).hex() for f in data_files(specs)}


def write_manifest(folder: Path, command: str, config: dict, train: dict | None, evaluate: dict) -> dict:
    """Write ``folder/manifest.json`` and return it."""
    def as_list(value, default):
        return list(default) if value is None else [value] if isinstance(value, str) else list(value)

    train = train or {}
    specs = as_list(train.get("data"), ["demo"]) + as_list(train.get("decontaminate"), [])
    specs += [s for flags in evaluate.values() for s in as_list(flags.get("data"), ["demo_test"])]
    manifest = {"command": command, "versions": versions(), "git": git_state(),
                "data": digests(specs), "config": {"train": train or None, "evaluate": evaluate, "study": config}}
    atomic_write_text(folder / "manifest.json", json.dumps(manifest, indent=1, ensure_ascii=False, default=str))
    return manifest
