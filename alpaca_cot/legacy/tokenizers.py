"""Fast tokenizers built from a legacy checkpoint's own vocabulary files.

``build(family, folder, config)`` is what every ``LegacyFamily.build_tokenizer`` calls. It returns
None when the folder has no vocabulary files (a bare weights folder), else a
``PreTrainedTokenizerFast`` giving the same ids as the family's own tokenizer *as it ran on the
transformers 4.x it was written for* (``tokenizer(text)``, special tokens included):

======== ================= ==================================================================
family   vocabulary        what the family's own code adds (its ``tokenization_*.py``)
======== ================= ==================================================================
chatglm  ``ice_text.model`` text -> ``<n>``/``<|tab|>``/``<|blank_N|>`` before sentencepiece (and
                           back when decoding); ids shifted by ``num_image_tokens`` (20000 in the
                           code, 0 in the final checkpoint's ``tokenizer_config.json``);
                           ``[gMASK] <sop>`` after every text; eos ``<eop>``, pad ``<pad>``
chatglm2 ``tokenizer.model`` ``[MASK] [gMASK] [sMASK] sop eop`` after the pieces; ``[gMASK] sop``
                           before every text; eos ``</s>``, pad = unk ``<unk>``
chatglm3 ``tokenizer.model`` chatglm2's plus ``<|system|> <|user|> <|assistant|> <|observation|>``
baichuan ``tokenizer.model`` bos ``<s>`` only where ``add_bos_token`` (the code's default is True;
                           Baichuan2's config turns it off); eos ``</s>``
internlm ``tokenizer.model`` bos ``<s>`` before every text; eos ``</s>``, pad ``</s>``
moss     ``vocab.json`` +   GPT-2 byte-level BPE (the CodeGen vocabulary, extended); the
         ``merges.txt``    whitespace runs and ``<eoh> <eom> <eot> <eoc> <eor>`` of
                           ``added_tokens.json``; eos ``<eom>``, bos = unk ``<|endoftext|>``
======== ================= ==================================================================

Quirks of transformers 4.x that the ids depend on, kept here on purpose (see the README):

- special tokens typed in a text are split off as one id; one given as a plain string (not an
  ``AddedToken``) also swallows the whitespace on both sides (4.x ``PreTrainedTokenizer.tokenize``);
  MOSS's whitespace-run tokens are plain strings, so a newline before an indented line is dropped.
  The one rule ``tokenizers`` cannot express: where a whitespace run splits into three or more
  such tokens (64+ spaces, 20+ tabs), 4.x drops every second one (each empties its right
  neighbour), while here the first swallows the rest;
- ChatGLM2/3 look a piece's string up in their own special-token table first: a BPE piece spelled
  ``sop``/``eop`` (or a role token) gets the special id;
- ChatGLM2/3 split nothing off (their specials live outside sentencepiece): a typed ``[gMASK]`` is text.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

from .spm import SpmOptions, load_model_proto, spm_tokenizer

logger = logging.getLogger(__name__)

SPECIAL_ATTRS = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")


@dataclass(frozen=True)
class SlowToken:
    """A special token as a 4.x slow tokenizer held it: a plain string strips both sides."""

    content: str
    lstrip: bool = True
    rstrip: bool = True

    def added(self, special: bool = True):
        from tokenizers import AddedToken

        return AddedToken(self.content, lstrip=self.lstrip, rstrip=self.rstrip, normalized=False,
                          single_word=False, special=special)


def _read_json(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8-sig"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: invalid JSON ({e})") from e


def _slow(value, wrap: bool) -> SlowToken | None:
    """``value`` as 4.x held it: a dict is an AddedToken (False/False unless it says otherwise)."""
    if value is None:
        return None
    if isinstance(value, dict):
        return SlowToken(value["content"], bool(value.get("lstrip", False)), bool(value.get("rstrip", False)))
    return SlowToken(str(value), lstrip=not wrap, rstrip=not wrap)


def slow_specials(folder: Path, defaults: dict, wraps: bool = False) -> tuple[dict, dict]:
    """The special tokens a 4.x ``from_pretrained`` ends up with, and the tokenizer config.

    Order as ``PreTrainedTokenizerBase._from_pretrained``: the class defaults, overridden by
    ``tokenizer_config.json`` (then wrapped in ``AddedToken(lstrip=False, rstrip=False)`` when the
    class's ``__init__`` does so: ``wraps``), then set again from ``special_tokens_map.json`` as they
    stand there (a plain string stays plain).

    Returns:
        ``({attribute: SlowToken | list[SlowToken]}, tokenizer_config dict)``.
    """
    config = _read_json(folder / "tokenizer_config.json")
    mapping = _read_json(folder / "special_tokens_map.json")
    out: dict = {}
    for attr in SPECIAL_ATTRS:
        value = config.get(attr, defaults.get(attr))
        if attr in mapping:
            value, wrap = mapping[attr], False
        else:
            wrap = wraps
        token = _slow(value, wrap)
        if token is not None:
            out[attr] = token
    extra = mapping.get("additional_special_tokens", config.get("additional_special_tokens", []))
    if extra:
        out["additional_special_tokens"] = [_slow(v, False) for v in extra]
    return out, config


def _no_split(specials: dict) -> list[SlowToken]:
    """The special tokens in 4.x's ``SPECIAL_TOKENS_ATTRIBUTES`` order (the order new ids are given in)."""
    out: list[SlowToken] = []
    for attr in SPECIAL_ATTRS + ("additional_special_tokens",):
        value = specials.get(attr)
        for token in value if isinstance(value, list) else [value] if value else []:
            if token.content not in {t.content for t in out}:
                out.append(token)
    return out


def _wrap(backend, specials: dict, config: dict, *, split_specials: bool = False, padding_side: str = "right",
          names: dict | None = None, notes: list[str] = ()):
    """``backend`` with the family's special tokens registered, as a transformers fast tokenizer.

    ``split_specials``: the 4.x tokenizer split none of them off a text (ChatGLM2/3): they are
    registered (for ``eos_token_id``, decoding) but typed ones stay text. ``names`` overrides the
    named tokens' strings (``{"pad_token": "<unk>"}``) where the 4.x class hard-coded them.
    """
    from transformers import PreTrainedTokenizerFast

    for token in _no_split(specials):
        backend.add_special_tokens([token.added()])
    named = {attr: specials[attr].content for attr in SPECIAL_ATTRS if attr in specials}
    named.update(names or {})
    extra = [t.content for t in specials.get("additional_special_tokens", [])]
    max_length = config.get("model_max_length")
    kwargs = dict(tokenizer_object=backend, padding_side=padding_side, clean_up_tokenization_spaces=False,
                  split_special_tokens=split_specials, **named)
    if extra:
        kwargs["extra_special_tokens"] = extra
    if isinstance(max_length, int) and max_length < 10**12:
        kwargs["model_max_length"] = max_length
    tokenizer = PreTrainedTokenizerFast(**kwargs)
    for note in notes:
        if note:
            logger.info("tokenizer: %s", note)
    return tokenizer


def _template(backend, before: list[str], after: list[str], pair_after: list[str] = ()) -> None:
    """Ids the family's ``build_inputs_with_special_tokens`` puts around a text (and a second text)."""
    from tokenizers import processors

    ids = {name: backend.token_to_id(name) for name in [*before, *after, *pair_after]}
    missing = [name for name, i in ids.items() if i is None]
    if missing:
        raise ValueError(f"the vocabulary has no {missing}, which the family's tokenizer adds to every text")
    single = " ".join([*before, "$A", *after])
    pair = " ".join([*before, "$A", *after, "$B:1", *pair_after])
    backend.post_processor = processors.TemplateProcessing(single=single, pair=pair,
                                                           special_tokens=list(ids.items()))


def _flag(config: dict, key: str, default: bool) -> bool:
    value = config.get(key, default)
    return bool(default if value is None else value)


# ------------------------------------------------------------------- SentencePiece families


def _chatglm_text_steps(max_blank: int = 80) -> tuple[tuple, tuple]:
    """ChatGLM-6B's ``SPTokenizer._preprocess`` (newline, then tab, then blank runs longest first,
    as its ``str.replace`` loop) as normalizers, and its ``postprocess`` as decoders."""
    from tokenizers import decoders, normalizers

    pre = [normalizers.Replace("\n", "<n>"), normalizers.Replace("\t", "<|tab|>")]
    pre += [normalizers.Replace(" " * n, f"<|blank_{n}|>") for n in range(max_blank, 1, -1)]
    post = [decoders.Replace("<n>", "\n"), decoders.Replace("<|tab|>", "\t")]
    post += [decoders.Replace(f"<|blank_{n}|>", " " * n) for n in range(2, max_blank + 1)]
    return tuple(pre), tuple(post)


def _piece_id(proto, name: str, offset: int = 0) -> int:
    for i, p in enumerate(proto.pieces):
        if p.piece == name:
            return i + offset
    raise ValueError(f"the SentencePiece model has no piece {name!r}")


def build_chatglm(folder: Path, config: dict):
    """ChatGLM-6B (v1) from ``ice_text.model`` (its ``tokenization_chatglm.py``, final 2023 version)."""
    path = folder / "ice_text.model"
    if not path.is_file():
        return None
    from tokenizers import Regex, normalizers

    defaults = {"bos_token": "<sop>", "eos_token": "<eop>", "mask_token": "[MASK]", "pad_token": "<pad>",
                "unk_token": "<unk>"}
    specials, tok_config = slow_specials(folder, defaults)
    offset = int(tok_config.get("num_image_tokens", 20000))
    pre, post = _chatglm_text_steps()
    case = []
    if tok_config.get("remove_space"):  # its preprocess_text: " ".join(text.strip().split())
        case += [normalizers.Replace(Regex(r"\s+"), " "), normalizers.Strip()]
    if tok_config.get("do_lower_case"):
        case.append(normalizers.Lowercase())
    gmask = tok_config.get("gmask_token", "[gMASK]")
    gmask = gmask["content"] if isinstance(gmask, dict) else gmask
    proto = load_model_proto(path)
    # [gMASK] is not a 4.x special token: typed in a text it reaches sentencepiece, which keeps it
    # whole only where the model file marks it user-defined; it keeps its name for the suffix below.
    keep = frozenset(t.content for t in _no_split(specials)) | {gmask}
    options = SpmOptions(preprocess=tuple(case) + pre, postprocess=post, id_offset=offset, keep=keep,
                         silent_control=True)
    backend = spm_tokenizer(proto, options)
    _template(backend, [], [gmask, specials["bos_token"].content], [specials["eos_token"].content])
    return _wrap(backend, specials, tok_config, padding_side="left", notes=options.notes)


def _build_glm(folder: Path, config: dict, extra: tuple[str, ...]):
    path = folder / "tokenizer.model"
    if not path.is_file():
        return None
    proto = load_model_proto(path)
    n = len(proto.pieces)
    options = SpmOptions(extra=tuple((name, n + i) for i, name in enumerate(extra)), alias_extra=True)
    backend = spm_tokenizer(proto, options)
    trainer = proto.trainer_spec
    eos, unk = proto.pieces[trainer.eos_id].piece, proto.pieces[trainer.unk_id].piece
    backend.add_special_tokens([_slow(name, True).added() for name in extra])
    _template(backend, ["[gMASK]", "sop"], [], [eos])
    _, tok_config = slow_specials(folder, {})
    # Its eos/pad/unk are properties hard-coded in the class (eos "</s>" = the model's eos id, pad and
    # unk "<unk>"), never registered with the 4.x base class: nothing is split off a text.
    specials = {"eos_token": SlowToken(eos), "unk_token": SlowToken(unk), "pad_token": SlowToken(unk)}
    return _wrap(backend, specials, tok_config, split_specials=True, padding_side="left", notes=options.notes)


def build_chatglm2(folder: Path, config: dict):
    """ChatGLM2-6B from ``tokenizer.model`` (its ``tokenization_chatglm.py``)."""
    return _build_glm(folder, config, ("[MASK]", "[gMASK]", "[sMASK]", "sop", "eop"))


def build_chatglm3(folder: Path, config: dict):
    """ChatGLM3-6B from ``tokenizer.model`` (its ``tokenization_chatglm.py``, 2023 version)."""
    return _build_glm(folder, config, ("[MASK]", "[gMASK]", "[sMASK]", "sop", "eop", "<|system|>", "<|user|>",
                                       "<|assistant|>", "<|observation|>"))


def _build_llama_like(folder: Path, defaults: dict, wraps: bool, add_bos: bool):
    path = folder / "tokenizer.model"
    if not path.is_file():
        return None
    specials, tok_config = slow_specials(folder, defaults, wraps=wraps)
    proto = load_model_proto(path)
    options = SpmOptions(keep=frozenset(t.content for t in _no_split(specials)))
    backend = spm_tokenizer(proto, options)
    for token in _no_split(specials):
        backend.add_special_tokens([token.added()])
    bos = [specials["bos_token"].content] if _flag(tok_config, "add_bos_token", add_bos) else []
    eos = [specials["eos_token"].content] if _flag(tok_config, "add_eos_token", False) else []
    _template(backend, bos, eos, eos)
    return _wrap(backend, specials, tok_config, notes=options.notes)


def build_baichuan(folder: Path, config: dict):
    """Baichuan / Baichuan2 from ``tokenizer.model`` (their ``tokenization_baichuan.py``).

    The ``baichuan`` template puts the user/assistant ids 195/196 of every published Baichuan chat
    model's ``generation_config.json``; a folder naming others gets a warning saying so."""
    from ..family_templates import BAICHUAN_ASSISTANT_ID, BAICHUAN_USER_ID

    generation = _read_json(folder / "generation_config.json")
    ids = (generation.get("user_token_id", BAICHUAN_USER_ID),
           generation.get("assistant_token_id", BAICHUAN_ASSISTANT_ID))
    if ids != (BAICHUAN_USER_ID, BAICHUAN_ASSISTANT_ID):
        logger.warning("%s: user/assistant token ids %s, but the baichuan template uses %s: its prompts will not "
                       "match this checkpoint's chat format", folder / "generation_config.json", ids,
                       (BAICHUAN_USER_ID, BAICHUAN_ASSISTANT_ID))
    return _build_llama_like(folder, {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"},
                             wraps=True, add_bos=True)


def build_internlm(folder: Path, config: dict):
    """InternLM v1 from ``tokenizer.model`` (its ``tokenization_internlm.py``)."""
    return _build_llama_like(folder, {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
                                      "pad_token": "</s>"}, wraps=False, add_bos=True)


# ------------------------------------------------------------------- MOSS (byte-level BPE)


def build_moss(folder: Path, config: dict):
    """MOSS from ``vocab.json`` + ``merges.txt`` (its ``tokenization_moss.py``: GPT-2's byte-level BPE)."""
    vocab_file, merges_file = folder / "vocab.json", folder / "merges.txt"
    if not (vocab_file.is_file() and merges_file.is_file()):
        return None
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    vocab = _read_json(vocab_file)
    # Its reader: every line but the first (the "#version" header) and the last (empty after the final
    # newline), each split on whitespace.
    lines = merges_file.read_text(encoding="utf-8").split("\n")[1:-1]
    merges = [tuple(line.split()) for line in lines]
    merges = [m for m in merges if len(m) == 2]
    defaults = {"unk_token": "<|endoftext|>", "bos_token": "<|endoftext|>", "eos_token": "<eom>"}
    specials, tok_config = slow_specials(folder, defaults, wraps=True)
    backend = Tokenizer(models.BPE(vocab, merges))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=_flag(tok_config, "add_prefix_space", False))
    backend.decoder = decoders.ByteLevel()
    special_contents = {t.content for t in _no_split(specials)}
    added = _read_json(folder / "added_tokens.json")
    for content, index in sorted(added.items(), key=lambda kv: kv[1]):
        if content in vocab:
            continue
        if index != backend.get_vocab_size():
            raise ValueError(f"{folder / 'added_tokens.json'}: {content!r} has id {index}, but the next free id is "
                             f"{backend.get_vocab_size()} (the 4.x tokenizer refuses such a file too)")
        if content in special_contents:
            token = next(t for t in _no_split(specials) if t.content == content)
            backend.add_special_tokens([token.added()])
        else:  # added as a plain string: split off and, as 4.x did, stripping the whitespace around it
            backend.add_tokens([SlowToken(content).added(special=False)])
    bos = [specials["bos_token"].content] if _flag(tok_config, "add_bos_token", False) else []
    _template(backend, bos, [], bos)
    return _wrap(backend, specials, tok_config)


BUILDERS = {"chatglm": build_chatglm, "chatglm2": build_chatglm2, "chatglm3": build_chatglm3,
            "baichuan": build_baichuan, "internlm": build_internlm, "moss": build_moss}


def build(family: str, folder: str | Path, config: dict):
    """The family's fast tokenizer from ``folder``'s vocabulary files, or None when it has none.

    Raises:
        ValueError: an unknown family, or vocabulary files the family's own tokenizer would refuse too.
    """
    if family not in BUILDERS:
        raise ValueError(f"no tokenizer builder for legacy family {family!r}; known: {', '.join(sorted(BUILDERS))}")
    return BUILDERS[family](Path(folder), config)
