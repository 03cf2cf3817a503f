"""Write a merged (or full) fine-tune as a GGUF file for llama.cpp and Ollama: ``merge.py --gguf``.

The file follows llama.cpp's own conversion (``convert_hf_to_gguf.py``), written here with the
``gguf`` library it publishes (``GGUFWriter``, ``TensorNameMap``, ``SpecialVocab``, ``quants``):

- tensors renamed to llama.cpp's names (``blk.N.attn_q.weight``, ...) by ``gguf.TensorNameMap``;
  LLaMA's query and key rows re-ordered for llama.cpp's rotary layout (``permute_qk``); Gemma 3's
  norm weights stored as ``1 + w`` (llama.cpp multiplies by the stored weight, transformers by
  ``1 + w``); a tied output head stored once, as the embedding;
- 2-D weights in the requested type (``f16``, ``bf16``, ``q8_0``: 8-bit blocks of 32 with one
  fp16 scale); 1-D tensors (norms, biases) stay float32, as llama.cpp keeps them;
- hyper-parameters under ``{arch}.*`` keys, ``general.*`` keys (name, type, file type), and the
  tokenizer the fine-tune was trained with: tokens, token types, merges (byte-level BPE, llama.cpp's
  ``gpt2`` model) or scores (byte-fallback BPE converted from SentencePiece, ``llama``), its
  pre-tokenizer's llama.cpp name, special token ids and whether BOS is added;
- ``tokenizer.chat_template``: our training template as Jinja (``alpaca_cot/export_templates.py``).

Only what both llama.cpp and transformers' GGUF loader read the same way is written; a model
using anything else (rope scaling, attention biases on LLaMA, another Gemma 3 layer pattern, an
unknown pre-tokenizer, ...) is refused with the reason, never exported approximately. The
round trip (``AutoModelForCausalLM.from_pretrained(dir, gguf_file=...)``) is tested in
``tests/test_gguf.py``.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

logger = logging.getLogger(__name__)

GGUF_TYPES = ("f16", "bf16", "q8_0")


class GgufExportError(ValueError):
    """A model, tokenizer or template that cannot be written as a faithful GGUF."""


def _llama_unsupported(config) -> str | None:
    if _rope_scaled(config):
        return "rope scaling (llama.cpp needs extra keys/tensors for it that are not written here)"
    if getattr(config, "attention_bias", False) or getattr(config, "mlp_bias", False):
        return "attention or MLP biases (transformers' GGUF loader drops them for llama)"
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    if head_dim * config.num_attention_heads != config.hidden_size:
        return "a head size other than hidden_size / heads (the GGUF round trip would lose it)"
    return None


def _qwen2_unsupported(config) -> str | None:
    if _rope_scaled(config):
        return "rope scaling"
    if getattr(config, "use_sliding_window", False):
        return "sliding-window attention"
    return None


def _gemma3_unsupported(config) -> str | None:
    if _rope_scaled(config):
        return "rope scaling (Gemma 3 4B and larger scale their global rope; not written here)"
    head_dim = config.head_dim
    if getattr(config, "query_pre_attn_scalar", head_dim) != head_dim or head_dim != 256:
        # llama.cpp scales queries by head_dim^-1/2; transformers' GGUF loader assumes 256 (its default)
        return f"query_pre_attn_scalar {config.query_pre_attn_scalar} / head_dim {head_dim} (both must be 256)"
    expected = ["full_attention" if (i + 1) % 6 == 0 else "sliding_attention"
                for i in range(config.num_hidden_layers)]
    if list(getattr(config, "layer_types", expected)) != expected:
        return "a sliding/full attention layer pattern other than every 6th layer full (llama.cpp's for Gemma 3)"
    if _rope_params(config, "sliding_attention").get("rope_theta", 10000.0) != 10000.0:
        return "a local rope base other than 10000 (llama.cpp's for Gemma 3)"
    if getattr(config, "attn_logit_softcapping", None) or getattr(config, "final_logit_softcapping", None):
        return "logit soft-capping"
    return None


def _rope_params(config, layer_kind: str = "full_attention") -> dict:
    """transformers 5's ``rope_parameters`` (rope_type, rope_theta, ...), for one kind of layer where
    they differ per kind (Gemma 3: full and sliding attention)."""
    params = getattr(config, "rope_parameters", None) or {}
    if not isinstance(params, dict):
        return {}
    return params.get(layer_kind, {}) if isinstance(params.get(layer_kind), dict) else params


def _rope_scaled(config) -> bool:
    kinds = set(getattr(config, "layer_types", None) or ["full_attention"])
    return any(_rope_params(config, kind).get("rope_type", "default") != "default" for kind in kinds)


def _rope_theta(config) -> float:
    return float(_rope_params(config).get("rope_theta", getattr(config, "rope_theta", 10000.0)))


def _common_params(w, config) -> None:
    w.add_context_length(config.max_position_embeddings)
    w.add_embedding_length(config.hidden_size)
    w.add_block_count(config.num_hidden_layers)
    w.add_feed_forward_length(config.intermediate_size)
    w.add_head_count(config.num_attention_heads)
    w.add_head_count_kv(config.num_key_value_heads)
    w.add_rope_freq_base(_rope_theta(config))
    w.add_layer_norm_rms_eps(config.rms_norm_eps)
    w.add_vocab_size(config.vocab_size)


def _llama_params(w, config) -> None:
    _common_params(w, config)
    w.add_rope_dimension_count(config.hidden_size // config.num_attention_heads)


def _gemma3_params(w, config) -> None:
    _common_params(w, config)
    w.add_key_length(config.head_dim)
    w.add_value_length(config.head_dim)
    w.add_sliding_window(config.sliding_window)


@dataclass(frozen=True)
class GgufFamily:
    """How one transformers ``model_type`` is written.

    Attributes:
        arch: llama.cpp's architecture (``gguf.MODEL_ARCH`` member name).
        unsupported: ``config -> reason`` it cannot be written faithfully, or None.
        params: writes the ``{arch}.*`` hyper-parameters.
        permute_qk: re-order query/key rows for llama.cpp's interleaved rotary embedding (LLaMA
            uses it; Qwen2 and Gemma 3 use the same split-halves layout as transformers).
        norm_shift: added to every ``*norm.weight`` (Gemma's RMSNorm multiplies by ``1 + w``).
    """

    arch: str
    unsupported: Callable
    params: Callable
    permute_qk: bool = False
    norm_shift: float = 0.0


GGUF_FAMILIES = {
    "llama": GgufFamily("LLAMA", _llama_unsupported, _llama_params, permute_qk=True),
    "qwen2": GgufFamily("QWEN2", _qwen2_unsupported, _common_params),
    "gemma3_text": GgufFamily("GEMMA3", _gemma3_unsupported, _gemma3_params, norm_shift=1.0),
}


def permute_qk(weight: np.ndarray, n_head: int) -> np.ndarray:
    """Query/key rows from transformers' rotary layout to llama.cpp's.

    transformers rotates dimension ``i`` of a head with dimension ``i + d/2`` (split halves);
    llama.cpp's LLaMA rotates ``2i`` with ``2i + 1`` (adjacent pairs). Row ``h*d + 2i`` of the
    result is row ``h*d + i`` of ``weight`` and row ``h*d + 2i + 1`` is ``h*d + i + d/2``; ``n_head``
    is the number of heads the rows belong to (key/value heads for the key projection). Works for
    weights ``[rows, in]`` and biases ``[rows]``.
    """
    rows = weight.shape[0]
    half = rows // n_head // 2
    return weight.reshape(n_head, 2, half, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


# ---------------------------------------------------------------- tensors


def _encode(data: np.ndarray, kind: str):
    """(array to write, raw GGML type or None) for a float32 tensor in ``kind``."""
    import gguf

    if data.ndim < 2:
        return data.astype(np.float32), None
    if kind == "f16":
        return data.astype(np.float16), None
    if kind == "bf16":
        return gguf.quants.quantize(data, gguf.GGMLQuantizationType.BF16), gguf.GGMLQuantizationType.BF16
    if data.shape[-1] % 32:  # q8_0 blocks of 32 along a row; llama.cpp falls back to f16 here too
        return data.astype(np.float16), None
    return gguf.quants.quantize(data, gguf.GGMLQuantizationType.Q8_0), gguf.GGMLQuantizationType.Q8_0


def _write_tensors(w, model, family: GgufFamily, kind: str) -> int:
    import gguf

    config = model.config
    names = gguf.get_tensor_name_map(getattr(gguf.MODEL_ARCH, family.arch), config.num_hidden_layers)
    tied = bool(getattr(config, "tie_word_embeddings", False))
    count = 0
    for hf_name, tensor in model.state_dict().items():
        if tied and hf_name == "lm_head.weight":
            continue
        if "rotary_emb" in hf_name:
            continue
        name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise GgufExportError(f"no llama.cpp name for tensor {hf_name} of a {config.model_type} model")
        data = tensor.detach().float().cpu().numpy()
        if family.permute_qk and (".q_proj." in hf_name or ".k_proj." in hf_name):
            heads = config.num_attention_heads if ".q_proj." in hf_name else config.num_key_value_heads
            data = permute_qk(data, heads)
        if family.norm_shift and hf_name.endswith("norm.weight"):
            data = data + family.norm_shift
        array, raw = _encode(data, kind)
        w.add_tensor(name, array, raw_dtype=raw)
        count += 1
    return count


# ---------------------------------------------------------------- tokenizer


def _pre_tokenizer_name(tokenizer_json: dict) -> str:
    """llama.cpp's ``tokenizer.ggml.pre`` for a byte-level BPE tokenizer, read off its pre-tokenizer.

    Only layouts whose llama.cpp splitting is known to equal transformers' are named: a bare
    ``ByteLevel`` with its regex is GPT-2's (``gpt-2``). Anything else is refused: llama.cpp would
    split text differently from training.
    """
    pre = tokenizer_json.get("pre_tokenizer") or {}
    if pre.get("type") == "ByteLevel" and pre.get("use_regex", True) and not pre.get("add_prefix_space"):
        return "gpt-2"
    if pre.get("type") == "Sequence":
        steps = pre.get("pretokenizers", [])
        kinds = [s.get("type") for s in steps]
        if kinds == ["Split", "ByteLevel"] and not steps[1].get("use_regex", True):
            from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX as QWEN2

            if steps[0].get("pattern", {}).get("Regex") == QWEN2:
                return "qwen2"
    raise GgufExportError(f"the tokenizer's pre-tokenizer ({json.dumps(pre)[:200]}) has no known llama.cpp "
                          "counterpart: llama.cpp would split text differently from training")


def _write_tokenizer(w, tokenizer, model_dir: Path, vocab_size: int, add_bos: bool) -> str:
    """Tokens, types, merges or scores, special ids; returns llama.cpp's tokenizer model name."""
    import gguf

    path = Path(model_dir) / "tokenizer.json"
    if not path.exists():
        raise GgufExportError(f"{model_dir} has no tokenizer.json (a fast tokenizer is needed)")
    spec = json.loads(path.read_text(encoding="utf-8"))
    model = spec.get("model", {})
    if model.get("type") != "BPE":
        raise GgufExportError(f"a {model.get('type')} tokenizer is not written as GGUF here (BPE only)")
    special = {t.content for t in tokenizer.added_tokens_decoder.values() if t.special}
    added = {t.content for t in tokenizer.added_tokens_decoder.values()}
    if model.get("byte_fallback"):  # SentencePiece converted to BPE (Llama 2, Gemma): llama.cpp's "llama"
        vocab = gguf.LlamaHfVocab(Path(model_dir))
        tokens, scores, types = zip(*vocab.all_tokens())
        tokens, scores, types = list(tokens), list(scores), list(types)
        kind = "llama"
        w.add_tokenizer_model(kind)
        w.add_tokenizer_pre("default")
        prepend = json.dumps(spec.get("normalizer") or {}).find('"Prepend"') >= 0 or \
            json.dumps(spec.get("pre_tokenizer") or {}).find('"prepend_scheme": "always"') >= 0
        w.add_add_space_prefix(prepend)
    else:
        if (spec.get("decoder") or {}).get("type") != "ByteLevel":
            raise GgufExportError("a BPE tokenizer without byte-level decoding or byte fallback is not supported")
        kind = "gpt2"
        tokens = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
        types = [gguf.TokenType.CONTROL if t in special else gguf.TokenType.USER_DEFINED if t in added
                 else gguf.TokenType.NORMAL for t in tokens]
        scores = None
        w.add_tokenizer_model(kind)
        w.add_tokenizer_pre(_pre_tokenizer_name(spec))
        merges = gguf.SpecialVocab(Path(model_dir), load_merges=True).merges
        if not merges:
            raise GgufExportError("the byte-level BPE tokenizer has no merges")
        w.add_token_merges(merges)
    if len(tokens) > vocab_size:
        raise GgufExportError(f"the tokenizer has {len(tokens)} tokens but the model's embedding only {vocab_size}")
    for i in range(len(tokens), vocab_size):  # embedding rows no token uses (padded vocabularies)
        tokens.append(f"[PAD{i}]")
        types.append(gguf.TokenType.UNUSED)
        if scores is not None:
            scores.append(-1000.0)
    w.add_token_list(tokens)
    w.add_token_types([int(t) for t in types])
    if scores is not None:
        w.add_token_scores(scores)
    for role in ("bos", "eos", "unk", "pad"):
        token_id = getattr(tokenizer, f"{role}_token_id", None)
        if token_id is not None:
            getattr(w, f"add_{role}_token_id")(token_id)
    w.add_add_bos_token(add_bos)
    w.add_add_eos_token(False)
    return kind


# ---------------------------------------------------------------- export


def export_gguf(model_dir: str | os.PathLike, out_path: str | os.PathLike, *, gguf_type: str = "f16",
                template_name: str | None = None, name: str | None = None) -> dict:
    """Write ``model_dir`` (a merged or full checkpoint) to ``out_path`` (GGUF) and ``out_path``'s ``.Modelfile``.

    Args:
        model_dir: a transformers checkpoint folder with ``tokenizer.json`` (``merge.py``'s output).
        out_path: the GGUF file to write (replaced atomically); the Modelfile goes beside it,
            named ``<out_path>.Modelfile`` with ``FROM ./<file name>``.
        gguf_type: ``f16``, ``bf16`` or ``q8_0`` for 2-D weights.
        template_name: the training template (default: the folder's ``alpaca_cot.json``, else the family's).
        name: ``general.name`` (default: the folder's name).

    Returns:
        ``{"gguf": path, "modelfile": path or None, "modelfile_error": reason or None,
        "tensors": n, "tokenizer": "gpt2" | "llama", "template_warning": text or None}``. The
        Modelfile is skipped (with the reason, also logged as a warning) when the template
        cannot be written in Go's syntax; ``template_warning`` (also logged) says when whole
        conversations tokenize differently in one piece (``export_templates.check_tokens``).

    Raises:
        GgufExportError: an unsupported family, configuration, tokenizer or template, or an
            unknown ``gguf_type``, before anything is written.
    """
    import gguf
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from .cli_args import GenerationArguments
    from .export_templates import TemplateExportError, check_tokens, jinja_template, modelfile
    from .metadata import read_metadata
    from .models import MODEL_REGISTRY, detect_model_type
    from .templates import get_template
    from .tokenize import special_prefix

    if gguf_type not in GGUF_TYPES:
        raise GgufExportError(f"--gguf_type must be one of {', '.join(GGUF_TYPES)}, got {gguf_type!r}")
    model_dir, out_path = Path(model_dir), Path(out_path)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    config = model.config
    family = GGUF_FAMILIES.get(config.model_type)
    if family is None:
        raise GgufExportError(f"a {config.model_type} model cannot be written as GGUF here; supported: "
                              f"{', '.join(sorted(GGUF_FAMILIES))} (llama.cpp's llama, qwen2 and gemma3)")
    reason = family.unsupported(config)
    if reason:
        raise GgufExportError(f"this {config.model_type} model uses {reason}: its GGUF would not compute the same")
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    meta = read_metadata(model_dir) if (model_dir / "alpaca_cot.json").exists() else {}
    if template_name is None:
        template_name = meta.get("template") or MODEL_REGISTRY[detect_model_type(config)].template
    template = get_template(template_name)
    prefix = special_prefix(tokenizer)
    if prefix not in ([], [tokenizer.bos_token_id]):
        raise GgufExportError(f"the tokenizer adds {prefix} before every text; only a BOS token can be expressed")
    try:
        chat_template = jinja_template(template, tokenizer, bos=bool(prefix))
    except TemplateExportError as e:
        raise GgufExportError(f"template {template_name!r}: {e}") from e
    wrong_prompts, wrong_history = check_tokens(template, tokenizer, chat_template)
    if wrong_prompts:
        raise GgufExportError(f"the chat template written for {template_name!r} does not give the training prompt "
                              f"tokens (e.g. for {wrong_prompts[0]!r}); please report this")
    template_warning = None
    if wrong_history:
        template_warning = (f"template {template_name!r}: earlier turns of a conversation tokenize differently "
                            "when rendered in one piece (a prompt ending in a space joins the reply's first word); "
                            "single requests are exact")
        logger.warning("%s", template_warning)
    try:
        ollama, ollama_error = modelfile(out_path.name, template, tokenizer, GenerationArguments()), None
    except TemplateExportError as e:
        ollama, ollama_error = None, f"no Ollama Modelfile: template {template_name!r}: {e}"
        logger.warning("%s", ollama_error)

    out_path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out_path.parent, prefix=f".{out_path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        w = gguf.GGUFWriter(tmp, gguf.MODEL_ARCH_NAMES[getattr(gguf.MODEL_ARCH, family.arch)])
        w.add_type("model")
        w.add_name(name or model_dir.name)
        file_type = {"f16": gguf.LlamaFileType.MOSTLY_F16, "bf16": gguf.LlamaFileType.MOSTLY_BF16,
                     "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[gguf_type]
        w.add_file_type(int(file_type))
        if gguf_type == "q8_0":
            w.add_quantization_version(gguf.GGML_QUANT_VERSION)
        family.params(w, config)
        kind = _write_tokenizer(w, tokenizer, model_dir, config.vocab_size, add_bos=bool(prefix))
        w.add_chat_template(chat_template)
        count = _write_tensors(w, model, family, gguf_type)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
        os.replace(tmp, out_path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    written = None
    if ollama is not None:
        written = out_path.with_name(out_path.name + ".Modelfile")
        written.write_text(ollama, encoding="utf-8")
    logger.info("wrote %s (%s, %d tensors, %s tokenizer, chat template of %r)%s", out_path, gguf_type, count, kind,
                template_name, f" and {written}" if written else "")
    return {"gguf": out_path, "modelfile": written, "modelfile_error": ollama_error, "tensors": count,
            "tokenizer": kind, "template_warning": template_warning}


def export_fine_tune(lora_dir: str | os.PathLike, gguf_path: str | os.PathLike, *, gguf_type: str = "f16",
                     merged_dir: str | os.PathLike | None = None, model_name_or_path: str | None = None,
                     model_type: str | None = None, dtype: str = "auto", overwrite: bool = False) -> dict:
    """``merge.py --gguf``: the fine-tune in ``lora_dir`` as a GGUF file (and Modelfile).

    An adapter is merged first (``alpaca_cot.merge.merge``, with its refusals: prompt-learning and
    bottleneck adapters cannot be merged), into ``merged_dir`` when given, else into a temporary
    folder; a full fine-tune or merged folder is written as it is. ``dtype`` is ``merge``'s for
    ``merged_dir`` (a temporary merge is fp32: the GGUF types are made from it). Returns
    ``export_gguf``'s dict.
    Raises GgufExportError (or the merge's MergeError) with the reason; an existing ``gguf_path``
    needs ``overwrite``.
    """
    from .merge import merge

    lora, gguf_path = Path(lora_dir), Path(gguf_path)
    if gguf_path.exists() and not overwrite:
        raise GgufExportError(f"--gguf {gguf_path} exists; pass --overwrite to replace it")
    if gguf_type not in GGUF_TYPES:
        raise GgufExportError(f"--gguf_type must be one of {', '.join(GGUF_TYPES)}, got {gguf_type!r}")
    if not (lora / "adapter_config.json").exists():
        if merged_dir:
            raise GgufExportError(f"{lora_dir} holds a full model already (no adapter to merge); drop --merged_dir")
        return export_gguf(lora, gguf_path, gguf_type=gguf_type)
    if merged_dir:
        target = merge(str(lora), str(merged_dir), model_name_or_path=model_name_or_path, model_type=model_type,
                       dtype=dtype, overwrite=overwrite)
        return export_gguf(target, gguf_path, gguf_type=gguf_type, name=lora.name)
    gguf_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=gguf_path.parent, prefix=f".{gguf_path.name}.merge-") as tmp:
        target = merge(str(lora), str(Path(tmp) / "merged"), model_name_or_path=model_name_or_path,
                       model_type=model_type, dtype="fp32")
        return export_gguf(target, gguf_path, gguf_type=gguf_type, name=lora.name)
