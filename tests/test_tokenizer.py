"""Tokenizers built from GGUF metadata agree with transformers' GGUF tokenizers, id for id.

Reference: ``AutoTokenizer.from_pretrained(folder, gguf_file=name)``. The
comparisons with transformers are slow (importing it and building Gemma's
262k-token tokenizer take ~20 s) and run with ``--runslow``; fast tests check
pinned ids that were produced by transformers, round trips and streaming.
"""

from __future__ import annotations

import json
import random

import pytest
from models import needs_gemma3, needs_smollm2

from rocmforge.tokenizer import StreamDecoder, Tokenizer

SMOLLM = needs_smollm2
GEMMA = needs_gemma3

TEXTS = [
    "Hello, world! This is a plain English sentence.",
    "",
    " ",
    "  two leading spaces",
    "     five leading spaces and trailing   ",
    "multiple   inner    spaces",
    "line one\nline two\n\nline four\r\nwindows\ttab\t\tdouble tab",
    "\n\n\nstarts with newlines",
    "Numbers: 0 7 42 123 1234 12345 3.14159 -273.15 1,000,000 and 98765432109876543210",
    "def fib(n):\n    if n < 2:\n        return n\n    return fib(n - 1) + fib(n - 2)\n",
    "for (int i = 0; i < n; ++i) { sum += a[i] * b[i]; } // C++ {}[]<>!=&&||",
    "Apostrophes: don't, I'LL, we've, she'd, it's, O'Reilly",
    "Accents: café, naïve, résumé, Ångström, São Paulo, Zürich, œuvre",
    "CJK: 你好，世界！日本語のテキスト。한국어 문장입니다.",
    "Cyrillic: Привет, мир! Съешь же ещё этих мягких французских булок.",
    "Greek and Arabic: Καλημέρα κόσμε — مرحبا بالعالم",
    "Emoji: 🦀🚀 👩‍💻 👍🏽 🇫🇷 ❤️ 🤖",
    "Math: ∑ᵢ xᵢ² ≤ ∞, ∂f/∂x, √2 ≈ 1.414, α+β=γ",
    "Special tokens in text: <|im_start|>user\nhi<|im_end|> <start_of_turn>model\nok<end_of_turn> <bos><eos>",
    "URL https://example.com/path?q=1&b=2#frag and email a.b@c.org",
    "Mixed\u00a0non-breaking\u2009thin\u200bzero-width space",
    "ALL CAPS SHOUTING AND lowercase whispering AnD MiXeD",
    "Repeated!!!!!!!! ........ ------ ======",
]


def _random_texts(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    # fmt: off
    pieces = [
        "a", "the", " ", "  ", "\n", "\t", "ing", "Zürich", "é", "日本", "ß", "🦀", "👍🏽", "0", "12",
        "999", ",", ".", "'s", "'S", "<", ">", "|", "_", "-", "—", "\u2581", "Привет", "(", ")", "#", "\r\n",
    ]
    # fmt: on
    return ["".join(rng.choice(pieces) for _ in range(rng.randint(1, 30))) for _ in range(n)]


def _hf(path):
    transformers = pytest.importorskip("transformers")
    return transformers.AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)


@pytest.fixture(scope="module")
def smollm_hf(smollm_path):
    return _hf(smollm_path)


@pytest.fixture(scope="module")
def gemma_hf(gemma_path):
    return _hf(gemma_path)


# ------------------------------------------------------------------ SmolLM2 (byte-level BPE)


@SMOLLM
def test_smollm_properties(smollm):
    assert smollm.vocab_size == 49152
    assert smollm.bos_id == 1 and smollm.bos_token == "<|im_start|>"
    assert smollm.eos_id == 2 and smollm.eos_token == "<|im_end|>"
    assert {2, 0} <= smollm.eos_ids  # <|im_end|> and <|endoftext|>
    assert smollm.token_to_id("<|im_end|>") == 2 and smollm.id_to_token(2) == "<|im_end|>"
    assert smollm.chat_template and "<|im_start|>" in smollm.chat_template
    assert smollm.is_special(2) and not smollm.is_special(100)


@SMOLLM
@pytest.mark.parametrize(
    ("text", "ids"),
    [  # produced by transformers 5 AutoTokenizer(gguf_file=SmolLM2-135M-Instruct.Q4_1.gguf)
        ("Hello world 12345 abc", [19556, 905, 216, 33, 34, 35, 36, 37, 43239]),
        ("  leading", [216, 2899]),
        ("x<|im_end|>y", [104, 2, 105]),
        ("🦀 émoji", [10813, 116, 218, 26411, 15771, 10381]),
    ],
)
def test_smollm_pinned_ids(smollm, text, ids):
    assert smollm.encode(text) == ids  # add_bos_token is false for SmolLM2


