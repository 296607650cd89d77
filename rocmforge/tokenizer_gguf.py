"""Rebuilding a ``tokenizers.Tokenizer`` from GGUF tokenizer metadata.

GGUF files carry no ``tokenizer.json``. They describe the tokenizer with
llama.cpp's metadata keys, and we rebuild the equivalent object:

``tokenizer.ggml.model == "gpt2"``
    Byte-level BPE (GPT-2, Llama 3, Qwen2, SmolLM, ...). The vocabulary is
    spelled in GPT-2's byte alphabet and ``tokenizer.ggml.merges`` lists the
    merges best-first. How text is cut into words before merging depends on
    ``tokenizer.ggml.pre``; the regexes are llama.cpp's (``llama-vocab.cpp``),
    which in turn are the ones in each model's original ``tokenizer.json``.

``tokenizer.ggml.model == "llama"``
    SentencePiece BPE (Llama 2, Mistral, Gemma, ...): ``▁`` stands for a space,
    unknown characters fall back to ``<0xNN>`` byte tokens, and a space may be
    prepended to the text (``tokenizer.ggml.add_space_prefix``). The file has
    no merges; SentencePiece merges the adjacent pair whose union is the best
    vocabulary entry, which is BPE with merges derived from the vocabulary,
    ranked by that entry. We rank by position in the vocabulary (what
    transformers does; for Gemma the scores are not in merge order, and for
    Llama-style files position and score agree).

Token types (``tokenizer.ggml.token_type``): CONTROL (3) and UNKNOWN (2) become
special added tokens, USER_DEFINED (4) plain added tokens, so both are matched
whole in the text instead of being cut into pieces.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from functools import lru_cache
from typing import Any

from rocmforge.errors import ModelFormatError

log = logging.getLogger(__name__)

# llama.cpp's token types (gguf.TokenType)
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6

# Texts of tokens that end a turn in the chat formats we know. llama.cpp treats
# these as end-of-generation when the vocabulary has them as control tokens
# (llama-vocab.cpp, "special_eog_ids"); we do the same.
END_OF_TURN_TEXTS = (
    "<|eot_id|>",  # Llama 3
    "<|eom_id|>",  # Llama 3.1 tool calls
    "<|im_end|>",  # ChatML: Qwen, SmolLM, ...
    "<|end|>",  # Phi-3
    "<end_of_turn>",  # Gemma
    "<|endoftext|>",  # GPT-2 family, SmolLM, Qwen
    "<|end_of_text|>",  # Llama 3 base
    "<EOT>",
    "_<EOT>",
    "<｜end▁of▁sentence｜>",  # DeepSeek
    "<|return|>",  # gpt-oss
    "<|call|>",  # gpt-oss
)

# Pre-tokenizer regexes, from llama.cpp's llm_tokenizer_bpe (keyed by
# tokenizer.ggml.pre). llama.cpp runs a list of regexes one after the other,
# each splitting the pieces the previous one left; so do we (Split, isolated).
# Where llama.cpp rewrote ``(?i:'s|...)`` for its own regex engine we keep the
# original spelling from tokenizer.json, which Oniguruma (used by tokenizers)
# understands.
_GPT2 = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"
_LLAMA3 = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2 = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_GPT4O = (
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
    r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
    r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_TEKKEN = (
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+"
    r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*"
    r"|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_PRE_TOKENIZER_REGEXES: dict[str, tuple[str, ...]] = {
    # llama.cpp's fallback for a pre type it does not know
    "default": (r"[\p{P}\$\+<=>\^~\|]+", _GPT2, r"\p{N}+", r"[0-9][0-9][0-9]"),
    "gpt-2": (_GPT2,),
    "gpt2": (_GPT2,),
    "mpt": (_GPT2,),
    "olmo": (_GPT2,),
    "jais": (_GPT2,),
    "trillion": (_GPT2,),
    "granite-docling": (_GPT2,),
    # GPT-2 regex after splitting off every digit (SmolLM, StarCoder, ...)
    "smollm": (r"\p{N}", _GPT2),
    "starcoder": (r"\p{N}", _GPT2),
    "refact": (r"\p{N}", _GPT2),
    "command-r": (r"\p{N}", _GPT2),
    "codeshell": (r"\p{N}", _GPT2),
    "exaone": (r"\p{N}", _GPT2),
    "minerva-7b": (r"\p{N}", _GPT2),
    "llama-bpe": (_LLAMA3,),
    "llama3": (_LLAMA3,),
    "llama-v3": (_LLAMA3,),
    "dbrx": (_LLAMA3,),
    "smaug-bpe": (_LLAMA3,),
    "falcon3": (_LLAMA3,),
    "pixtral": (_LLAMA3,),
    "chatglm-bpe": (_LLAMA3,),
    "qwen2": (_QWEN2,),
    "stablelm2": (_QWEN2,),
    "deepseek-r1-qwen": (_QWEN2,),
    "hunyuan": (_QWEN2,),
    "gpt-4o": (_GPT4O,),
    "llama4": (_GPT4O,),
    "minimax-m2": (_GPT4O,),
    "tekken": (_TEKKEN,),
    "falcon": (
        r"[\p{P}\$\+<=>\^~\|`]+",
        _GPT2,
        r"[0-9][0-9][0-9]",
    ),
}



@lru_cache(maxsize=1)
def _byte_alphabet() -> dict[int, str]:
    """GPT-2's map from bytes to printable characters used to spell byte-level vocabularies."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    mapping = {b: chr(b) for b in printable}
    n = 0
    for b in range(256):
        if b not in mapping:
            mapping[b] = chr(256 + n)
            n += 1
    return mapping


