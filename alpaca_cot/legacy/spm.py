"""A SentencePiece model file as a ``tokenizers`` pipeline that gives sentencepiece's own ids.

transformers' converters (``convert_slow_tokenizer``) rebuild a few known SentencePiece tokenizers
(LLaMA, T5, ...) and approximate the rest; the legacy families need the model file's own rules
kept exactly, so this module reads the ``ModelProto`` and maps each rule onto a ``tokenizers``
component (our own code only where the libraries lack the mapping):

- normalization (``normalizer_spec``): the precompiled character map (``normalizers.Precompiled``),
  ``remove_extra_whitespaces`` (strip, collapse runs of spaces), ``add_dummy_prefix`` (a "▁" put in
  front of every text handed to sentencepiece) and ``escape_whitespaces`` (" " -> "▁"), in
  sentencepiece's order (``normalizer.cc``);
- the model: UNIGRAM -> ``models.Unigram`` (Viterbi over the piece scores, as ``unigram_model.cc``);
  BPE -> ``models.BPE`` with one merge per way of splitting a piece into two pieces, ranked by the
  merged piece's score (sentencepiece's BPE merges the adjacent pair whose concatenation is the
  highest-scoring piece, ``bpe_model.cc``); ``byte_fallback`` on both;
- piece types: USER_DEFINED pieces are always one token in sentencepiece; CONTROL, UNKNOWN and
  UNUSED pieces never come out of text. Where ``tokenizers`` would match them anyway (every Unigram
  vocabulary entry is matchable), their vocabulary strings are replaced by aliases that no
  normalized text can contain (a raw space), and the decoder maps the aliases back;
- decoding: "▁" -> " ", byte pieces -> UTF-8, the dummy prefix's space removed, as ``DecodeIds``.

``tests/test_legacy_tokenizers.py`` checks the ids against the sentencepiece processor on trained
models of both types, with and without byte fallback, dummy prefix and user-defined pieces.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass, field

logger = logging.getLogger(__name__)

# ModelProto.SentencePiece.Type and TrainerSpec.ModelType values (sentencepiece_model.proto).
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6
UNIGRAM, BPE = 1, 2
SPACE = "\u2581"  # sentencepiece's visible space
ALIAS = "\x01 "  # prefix of the vocabulary aliases of pieces text must never reach (see the module doc)


def load_model_proto(path: str | os.PathLike):
    """The ``ModelProto`` of a SentencePiece ``.model`` file.

    Raises:
        ValueError: the file is not a SentencePiece model (the message names it).
    """
    from transformers.convert_slow_tokenizer import import_protobuf

    proto = import_protobuf().ModelProto()
    try:
        proto.ParseFromString(open(path, "rb").read())
    except Exception as e:  # noqa: BLE001 - protobuf raises its own DecodeError
        raise ValueError(f"{path}: not a SentencePiece model file ({e})") from e
    if not proto.pieces:
        raise ValueError(f"{path}: a SentencePiece model without pieces")
    return proto


@dataclass
class SpmOptions:
    """What a family adds around the SentencePiece model.

    Attributes:
        preprocess: ``tokenizers`` normalizers run on the raw text first (ChatGLM-6B's newline,
            tab and blank tokens), before sentencepiece's own normalization.
        postprocess: decoders run on the decoded text last (ChatGLM-6B's tokens back to whitespace).
        id_offset: ids below it are not sentencepiece's (ChatGLM-6B's image tokens); every piece id
            is shifted by it; the placeholders are named ``placeholder.format(i)``.
        placeholder: name pattern of the ids below ``id_offset``.
        keep: piece strings that stay matchable under their own name even though sentencepiece
            never matches them in text: the caller registers them as added tokens that the
            tokenizer splits off before the model sees the text (the 4.x tokenizers' special tokens).
        extra: tokens after the sentencepiece vocabulary (ChatGLM2/3's ``[gMASK]``, ``sop``, role
            tokens): ``(name, id)``, ids contiguous from the piece count (plus ``id_offset``).
        alias_extra: a NORMAL piece spelled like an ``extra`` token gets that token's id, as
            ChatGLM2/3's ``convert_token_to_id`` does (it looks the piece string up in its own
            table first); the piece's own id is kept under an alias.
        silent_control: CONTROL pieces kept under their name decode to nothing too (where the 4.x
            tokenizer decodes everything through sentencepiece: ChatGLM-6B's ``[gMASK]``, ``<sop>``).
    """

    preprocess: tuple = ()
    postprocess: tuple = ()
    id_offset: int = 0
    placeholder: str = "<image_{}>"
    keep: frozenset[str] = frozenset()
    extra: tuple[tuple[str, int], ...] = ()
    alias_extra: bool = False
    silent_control: bool = False
    notes: list[str] = field(default_factory=list)


def _normalizers(proto, options: SpmOptions):
    from tokenizers import Regex, normalizers

    spec = proto.normalizer_spec
    if proto.trainer_spec.treat_whitespace_as_suffix:
        raise ValueError("SentencePiece models with treat_whitespace_as_suffix are not supported")
    steps = list(options.preprocess)
    if spec.precompiled_charsmap:
        steps.append(normalizers.Precompiled(spec.precompiled_charsmap))
    if spec.remove_extra_whitespaces:  # sentencepiece: leading and trailing spaces go, runs become one
        steps += [normalizers.Replace(Regex(r"\A +| +\z"), ""), normalizers.Replace(Regex(" {2,}"), " ")]
    space = SPACE if spec.escape_whitespaces else " "
    if spec.add_dummy_prefix:  # Prepend leaves an empty text empty, as sentencepiece does
        steps.append(normalizers.Prepend(space))
    if spec.escape_whitespaces:
        steps.append(normalizers.Replace(" ", SPACE))
    return normalizers.Sequence(steps) if steps else None


def _bpe_merges(pieces: list[tuple[str, float, int]]) -> list[tuple[str, str]]:
    """Every (left, right) whose concatenation is a mergeable piece, best merged piece first.

    sentencepiece merges the adjacent symbols whose concatenation is the highest-scoring NORMAL
    piece, leftmost first among equal scores; ``tokenizers`` merges the lowest-ranked pair, leftmost
    first: ranking the pairs by the merged piece's score gives the same order (our own code:
    ``tokenizers`` has no reader for sentencepiece's BPE files)."""
    symbols = {p for p, _, t in pieces if t in (NORMAL, USER_DEFINED)}
    ranked = []
    for index, (piece, score, kind) in enumerate(pieces):
        if kind != NORMAL or len(piece) < 2:
            continue
        for cut in range(1, len(piece)):
            left, right = piece[:cut], piece[cut:]
            if left in symbols and right in symbols:
                ranked.append((-score, index, cut, left, right))
    ranked.sort()
    return [(left, right) for *_, left, right in ranked]


def spm_tokenizer(proto, options: SpmOptions | None = None):
    """A ``tokenizers.Tokenizer`` that encodes text as the SentencePiece model ``proto`` does.

    Ids: piece ``i`` of the model gets id ``i + options.id_offset``; ``options.extra`` tokens follow.
    No special tokens are registered and no post-processor is set: the family's builder adds the
    tokens its 4.x tokenizer splits off and the prefix/suffix ids it adds.

    Raises:
        ValueError: a model type other than UNIGRAM or BPE, or a model option we cannot map exactly.
    """
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers

    options = options or SpmOptions()
    spec, trainer = proto.normalizer_spec, proto.trainer_spec
    if trainer.model_type not in (UNIGRAM, BPE):
        raise ValueError(f"SentencePiece model type {trainer.model_type} is not supported (only UNIGRAM and BPE)")
    pieces = [(p.piece, p.score, p.type) for p in proto.pieces]
    offset = options.id_offset
    extra = dict(options.extra)
    user_defined = [p for p, _, t in pieces if t == USER_DEFINED]
    # User-defined pieces: a forced split. Without a dummy prefix and without whitespace clean-up,
    # added tokens split them off exactly; otherwise the text around them must be normalized as one
    # piece (one dummy prefix, not one per stretch), so a pre-tokenizer isolates them instead.
    isolate = bool(user_defined) and (spec.add_dummy_prefix or spec.remove_extra_whitespaces)
    unmatchable = {i for i, (p, _, t) in enumerate(pieces) if t in (CONTROL, UNKNOWN, UNUSED) and p not in options.keep}
    aliases: dict[int, str] = {}
    if trainer.model_type == UNIGRAM:
        if unmatchable and not spec.escape_whitespaces:
            options.notes.append("without escape_whitespaces, control pieces stay matchable in text")
        else:
            aliases = {i: ALIAS + pieces[i][0] for i in unmatchable}
    vocab_names = [aliases.get(i, p) for i, (p, _, _) in enumerate(pieces)]
    for name, token_id in options.extra:
        if options.alias_extra and name in vocab_names:
            i = vocab_names.index(name)
            if pieces[i][2] == NORMAL:
                vocab_names[i] = ALIAS + name  # the piece's own id stays reachable only by id
                aliases[i] = vocab_names[i]
                options.notes.append(f"piece {name!r} (id {i + offset}) is encoded as the extra token id {token_id}")
    if len(set(vocab_names)) != len(vocab_names):
        raise ValueError("the SentencePiece model has duplicate piece strings")
    # Placeholders for the ids below the offset: never matched (an alias a text cannot contain).
    front = [ALIAS + options.placeholder.format(i) for i in range(offset)]
    names = front + vocab_names
    extra_sorted = sorted(extra.items(), key=lambda kv: kv[1])
    if extra_sorted and [i for _, i in extra_sorted] != list(range(len(names), len(names) + len(extra_sorted))):
        raise ValueError(f"extra token ids must follow the vocabulary ({len(names)}...): {extra_sorted}")
    names += [name for name, _ in extra_sorted]
    if trainer.model_type == UNIGRAM:
        # Pieces text must not reach get a score far below any real path. That also lowers the score
        # of an unknown char (the lowest score - 10), which changes nothing: every path through such a
        # char takes the unknown node, except those through a low-scored piece, isolated below.
        low = min(s for _, s, t in pieces if t == NORMAL) - 1e4
        by_name = {}
        for name, (piece, score, kind) in zip(vocab_names, pieces):
            by_name[name] = 0.0 if kind == USER_DEFINED else score if kind == NORMAL else low
        for name, _ in extra_sorted:  # an extra token standing in for a piece keeps the piece's score
            by_name[name] = next((s for p, s, t in pieces if p == name and t == NORMAL), low) \
                if options.alias_extra else low
        model = models.Unigram([(name, by_name.get(name, low)) for name in names], trainer.unk_id + offset,
                               trainer.byte_fallback)
    else:
        vocab = {name: i for i, name in enumerate(names)}
        merges = _bpe_merges(pieces)
        model = models.BPE(vocab, merges, unk_token=names[trainer.unk_id + offset], fuse_unk=True,
                           byte_fallback=trainer.byte_fallback, ignore_merges=isolate)
        if isolate:
            options.notes.append(_check_bpe_self_merges(vocab, merges, pieces))
    tok = Tokenizer(model)
    tok.normalizer = _normalizers(proto, options)
    # Unigram matches every vocabulary string, byte pieces ("<0x0A>") and control pieces kept under
    # their name included, which sentencepiece never matches in text. Their low score loses to any
    # spelled-out path; where a char of their spelling is in no piece (the unknown-char path costs
    # more), isolating that char keeps them from matching and changes nothing else, since no piece
    # can span a char that is in no piece.
    unknown_chars = []
    if trainer.model_type == UNIGRAM:
        known = {c for p, _, t in pieces if t == NORMAL for c in p}
        named = {p for i, (p, _, t) in enumerate(pieces) if t == BYTE or (t != NORMAL and t != USER_DEFINED
                                                                           and i not in aliases)}
        unknown_chars = sorted({c for p in named for c in p} - known)
    parts = [re.escape(p) for p in sorted(user_defined, key=len, reverse=True)] if isolate else []
    if unknown_chars:
        parts.append("[" + "".join(re.escape(c) for c in unknown_chars) + "]")
    if parts:
        tok.pre_tokenizer = pre_tokenizers.Split(Regex("|".join(parts)), "isolated")
    elif user_defined:
        from tokenizers import AddedToken

        plain = [p.replace(SPACE, " ") if spec.escape_whitespaces else p for p in user_defined]
        tok.add_tokens([AddedToken(p, normalized=False, special=False) for p in plain])
    steps = []
    unk_surface = trainer.unk_surface or " \u2047 "
    if aliases or offset:
        # Control/unknown/unused pieces decode to nothing (sentencepiece's DecodeIds); a piece shadowed
        # by an extra token decodes as its text; an image placeholder as its name (the 4.x decode).
        for i, alias in aliases.items():
            shown = unk_surface if i == trainer.unk_id else "" if i in unmatchable else alias[len(ALIAS):]
            steps.append(decoders.Replace(alias, shown))
        if offset:
            steps.append(decoders.Replace(Regex("\\A" + re.escape(ALIAS)), ""))
    if options.silent_control:
        steps += [decoders.Replace(p, "") for i, (p, _, t) in enumerate(pieces) if t == CONTROL and i not in aliases]
    if spec.escape_whitespaces:
        steps.append(decoders.Replace(SPACE, " "))
    steps += [decoders.ByteFallback(), decoders.Fuse()]
    if spec.add_dummy_prefix or spec.remove_extra_whitespaces:
        steps.append(decoders.Strip(" ", 1, 0))
    steps += list(options.postprocess)
    tok.decoder = decoders.Sequence(steps)
    return tok


def _check_bpe_self_merges(vocab: dict, merges, pieces) -> str:
    """Pieces that BPE would not rebuild from their own string: with ``ignore_merges`` (needed to keep
    isolated user-defined pieces whole) a stretch of text spelled exactly like one of them becomes
    that piece, where sentencepiece stops at smaller pieces. Returns a note; logs a warning."""
    from tokenizers import Tokenizer, models

    plain = Tokenizer(models.BPE(vocab, merges, unk_token=None, fuse_unk=True, byte_fallback=True))
    odd = [p for p, _, t in pieces if t == NORMAL and len(p) > 1 and [x.value for x in plain.model.tokenize(p)] != [p]]
    if odd:
        logger.warning("%d BPE pieces are not reached by merging their own characters (e.g. %r): a stretch "
                       "between user-defined pieces spelled exactly like one of them is encoded as that piece, "
                       "where sentencepiece would split it", len(odd), odd[:3])
    return f"{len(odd)} BPE pieces not reached by their own merges"