@SMOLLM
def test_smollm_parse_special_false_keeps_text_literal(smollm):
    ids = smollm.encode("x<|im_end|>y", parse_special=False)
    assert 2 not in ids
    assert smollm.decode(ids) == "x<|im_end|>y"
    assert smollm.encode("x<|im_end|>y") == [104, 2, 105]  # the toggle is restored


@SMOLLM
@pytest.mark.parametrize("text", TEXTS)
def test_smollm_decode_round_trip(smollm, text):
    ids = smollm.encode(text)
    assert smollm.decode(ids, skip_special=False) == text
    assert all(0 <= i < smollm.vocab_size for i in ids)


@pytest.mark.slow
@SMOLLM
def test_smollm_matches_transformers(smollm, smollm_hf):
    for text in TEXTS:
        assert smollm.encode(text) == smollm_hf.encode(text), repr(text)
        ids = smollm.encode(text)
        assert smollm.decode(ids) == smollm_hf.decode(ids, skip_special_tokens=True), repr(text)


@pytest.mark.slow
@SMOLLM
def test_smollm_matches_its_own_pre_tokenizer(smollm, smollm_hf, tmp_path):
    r"""transformers' GGUF converter ignores tokenizer.ggml.pre = "smollm" and uses the plain
    GPT-2 regex, so it differs from SmolLM2's own tokenizer.json (digits split off first:
    ``Digits(individual_digits=True)`` then byte-level) where whitespace precedes a digit,
    e.g. "(\r\n12". We follow SmolLM2 and llama.cpp ([\p{N}, gpt2 regex]); check that
    on random text against transformers with SmolLM2's pre-tokenizer put back."""
    from tokenizers import Tokenizer as Backend
    from tokenizers import pre_tokenizers

    ref = Backend.from_str(smollm_hf.backend_tokenizer.to_str())
    ref.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    for text in TEXTS + _random_texts(1000, seed=1) + ["(\r\n12", "a \n 1 \t\t2"]:
        assert smollm.encode(text) == ref.encode(text).ids, repr(text)


# ------------------------------------------------------------------ Gemma 3 (SentencePiece BPE)


@GEMMA
def test_gemma_properties(gemma):
    assert gemma.vocab_size == 262144
    assert gemma.bos_id == 2 and gemma.bos_token == "<bos>"
    assert gemma.eos_id == 1
    assert gemma.eos_ids == {1, gemma.token_to_id("<end_of_turn>")} == {1, 106}
    assert gemma.is_special(106)


@GEMMA
@pytest.mark.parametrize(
    ("text", "ids"),
    [  # produced by transformers 5 AutoTokenizer(gguf_file=gemma-3-270m-q4_k_m.gguf)
        ("Hello world 12345 abc", [2, 9259, 1902, 236743, 236770, 236778, 236800, 236812, 236810, 13334]),
        ("  leading", [2, 138, 26016]),
        ("x<end_of_turn>y", [2, 236781, 106, 236762]),
        ("🦀 émoji", [2, 248714, 1559, 58197]),
    ],
)
def test_gemma_pinned_ids(gemma, text, ids):
    assert gemma.encode(text) == ids
    assert gemma.encode(text, add_special=False) == ids[1:]


@GEMMA
@pytest.mark.parametrize("text", TEXTS)
def test_gemma_decode_round_trip(gemma, text):
    ids = gemma.encode(text)
    assert ids[0] == gemma.bos_id
    assert gemma.decode(ids) == text.replace("<bos>", "").replace("<eos>", "").replace(
        "<start_of_turn>", ""
    ).replace("<end_of_turn>", "")
    assert gemma.decode(ids[1:], skip_special=False) == text


@GEMMA
def test_gemma_byte_fallback(gemma):
    # a rare character not in the vocabulary is spelled with <0xNN> byte tokens
    text = "\U0001fa73"  # 🩳 (shorts) is not in the vocabulary
    ids = gemma.encode(text, add_special=False)
    assert any(gemma.id_to_token(i).startswith("<0x") for i in ids)
    assert gemma.decode(ids) == text


@pytest.mark.slow
@GEMMA
def test_gemma_matches_transformers(gemma, gemma_hf):
    for text in TEXTS + _random_texts(300, seed=2):
        assert gemma.encode(text) == gemma_hf.encode(text), repr(text)
        ids = gemma.encode(text)
        assert gemma.decode(ids) == gemma_hf.decode(ids, skip_special_tokens=True), repr(text)


