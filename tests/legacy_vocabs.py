"""Small vocabularies in the legacy families' folder layouts, trained here on our own text.

The published vocabularies are not available offline, so each family gets a SentencePiece model
(or, for MOSS, a byte-level BPE) trained on ``CORPUS`` with the settings its real file is known or
observed to have, laid out under the family's file names with its tokenizer config files:

- chatglm: UNIGRAM (its vocabulary orders single characters first, as unigram does), byte
  fallback, dummy prefix; ``<n>``, ``<|tab|>``, ``<|blank_2..80|>`` user-defined; ``[MASK]``,
  ``[gMASK]``, ``<sop>``, ``<eop>``... control pieces; unk/bos/eos/pad at 0/1/2/3;
- chatglm2/3: BPE, byte fallback ("\\n" is a byte piece), dummy prefix (each separately encoded
  piece of ChatGLM3's chat input starts with the "▁" piece), digits split;
- baichuan: BPE, byte fallback, digits split, no dummy prefix, whitespace-only pieces (Baichuan 2's
  report), reserved control pieces so that ids 195/196 exist (its user/assistant tokens);
- internlm: BPE, byte fallback, no dummy prefix (the reference prompt starts "<" without "▁"),
  ``<eoh>``/``<eoa>`` user-defined;
- moss: GPT-2 byte-level BPE in ``vocab.json``/``merges.txt`` with ``<|endoftext|>`` last, and the
  published ``added_tokens.json`` layout (whitespace runs, ``<eoh>``...``<eor>``).

``reference_ids`` re-states, independently of ``alpaca_cot.legacy``, what each family's 4.x
tokenizer does on top of the vocabulary (special tokens split off with their whitespace rules,
ChatGLM-6B's whitespace tokens, ChatGLM2/3's special-name lookup, prefix ids), driving the
``sentencepiece`` processor (or a plain GPT-2 BPE for MOSS) for everything else.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

CORPUS = """The quick brown fox jumps over the lazy dog while people watch from the hill.
Aesop wrote fables; people read them, and sopranos sing about people in the opera every night.
Geopolitics, people and peoples: a short essay on how people develop new tools.
def add(a, b):
    return a + b  # two spaces before the comment
for i in range(10):
	print(i, "tab indented")
class Point:
        x = 1
