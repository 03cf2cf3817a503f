"""Fast tokenizers of the legacy families: the same ids as their own 4.x tokenizers, on small vocabularies.

The published vocabularies are not available here; ``legacy_vocabs`` trains small ones with each
family's settings and re-states what each family's tokenizer does around the vocabulary. The
SentencePiece pipeline itself is checked against the ``sentencepiece`` processor on models of both
types with every normalization option the families use.
"""

import pytest

from legacy_vocabs import BATTERY, GLM3_EXTRA, make_family_folder, moss_visible_text, reference_ids, train_spm

FAMILIES = ["chatglm", "chatglm2", "chatglm3", "baichuan", "internlm", "moss"]
# MOSS's 4.x tokenizer drops every second whitespace token of a run it splits into three or more
# (64+ spaces, 20+ tabs); ours keeps the first only (see tokenizers.py). Checked separately.
MOSS_LONG_RUN = " " * 90 + "x"
# Texts that decode back to themselves (typed special tokens lose the whitespace around them, as in 4.x).
PLAIN = [t for t in BATTERY if not any(s in t for s in ("<s>", "<sop>", "<eop>", "<unk>", "<n>", "<eom>",
                                                        "<|endoftext|>", "<0x0A>"))]


@pytest.fixture(scope="module")
def folders(legacy_tokenizers, tmp_path_factory):
    out = {family: folder for family, (folder, _) in legacy_tokenizers.items()}
    root = tmp_path_factory.mktemp("legacy-offset")
    out["chatglm-offset"] = make_family_folder("chatglm", root, num_image_tokens=20000)
    return out


@pytest.fixture(scope="module")
def built(legacy_tokenizers, folders):
    from alpaca_cot.legacy.tokenizers import build

    out = {family: tok for family, (_, tok) in legacy_tokenizers.items()}
    out["chatglm-offset"] = build("chatglm", folders["chatglm-offset"], {})
    return out


SPM_CASES = {
    "unigram": dict(model_type="unigram", byte_fallback=True, add_dummy_prefix=True),
    "unigram-nobytes-nfkc": dict(model_type="unigram", byte_fallback=False, add_dummy_prefix=True,
                                 normalization_rule_name="nmt_nfkc", remove_extra_whitespaces=True),
    "unigram-user-nodummy": dict(model_type="unigram", byte_fallback=True, add_dummy_prefix=False,
                                 user_defined_symbols=["<n>", "<eoh>"], control_symbols=["[gMASK]"]),
    "bpe": dict(model_type="bpe", byte_fallback=True, add_dummy_prefix=True),
    "bpe-nodummy-nfkc": dict(model_type="bpe", byte_fallback=True, add_dummy_prefix=False,
                             normalization_rule_name="nmt_nfkc", remove_extra_whitespaces=True),
    "bpe-nobytes": dict(model_type="bpe", byte_fallback=False, add_dummy_prefix=True),
    "bpe-user-dummy": dict(model_type="bpe", byte_fallback=True, add_dummy_prefix=True,
                           user_defined_symbols=["<n>", "<|tab|>", "<eoh>"], control_symbols=["[gMASK]", "sop"]),
}


@pytest.mark.parametrize("case", sorted(SPM_CASES))
def test_sentencepiece_pipeline_gives_sentencepiece_ids(case, tmp_path):
    import sentencepiece as spm

    from alpaca_cot.legacy.spm import load_model_proto, spm_tokenizer

    options = {"normalization_rule_name": "identity", "remove_extra_whitespaces": False, **SPM_CASES[case]}
    path = train_spm(tmp_path / "m.model", **options)
    sp = spm.SentencePieceProcessor(model_file=str(path))
    tok = spm_tokenizer(load_model_proto(path))
    for text in BATTERY:
        if case.startswith("unigram") and text == " " * 90 + "x":
            continue  # equal-score segmentations of a long space run: sentencepiece sums in float32
        ids = sp.encode(text)
        assert tok.encode(text).ids == ids, text
        if sp.unk_id() not in ids:
            assert tok.decode(ids) == sp.decode(ids), text


@pytest.mark.parametrize("family", FAMILIES + ["chatglm-offset"])
def test_ids_match_the_family_tokenizer(family, folders, built):
    tok = built[family]
    for text in BATTERY:
        if family == "moss" and text == MOSS_LONG_RUN:
            continue
        assert tok(text)["input_ids"] == reference_ids(family.split("-")[0], folders[family], text), text
        assert tok(text, add_special_tokens=False)["input_ids"] == \
            reference_ids(family.split("-")[0], folders[family], text, special=False), text


@pytest.mark.parametrize("family", FAMILIES)
def test_decoding_gives_the_text_back(family, built, folders):
    tok = built[family]
    for text in PLAIN:
        if family == "moss":
            if text == MOSS_LONG_RUN:
                continue
            # 4.x's whitespace-run tokens swallow the whitespace next to them (below)
            text = moss_visible_text(folders["moss"], text)
        ids = tok(text, add_special_tokens=False)["input_ids"]
        assert tok.decode(ids) == text
    # Generated ids with the prefix/suffix tokens around them decode to the bare text.
    assert tok.decode(tok("讲个笑话 ok")["input_ids"], skip_special_tokens=True) == "讲个笑话 ok"