def build_byte_level_bpe(
    metadata: Mapping[str, Any], tokens: list[str], types: list[int], source: str
) -> Any:
    from tokenizers import Regex, decoders, models, pre_tokenizers
    from tokenizers import Tokenizer as _Backend

    merges_raw = metadata.get("tokenizer.ggml.merges")
    if not merges_raw:
        raise ModelFormatError(f"{source}: a 'gpt2' (byte-level BPE) tokenizer needs tokenizer.ggml.merges")
    alphabet = _byte_alphabet()
    spelled = set(alphabet.values())
    # A token outside the byte alphabet (rare: a mislabeled added token) is
    # respelled byte by byte so the BPE model accepts it.
    vocab: dict[str, int] = {}
    for i, t in enumerate(tokens):
        if not set(t) <= spelled:
            t = "".join(alphabet[b] for b in t.encode("utf-8"))
        vocab.setdefault(t, i)
    merges = []
    for m in merges_raw:
        left, sep, right = m.partition(" ")
        if not sep:
            raise ModelFormatError(f"{source}: tokenizer.ggml.merges entry {m!r} is not 'left right'")
        merges.append((left, right))
    backend = _Backend(models.BPE(vocab=vocab, merges=merges, fuse_unk=False, byte_fallback=False))

    pre = str(metadata.get("tokenizer.ggml.pre") or "default")
    regexes = _PRE_TOKENIZER_REGEXES.get(pre)
    if regexes is None:
        log.warning("%s: unknown tokenizer.ggml.pre %r; using llama.cpp's default pre-tokenizer", source, pre)
        regexes = _PRE_TOKENIZER_REGEXES["default"]
    if regexes == (_GPT2,):
        backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    else:
        backend.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.Split(Regex(r), behavior="isolated") for r in regexes]
            + [pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]
        )
    backend.decoder = decoders.ByteLevel()

    # Control tokens spelled outside the byte alphabet are llama.cpp mislabels:
    # adding them would grow the vocabulary past what the model has.
    _add_token_types(backend, tokens, types, vocab, lambda t: set(t) <= spelled)
    return backend