今天天气很好，我们去公园散步吧。你好！有什么可以帮你？讲个笑话。
机器学习是人工智能的一个分支，深度学习是机器学习的一部分。你好，请问有什么问题？
Mixed 中英文 text with numbers 12345 and 3.14159, emails a@b.com, links https://example.org/x?y=1.
Accents café naïve résumé, quotes "double" and 'single', brackets [x] {y} <z> (w).
"""

# Texts every family is checked on: each rule of the 4.x tokenizers has a case here.
BATTERY = [
    "hello world", "Hello, World!", "  leading spaces", "trailing spaces   ", "a  b   c    d", " ", "", "x",
    "\n\n\nnewlines\n\n", "line1\nline2\r\nline3", "\tTab\tseparated\t", "def f():\n    return 1\n\tpass\n",
    "class A:\n        x = 1\n\n\n    y = 2", "你好，世界！", "中英mixed文本123", "讲个笑话", "数字 2023 年 12 月",
    "emoji 😀🎉 and 🦄 unknown", "<s>typed</s> <unk> [gMASK] sop eop <eoh> <eoa> <eom>", "<0x0A> byte piece",
    "  <sop>  spaced special  ", "x <eop>\ny", "[MASK][gMASK]<sop><eop>", "<|user|>\n<|assistant|> hi",
    "Aesop and people and geopolitics", "sopranos eop sop", "<n> and <|tab|> typed", " " * 90 + "x",
    "a" * 40, "哈" * 30, "--------", "q\u3000w\u00a0e", "Ünïcödé café", "ｆｕｌｌ ＡＢＣ", "<|endoftext|>x",
    "tabs\t\t\tand\t\t\t\t\t\t\t\t\t\t\tmore", "x\n    y\n\n        z", "<reserved_1> text", "end with newline\n",
]

GLM_EXTRA = ("[MASK]", "[gMASK]", "[sMASK]", "sop", "eop")
GLM3_EXTRA = GLM_EXTRA + ("<|system|>", "<|user|>", "<|assistant|>", "<|observation|>")
CHATGLM_CONTROL = ["[MASK]", "[gMASK]", "[sMASK]", "<unused_0>", "<sop>", "<eop>", "<ENC>", "<dBLOCK>"]
CHATGLM_USER = ["<n>", "<|tab|>"] + [f"<|blank_{n}|>" for n in range(2, 81)]


def _lines() -> list[str]:
    return CORPUS.strip("\n").split("\n") * 30


def train_spm(path: Path, **options) -> Path:
    import sentencepiece as spm

    out = io.BytesIO()
    args = dict(vocab_size=700, character_coverage=0.995, hard_vocab_limit=False, minloglevel=2,
                unk_id=0, bos_id=1, eos_id=2, pad_id=-1)
    args.update(options)
    spm.SentencePieceTrainer.train(sentence_iterator=iter(_lines()), model_writer=out, **args)
    path.write_bytes(out.getvalue())
    return path


def _write(folder: Path, name: str, data: dict) -> None:
    (folder / name).write_text(json.dumps(data, ensure_ascii=False, indent=2), encoding="utf-8")


def _added(content: str, **flags) -> dict:
    return {"content": content, "lstrip": False, "normalized": True, "rstrip": False, "single_word": False, **flags}


def make_family_folder(family: str, root: Path, *, num_image_tokens: int = 0) -> Path:
    """A folder holding ``family``'s vocabulary and tokenizer config files in the published layout."""
    folder = root / family
    folder.mkdir(parents=True, exist_ok=True)
    if family == "chatglm":
        train_spm(folder / "ice_text.model", model_type="unigram", byte_fallback=True, add_dummy_prefix=True,
                  normalization_rule_name="identity", remove_extra_whitespaces=False, pad_id=3,
                  control_symbols=CHATGLM_CONTROL, user_defined_symbols=CHATGLM_USER, split_digits=True)
        _write(folder, "tokenizer_config.json", {
            "name_or_path": "THUDM/chatglm-6b", "bos_token": "<sop>", "eos_token": "<eop>", "end_token": "</s>",
            "gmask_token": "[gMASK]", "mask_token": "[MASK]", "pad_token": "<pad>", "unk_token": "<unk>",
            "remove_space": False, "do_lower_case": False, "num_image_tokens": num_image_tokens,
            "tokenizer_class": "ChatGLMTokenizer",
            "auto_map": {"AutoTokenizer": ["tokenization_chatglm.ChatGLMTokenizer", None]}})
    elif family in ("chatglm2", "chatglm3"):
        path = train_spm(folder / "tokenizer.model", model_type="bpe", byte_fallback=True, add_dummy_prefix=True,
                         normalization_rule_name="identity", remove_extra_whitespaces=False, split_digits=True)
        _ensure_piece(path, "eop")  # a BPE piece spelled like a special token (see tokenizers.py)
        _write(folder, "tokenizer_config.json", {
            "name_or_path": f"THUDM/{family}-6b", "remove_space": False, "do_lower_case": False,
            "tokenizer_class": "ChatGLMTokenizer",
            "auto_map": {"AutoTokenizer": ["tokenization_chatglm.ChatGLMTokenizer", None]}})
    elif family == "baichuan":
        train_spm(folder / "tokenizer.model", model_type="bpe", byte_fallback=True, add_dummy_prefix=False,
                  normalization_rule_name="identity", remove_extra_whitespaces=False, split_digits=True,
                  allow_whitespace_only_pieces=True, control_symbols=[f"<reserved_{i}>" for i in range(200)])
        tokens = {"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<unk>", "unk_token": "<unk>"}
        _write(folder, "tokenizer_config.json", {
            "add_bos_token": False, "add_eos_token": False, "clean_up_tokenization_spaces": False,
            "model_max_length": 4096, "sp_model_kwargs": {}, "tokenizer_class": "BaichuanTokenizer",
            "auto_map": {"AutoTokenizer": ["tokenization_baichuan.BaichuanTokenizer", None]},
            **{k: {"__type": "AddedToken", **_added(v, single_word=True)} for k, v in tokens.items()}})
        _write(folder, "special_tokens_map.json", {k: _added(v, single_word=True) for k, v in tokens.items()})
        _write(folder, "generation_config.json", {"pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2,
                                                  "user_token_id": 195, "assistant_token_id": 196})
    elif family == "internlm":
        train_spm(folder / "tokenizer.model", model_type="bpe", byte_fallback=True, add_dummy_prefix=False,
                  normalization_rule_name="identity", remove_extra_whitespaces=False, split_digits=True,
                  user_defined_symbols=["<eoh>", "<eoa>"])
        tokens = {"bos_token": "<s>", "eos_token": "</s>", "pad_token": "</s>", "unk_token": "<unk>"}
        _write(folder, "tokenizer_config.json", {
            **tokens, "clean_up_tokenization_spaces": False, "tokenizer_class": "InternLMTokenizer",
            "auto_map": {"AutoTokenizer": ["tokenization_internlm.InternLMTokenizer", None]}})
        _write(folder, "special_tokens_map.json", tokens)
    elif family == "moss":
        _make_moss(folder)
    else:
        raise ValueError(family)
    return folder