def test_special_tokens_and_prefix_ids(built, folders):
    import sentencepiece as spm

    glm = built["chatglm"]
    sp = spm.SentencePieceProcessor(model_file=str(folders["chatglm"] / "ice_text.model"))
    assert (glm.eos_token, glm.eos_token_id) == ("<eop>", sp.piece_to_id("<eop>"))
    assert (glm.bos_token, glm.pad_token_id, glm.padding_side) == ("<sop>", 3, "left")
    assert glm("hi")["input_ids"][-2:] == [sp.piece_to_id("[gMASK]"), sp.piece_to_id("<sop>")]
    assert glm.convert_tokens_to_ids("<n>") == sp.piece_to_id("<n>")
    assert built["chatglm-offset"]("hi")["input_ids"][-1] == 20000 + sp.piece_to_id("<sop>")

    for family in ("chatglm2", "chatglm3"):
        tok = built[family]
        n = spm.SentencePieceProcessor(model_file=str(folders[family] / "tokenizer.model")).get_piece_size()
        names = GLM3_EXTRA if family == "chatglm3" else GLM3_EXTRA[:5]
        assert tok.convert_tokens_to_ids(list(names)) == list(range(n, n + len(names)))
        assert tok("hi")["input_ids"][:2] == [n + 1, n + 3]  # [gMASK] sop
        assert (tok.eos_token, tok.eos_token_id, tok.pad_token_id, tok.unk_token_id) == ("</s>", 2, 0, 0)
        assert tok.bos_token is None and tok.padding_side == "left"
    assert built["chatglm3"]("<|user|>")["input_ids"][2:] != [built["chatglm3"].convert_tokens_to_ids("<|user|>")]

    baichuan, internlm = built["baichuan"], built["internlm"]
    assert baichuan("hi")["input_ids"][0] != 1  # Baichuan2's config: no BOS
    assert (baichuan.eos_token_id, baichuan.pad_token, baichuan.unk_token_id) == (2, "<unk>", 0)
    assert internlm("hi")["input_ids"][0] == 1 and (internlm.eos_token_id, internlm.pad_token_id) == (2, 2)

    moss = built["moss"]
    assert (moss.eos_token, moss.bos_token, moss.unk_token, moss.pad_token) == ("<eom>", "<|endoftext|>",
                                                                                 "<|endoftext|>", None)
    assert moss.convert_tokens_to_ids(["<eoh>", "<eom>"]) == [moss.bos_token_id + 39, moss.bos_token_id + 40]
    assert moss("a<eom>")["input_ids"][-1] == moss.eos_token_id


def test_chatglm2_piece_spelled_like_a_special_token_gets_its_id(built, folders):
    """ChatGLM2/3 map a piece string through their special-token table first: the "eop" piece -> eop's id."""
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(folders["chatglm2"] / "tokenizer.model"))
    texts = [t for t in ("geopolitics", "people", "Aesop eop", "x eop") if "eop" in sp.encode(t, out_type=str)]
    assert texts, "the fixture vocabulary must have a piece spelled 'eop'"
    eop = built["chatglm2"].convert_tokens_to_ids("eop")
    for text in texts:
        assert eop in built["chatglm2"](text, add_special_tokens=False)["input_ids"]
        assert sp.piece_to_id("eop") not in built["chatglm2"](text, add_special_tokens=False)["input_ids"]


def test_moss_whitespace_tokens_follow_4x(built, folders):
    """Its whitespace-run tokens are plain strings in 4.x: they swallow the whitespace around them."""
    tok = built["moss"]
    ids = tok("if x:\n    return 1", add_special_tokens=False)["input_ids"]
    assert ids == reference_ids("moss", folders["moss"], "if x:\n    return 1")
    assert tok.decode(ids) == "if x:    return 1"
    # A run split into three or more whitespace tokens: 4.x keeps the 1st and 3rd, we keep the 1st.
    ours = tok(MOSS_LONG_RUN)["input_ids"]
    assert ours == [tok.convert_tokens_to_ids(" " * 31), tok.convert_tokens_to_ids("x")]
    assert reference_ids("moss", folders["moss"], MOSS_LONG_RUN) == [ours[0], tok.convert_tokens_to_ids(" " * 28),
                                                                     ours[1]]


@pytest.mark.parametrize("family", FAMILIES)
def test_saved_tokenizer_loads_with_auto_tokenizer(family, built, tmp_path):
    from transformers import AutoTokenizer

    built[family].save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    for text in BATTERY[::3]:
        assert loaded(text)["input_ids"] == built[family](text)["input_ids"]
    assert (loaded.eos_token_id, loaded.pad_token_id, loaded.padding_side) == \
        (built[family].eos_token_id, built[family].pad_token_id, built[family].padding_side)


def test_baichuan_with_other_role_ids_warns(folders, tmp_path, caplog):
    import shutil

    from alpaca_cot.legacy.tokenizers import build

    folder = shutil.copytree(folders["baichuan"], tmp_path / "baichuan")
    (folder / "generation_config.json").write_text('{"user_token_id": 101, "assistant_token_id": 102}')
    with caplog.at_level("WARNING"):
        build("baichuan", folder, {})
    assert "the baichuan template uses (195, 196)" in caplog.text


def test_folder_without_vocabulary_gives_none_and_unknown_family_fails(tmp_path):
    from alpaca_cot.legacy.tokenizers import build

    assert all(build(family, tmp_path, {}) is None for family in FAMILIES)
    with pytest.raises(ValueError, match="known: baichuan"):
        build("nope", tmp_path, {})
    (tmp_path / "tokenizer.model").write_bytes(b"not a model")
    with pytest.raises(ValueError, match="not a SentencePiece model"):
        build("internlm", tmp_path, {})