# ------------------------------------------------------------------ streaming


def _stream(tok: Tokenizer, ids: list[int], skip_special: bool = True) -> list[str]:
    dec = StreamDecoder(tok, skip_special=skip_special)
    pieces = [dec.put(i) for i in ids]
    pieces.append(dec.flush())
    return pieces


@pytest.mark.parametrize("name", ["smollm", "gemma"])
def test_stream_decoder_concat_equals_decode(request, name):
    tok = request.getfixturevalue(name)
    for text in TEXTS + _random_texts(100, seed=3):
        ids = tok.encode(text)
        for skip in (True, False):
            pieces = _stream(tok, ids, skip)
            assert "".join(pieces) == tok.decode(ids, skip_special=skip), repr(text)
            if "\ufffd" not in text:
                assert not any("\ufffd" in p for p in pieces), (text, pieces)


@pytest.mark.parametrize("name", ["smollm", "gemma"])
def test_stream_decoder_holds_back_split_emoji(request, name):
    tok = request.getfixturevalue(name)
    # 🩳 is not one token in either vocabulary: its 4 UTF-8 bytes span several tokens
    text = "DNA 🩳 helix"
    ids = tok.encode(text, add_special=False)
    emoji_ids = [i for i in ids if "🩳" not in tok.decode([i]) and "\ufffd" in tok.decode([i])]
    assert len(emoji_ids) >= 2, [tok.id_to_token(i) for i in ids]
    pieces = _stream(tok, ids)
    assert "".join(pieces) == text
    assert "🩳" in pieces or any("🩳" in p for p in pieces)
    assert not any("\ufffd" in p for p in pieces)
    assert "" in pieces  # something was held back while the emoji was incomplete


def test_stream_decoder_flushes_incomplete_tail(smollm):
    ids = smollm.encode("ok 🩳", add_special=False)
    dec = smollm.stream_decoder()
    out = "".join(dec.put(i) for i in ids[:-1])
    assert "\ufffd" not in out
    tail = dec.flush()
    assert out + tail == smollm.decode(ids[:-1])
    assert tail.endswith("\ufffd")


# ------------------------------------------------------------------ HF folders


@SMOLLM
def test_from_hf_folder_matches_gguf(smollm, tmp_path):
    smollm.backend.save(str(tmp_path / "tokenizer.json"))
    (tmp_path / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "bos_token": "<|im_start|>",
                "eos_token": {"content": "<|im_end|>", "special": True},
                "chat_template": smollm.chat_template,
            }
        )
    )
    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": [2, 0]}))
    tok = Tokenizer.from_hf_folder(tmp_path)
    assert tok.bos_id == 1 and tok.eos_id == 2 and tok.eos_ids == {0, 2}
    assert tok.chat_template == smollm.chat_template
    for text in TEXTS:
        assert tok.encode(text) == smollm.encode(text)


@GEMMA
def test_from_hf_folder_add_bos_from_config(gemma, tmp_path):
    import tokenizers

    backend = tokenizers.Tokenizer.from_str(gemma.backend.to_str())
    backend.post_processor = None  # as if tokenizer.json did not add BOS
    backend.save(str(tmp_path / "tokenizer.json"))
    (tmp_path / "tokenizer_config.json").write_text(
        json.dumps({"bos_token": "<bos>", "eos_token": "<eos>", "add_bos_token": True})
    )
    (tmp_path / "chat_template.jinja").write_text("{{ bos_token }}{{ messages[0]['content'] }}")
    tok = Tokenizer.from_hf_folder(tmp_path)
    assert tok.encode("Hello world") == gemma.encode("Hello world")
    assert tok.encode("Hello world")[0] == 2
    assert tok.eos_ids == {1, 106}
    assert tok.apply_chat_template([{"role": "user", "content": "hi"}]) == "<bos>hi"
    assert tok.encode_chat([{"role": "user", "content": "hi"}]).count(2) == 1


def test_from_hf_folder_without_tokenizer_json(tmp_path):
    from rocmforge.errors import ModelFormatError

    with pytest.raises(ModelFormatError, match="tokenizer.json"):
        Tokenizer.from_hf_folder(tmp_path)


@pytest.mark.slow
@SMOLLM
def test_from_hf_folder_saved_by_transformers(smollm, smollm_hf, tmp_path):
    smollm_hf.save_pretrained(tmp_path)
    tok = Tokenizer.from_hf_folder(tmp_path)
    for text in TEXTS:
        assert tok.encode(text) == smollm_hf.encode(text) == smollm.encode(text)
    assert tok.eos_id == 2 and tok.bos_id == 1