def build_sentencepiece_bpe(
    metadata: Mapping[str, Any], tokens: list[str], types: list[int], source: str
) -> Any:
    from tokenizers import Tokenizer as _Backend
    from tokenizers import decoders, models, normalizers

    # Gemma stores tokens made only of spaces with real spaces; the text they
    # match has been rewritten to "▁" by then, so spell them that way.
    existing = set(tokens)
    spelled_tokens = [
        "▁" * len(t) if t and not t.strip(" ") and "▁" * len(t) not in existing else t for t in tokens
    ]
    vocab: dict[str, int] = {}
    for i, t in enumerate(spelled_tokens):
        vocab[t] = i  # last one wins on duplicates, like transformers' converter
    merges = _merges_from_vocab(vocab)

    unk_id = metadata.get("tokenizer.ggml.unknown_token_id")
    unk = tokens[int(unk_id)] if unk_id is not None and 0 <= int(unk_id) < len(tokens) else None
    backend = _Backend(
        models.BPE(vocab=vocab, merges=merges, unk_token=unk, fuse_unk=True, byte_fallback=True)
    )

    add_prefix = bool(metadata.get("tokenizer.ggml.add_space_prefix", True))
    norm = [normalizers.Replace(" ", "▁")]
    dec = [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
    if add_prefix:
        # SentencePiece's dummy prefix: llama.cpp adds it to the start of the
        # text and after every special token, i.e. to each piece of text
        # between added tokens, which is exactly where a normalizer runs.
        norm.insert(0, normalizers.Prepend("▁"))
        dec.append(decoders.Strip(" ", 1, 0))
    backend.normalizer = normalizers.Sequence(norm)
    backend.pre_tokenizer = None
    backend.decoder = decoders.Sequence(dec)

    _add_token_types(backend, tokens, types, vocab, lambda t: True)
    return backend


def _add_token_types(backend: Any, tokens: list[str], types: list[int], vocab: Mapping[str, int],
                     spellable: Any) -> None:
    """Control/unknown tokens become special added tokens and user-defined ones plain added
    tokens, so the text matches them whole instead of cutting them into pieces."""
    from tokenizers import AddedToken

    special = [AddedToken(t, special=True, normalized=False)
               for t, ty in zip(tokens, types) if ty in (CONTROL, UNKNOWN) and spellable(t)]
    user = [AddedToken(t, special=False, normalized=False)
            for t, ty in zip(tokens, types) if ty == USER_DEFINED and t in vocab]
    backend.add_special_tokens(special)
    backend.add_tokens(user)


def _merges_from_vocab(vocab: dict[str, int]) -> list[tuple[str, str]]:
    """The merges a SentencePiece BPE vocabulary implies.

    Every way to cut a token into two tokens is a merge; merges producing an
    earlier (better) token come first, and among the cuts of one token the
    longer left part comes first (transformers' ``generate_merges`` order, so
    ids match it exactly)."""
    ranked: list[tuple[int, int, str, str]] = []
    for token, idx in vocab.items():
        for cut in range(1, len(token)):
            left, right = token[:cut], token[cut:]
            if left in vocab and right in vocab:
                ranked.append((idx, -cut, left, right))
    ranked.sort()
    return [(left, right) for _, _, left, right in ranked]


def set_post_processor(backend: Any, bos: tuple[str, int] | None, eos: tuple[str, int] | None) -> None:
    from tokenizers import processors

    if bos is None and eos is None:
        return
    single = (["$A:0"] if bos is None else [f"{bos[0]}:0", "$A:0"]) + ([] if eos is None else [f"{eos[0]}:0"])
    pair = single + [x.replace("$A", "$B").replace(":0", ":1") for x in single]
    backend.post_processor = processors.TemplateProcessing(
        single=single, pair=pair, special_tokens=[t for t in (bos, eos) if t is not None]
    )