def _ensure_piece(path: Path, piece: str) -> None:
    """Append a NORMAL piece (reachable by BPE merges of existing pieces) unless the model has it."""
    from sentencepiece import sentencepiece_model_pb2 as pb

    proto = pb.ModelProto()
    proto.ParseFromString(path.read_bytes())
    names = [p.piece for p in proto.pieces]
    if piece in names:
        return
    assert any(piece[:k] in names and piece[k:] in names for k in range(1, len(piece))), piece
    new = proto.pieces.add()
    new.piece, new.score, new.type = piece, proto.pieces[len(names) // 2].score, pb.ModelProto.SentencePiece.NORMAL
    path.write_bytes(proto.SerializeToString())


MOSS_WHITESPACE = ["\t" * n for n in range(9, 1, -1)]
MOSS_EXTRA = ["<eoh>", "<eom>", "<eot>", "<eoc>", "<eor>"]


def _make_moss(folder: Path) -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=600, min_frequency=2, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(_lines(), trainer)
    model = json.loads(tok.to_str())["model"]
    vocab = dict(model["vocab"])
    vocab["<|endoftext|>"] = len(vocab)  # MOSS keeps it as the last vocabulary entry (its bos id)
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    merges = [" ".join(m) if isinstance(m, list) else m for m in model["merges"]]
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    # As published: space runs of 31 down to 2, tab runs of 9 down to 2, then the end markers.
    added = [" " * n for n in range(31, 1, -1)] + MOSS_WHITESPACE + MOSS_EXTRA
    _write(folder, "added_tokens.json", {t: len(vocab) + i for i, t in enumerate(added)})
    _write(folder, "special_tokens_map.json", {
        "additional_special_tokens": [_added(t) for t in ["<eoh>", "<eom>", "<eot>", "<eoc>", "<eor>"]],
        "bos_token": "<|endoftext|>", "eos_token": _added("<eom>"), "unk_token": "<|endoftext|>"})
    _write(folder, "tokenizer_config.json", {
        "add_prefix_space": False, "bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>", "model_max_length": 2048, "tokenizer_class": "MossTokenizer",
        "auto_map": {"AutoTokenizer": ["tokenization_moss.MossTokenizer", None]}})


# ---------------------------------------------------------------- the re-statement


def slow_split(text: str, tokens: dict[str, tuple[bool, bool]]) -> list[tuple[str, bool]]:
    """4.x's split of ``text`` on no-split tokens (at each place the longest one, leftmost first, no
    empty pieces between two tokens), then each token strips the whitespace of its neighbours as its
    (lstrip, rstrip) flags say: (True, True) for a plain string. A neighbour that is itself all
    whitespace is emptied and dropped. Returns ``(chunk, is_token)``."""
    parts: list[tuple[str, bool]] = []
    i, start = 0, 0
    ordered = sorted(tokens, key=len, reverse=True)
    while i < len(text):
        hit = next((t for t in ordered if text.startswith(t, i)), None)
        if hit:
            if start < i:
                parts.append((text[start:i], False))
            parts.append((hit, True))
            i = start = i + len(hit)
        else:
            i += 1
    if start < len(text):
        parts.append((text[start:], False))
    chunks = [p for p, _ in parts]
    for k, (part, is_token) in enumerate(parts):
        if not is_token or chunks[k] != part:  # an emptied token no longer counts as one
            continue
        lstrip, rstrip = tokens[part]
        if rstrip and k + 1 < len(chunks) and chunks[k + 1]:
            chunks[k + 1] = chunks[k + 1].lstrip()
        if lstrip and k > 0 and chunks[k - 1]:
            chunks[k - 1] = chunks[k - 1].rstrip()
    return [(c, t and c == p) for c, (p, t) in zip(chunks, parts) if c]


def chatglm_preprocess(text: str) -> str:
    text = text.replace("\n", "<n>").replace("\t", "<|tab|>")
    for n in range(80, 1, -1):
        text = text.replace(" " * n, f"<|blank_{n}|>")
    return text


def reference_ids(family: str, folder: Path, text: str, *, special: bool = True) -> list[int]:
    """The ids the family's 4.x tokenizer gives ``text`` (see the module docstring)."""
    if family == "moss":
        return _moss_reference(folder, text, special)
    import sentencepiece as spm

    config = json.loads((folder / "tokenizer_config.json").read_text())
    model = folder / ("ice_text.model" if family == "chatglm" else "tokenizer.model")
    sp = spm.SentencePieceProcessor(model_file=str(model))
    n = sp.get_piece_size()
    if family == "chatglm":
        offset = config.get("num_image_tokens", 20000)
        tokens = {t: (True, True) for t in ("<sop>", "<eop>", "[MASK]", "<pad>", "<unk>")}
        out = []
        for chunk, is_token in slow_split(text, tokens):
            out += [sp.piece_to_id(chunk) + offset] if is_token else \
                [i + offset for i in sp.encode(chatglm_preprocess(chunk))]
        return out + [sp.piece_to_id("[gMASK]") + offset, sp.piece_to_id("<sop>") + offset] if special else out
    if family in ("chatglm2", "chatglm3"):
        table = {name: n + i for i, name in enumerate(GLM3_EXTRA if family == "chatglm3" else GLM_EXTRA)}
        out = [table.get(p, sp.piece_to_id(p)) for p in sp.encode(text, out_type=str)]
        return [table["[gMASK]"], table["sop"]] + out if special else out
    plain = family == "internlm"  # its special tokens are plain strings; Baichuan's are AddedTokens
    tokens = {t: (plain, plain) for t in ("<s>", "</s>", "<unk>")}
    out = []
    for chunk, is_token in slow_split(text, tokens):
        out += [sp.piece_to_id(chunk)] if is_token else sp.encode(chunk)
    add_bos = config.get("add_bos_token", True)
    return ([1] if special and add_bos else []) + out


def _moss_flags(folder: Path) -> dict[str, tuple[bool, bool]]:
    flags = {t: (True, True) for t in json.loads((folder / "added_tokens.json").read_text())}
    flags.update({t: (False, False) for t in MOSS_EXTRA})
    flags["<|endoftext|>"] = (True, True)
    return flags


def moss_visible_text(folder: Path, text: str) -> str:
    """The text MOSS's 4.x tokenizer encodes: the whitespace its plain added tokens strip is gone."""
    return "".join(chunk for chunk, _ in slow_split(text, _moss_flags(folder)))


def _moss_reference(folder: Path, text: str, special: bool) -> list[int]:
    vocab = json.loads((folder / "vocab.json").read_text())
    added = json.loads((folder / "added_tokens.json").read_text())
    merges = (folder / "merges.txt").read_text().split("\n")[1:-1]
    ranks = {tuple(m.split()): r for r, m in enumerate(merges)}
    byte_map = _bytes_to_unicode()
    out = []
    for chunk, is_token in slow_split(text, _moss_flags(folder)):
        if is_token:
            out.append(added.get(chunk, vocab.get(chunk)))
            continue
        for word in _gpt2_words(chunk):
            out += [vocab[p] for p in _bpe("".join(byte_map[b] for b in word.encode()), ranks)]
    return out


def _gpt2_words(text: str) -> list[str]:
    import regex

    return regex.findall(r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+""", text)


def _bytes_to_unicode() -> dict[int, str]:
    keep = list(range(33, 127)) + list(range(161, 173)) + list(range(174, 256))
    table, extra = {}, 0
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def _bpe(word: str, ranks: dict) -> list[str]:
    symbols = list(word)
    while len(symbols) > 1:
        pairs = [(ranks.get((a, b), float("inf")), k) for k, (a, b) in enumerate(zip(symbols, symbols[1:]))]
        rank, k = min(pairs)
        if rank == float("inf"):
            break
        a, b = symbols[k], symbols[k + 1]
        merged, j = [], 0
        while j < len(symbols):
            if j + 1 < len(symbols) and symbols[j] == a and symbols[j + 1] == b:
                merged.append(a + b)
                j += 2
            else:
                merged.append(symbols[j])
                j += 1
        symbols = merged
    return symbols


def reference_chat_ids(family: str, folder: Path, history: list[tuple[str, str]], query: str) -> list[int]:
    """The ids each family's own chat code builds for ``history`` + ``query`` (re-stated): ChatGLM-6B
    ``chat`` and ChatGLM2 ``build_prompt`` + ``tokenizer(prompt)``, ChatGLM3 ``build_chat_input``,
    Baichuan2 ``generation_utils.build_chat_input``, InternLM ``build_inputs``, MOSS's README format."""
    import sentencepiece as spm

    if family == "chatglm":
        prompt = "".join(f"[Round {i}]\n问：{q}\n答：{r}\n" for i, (q, r) in enumerate(history))
        return reference_ids(family, folder, prompt + f"[Round {len(history)}]\n问：{query}\n答：")
    if family == "chatglm2":
        prompt = "".join(f"[Round {i + 1}]\n\n问：{q}\n\n答：{r}\n\n" for i, (q, r) in enumerate(history))
        return reference_ids(family, folder, prompt + f"[Round {len(history) + 1}]\n\n问：{query}\n\n答：")
    if family == "chatglm3":
        sp = spm.SentencePieceProcessor(model_file=str(folder / "tokenizer.model"))
        table = {name: sp.get_piece_size() + i for i, name in enumerate(GLM3_EXTRA)}
        ids = [table["[gMASK]"], table["sop"]]
        for q, r in history:
            ids += [table["<|user|>"]] + sp.encode("\n") + sp.encode(q)
            ids += [table["<|assistant|>"]] + sp.encode("\n") + sp.encode(r)
        return ids + [table["<|user|>"]] + sp.encode("\n") + sp.encode(query) + [table["<|assistant|>"]]
    if family == "baichuan":
        ids = []
        for q, r in history:
            ids += [195] + reference_ids(family, folder, q) + [196] + reference_ids(family, folder, r)
        return ids + [195] + reference_ids(family, folder, query) + [196]
    if family == "internlm":
        prompt = "".join(f"<|User|>:{q}<eoh>\n<|Bot|>:{r}<eoa>\n" for q, r in history)
        return reference_ids(family, folder, prompt + f"<|User|>:{query}<eoh>\n<|Bot|>:")
    if family == "moss":
        from alpaca_cot.family_templates import MOSS_META_INSTRUCTION

        prompt = "".join(f"<|Human|>: {q}<eoh>\n<|MOSS|>: {r}<eom>\n" for q, r in history)
        return reference_ids(family, folder, MOSS_META_INSTRUCTION + prompt + f"<|Human|>: {query}<eoh>\n<|MOSS|>:")
    raise ValueError(family)