# ------------------------------------------------------------------ bad metadata


def test_gguf_metadata_errors():
    from rocmforge.errors import ModelFormatError, RocmforgeError

    with pytest.raises(ModelFormatError, match="tokenizer.ggml.model"):
        Tokenizer.from_gguf_metadata({})
    with pytest.raises(RocmforgeError, match="'bert'"):
        Tokenizer.from_gguf_metadata({"tokenizer.ggml.model": "bert", "tokenizer.ggml.tokens": ["a"]})
    with pytest.raises(ModelFormatError, match="merges"):
        Tokenizer.from_gguf_metadata({"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.tokens": ["a"]})
    with pytest.raises(ModelFormatError, match="token_type"):
        Tokenizer.from_gguf_metadata(
            {
                "tokenizer.ggml.model": "gpt2",
                "tokenizer.ggml.tokens": ["a", "b"],
                "tokenizer.ggml.token_type": [1],
            }
        )
    with pytest.raises(ModelFormatError, match="bos_token_id"):
        Tokenizer.from_gguf_metadata(
            {
                "tokenizer.ggml.model": "gpt2",
                "tokenizer.ggml.tokens": ["a", "b", "ab"],
                "tokenizer.ggml.merges": ["a b"],
                "tokenizer.ggml.bos_token_id": 7,
            }
        )


def test_tiny_sentencepiece_vocab_with_space_prefix():
    # a Llama-2-style vocabulary: dummy prefix on, BOS added by default
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    tokens += ["▁", "h", "i", "t", "e", "r", "▁h", "▁hi", "▁t", "he", "re", "here", "▁there"]
    types = [2, 3, 3] + [6] * 256 + [1] * 13
    tok = Tokenizer.from_gguf_metadata(
        {
            "tokenizer.ggml.model": "llama",
            "tokenizer.ggml.tokens": tokens,
            "tokenizer.ggml.token_type": types,
            "tokenizer.ggml.scores": [0.0] * len(tokens),
            "tokenizer.ggml.bos_token_id": 1,
            "tokenizer.ggml.eos_token_id": 2,
            "tokenizer.ggml.unknown_token_id": 0,
        }
    )
    ids = tok.encode("hi there")
    assert [tok.id_to_token(i) for i in ids] == ["<s>", "▁hi", "▁there"]
    assert tok.decode(ids) == "hi there"
    ids = tok.encode("hi é")  # é is not in the vocabulary: two byte tokens
    assert [tok.id_to_token(i) for i in ids][-2:] == ["<0xC3>", "<0xA9>"]
    assert tok.decode(ids) == "hi é"
    assert tok.eos_ids == {2}
    assert "".join(_stream(tok, ids)) == "hi é"


@pytest.mark.parametrize("name", ["smollm", "gemma"])
def test_stream_decoder_emits_complete_text_before_a_pending_character(request, name):
    tok = request.getfixturevalue(name)
    text = "ab 🩳🩳 c 🩳 d"
    ids = tok.encode(text, add_special=False)
    dec = tok.stream_decoder()
    seen = ""
    for i in ids:
        seen += dec.put(i)
        assert text.startswith(seen) and "\ufffd" not in seen
        so_far = tok.decode(dec.ids)
        if "\ufffd" not in so_far:
            assert seen == so_far  # nothing held back once the text is complete
    assert seen + dec.flush() == text
    # a byte-level token can end with the first bytes of the emoji: the text before them is out already
    if name == "smollm":
        dec = tok.stream_decoder()
        first = [dec.put(i) for i in tok.encode("x 🩳", add_special=False)]
        assert first[0] == "x" and "".join(first) == "x 🩳"


def test_stream_decoder_bounded_on_invalid_bytes(gemma):
    ids = [gemma.token_to_id("<0xF0>")] * 40 + [gemma.token_to_id("▁ok")]
    dec = gemma.stream_decoder()
    pieces = [dec.put(i) for i in ids]
    assert any(pieces[: StreamDecoder.MAX_PENDING + 1])  # gave up waiting for the character to complete
    assert "".join(pieces) + dec.flush() == gemma.decode(ids)


@GEMMA
def test_no_double_bos_when_text_starts_with_bos(gemma):
    assert gemma.encode("<bos>Hi") == gemma.encode("Hi")
    assert gemma.encode("<bos>Hi", add_special=False) == gemma.encode("Hi")
    assert gemma.encode("x<bos>Hi")[:2] == [2, gemma.encode("x", add_special=False)[0]]
