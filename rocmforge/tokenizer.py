"""Tokenizers: text <-> token ids, built from GGUF metadata or a Hugging Face folder.

Everything runs on the ``tokenizers`` library (Rust); this module only builds
the right ``tokenizers.Tokenizer`` for a model and wraps it with what the
engine needs: BOS handling, the set of ids that end a turn, chat templates and
a streaming decoder.

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

import json
import logging
import os
import pathlib
import threading
from collections.abc import Iterable, Mapping, Sequence
from functools import lru_cache
from typing import Any

from rocmforge.errors import ModelFormatError, RocmforgeError

log = logging.getLogger(__name__)

# llama.cpp's token types (gguf.TokenType)
_NORMAL, _UNKNOWN, _CONTROL, _USER_DEFINED, _UNUSED, _BYTE = 1, 2, 3, 4, 5, 6

# Texts of tokens that end a turn in the chat formats we know. llama.cpp treats
# these as end-of-generation when the vocabulary has them as control tokens
# (llama-vocab.cpp, "special_eog_ids"); we do the same.
_END_OF_TURN_TEXTS = (
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


class Tokenizer:
    """Text <-> token ids for one model.

    Build it with ``Tokenizer.from_gguf_metadata(metadata)`` or
    ``Tokenizer.from_hf_folder(path)``; the constructor takes an already
    configured ``tokenizers.Tokenizer`` plus what it cannot express itself."""

    def __init__(
        self,
        backend: Any,
        *,
        bos_id: int | None = None,
        eos_id: int | None = None,
        eos_ids: Iterable[int] = (),
        chat_template: str | None = None,
        vocab_size: int | None = None,
        id_to_token_fallback: Sequence[str] | None = None,
        source: str = "<memory>",
    ):
        self._tok = backend
        self.bos_id = bos_id
        self.eos_ids: set[int] = set(eos_ids) | ({eos_id} if eos_id is not None else set())
        self._eos_id = eos_id if eos_id is not None else (min(self.eos_ids) if self.eos_ids else None)
        self.chat_template = chat_template
        self.vocab_size = (
            vocab_size if vocab_size is not None else backend.get_vocab_size(with_added_tokens=True)
        )
        self._id_to_token_fallback = id_to_token_fallback
        self.source = source
        self._lock = threading.Lock()  # guards the encode_special_tokens toggle

    # ----------------------------------------------------------------- basics
    @property
    def backend(self) -> Any:
        """The underlying ``tokenizers.Tokenizer``."""
        return self._tok

    @property
    def bos_token(self) -> str | None:
        return None if self.bos_id is None else self.id_to_token(self.bos_id)

    @property
    def eos_id(self) -> int | None:
        """The model's main end-of-sequence id (the one its template uses as ``eos_token``)."""
        return self._eos_id

    @property
    def eos_token(self) -> str | None:
        return None if self.eos_id is None else self.id_to_token(self.eos_id)

    def encode(self, text: str, add_special: bool = True, *, parse_special: bool = True) -> list[int]:
        """Token ids for ``text``.

        ``add_special`` adds what the model declares (BOS, rarely EOS); a
        text that already starts with the BOS token (a chat prompt rendered
        with ``{{ bos_token }}``) does not get a second one.
        ``parse_special``: special-token text such as ``<|im_end|>`` in
        ``text`` becomes its single id (as llama.cpp and transformers do);
        set False to tokenize untrusted text literally."""
        if parse_special:
            ids = self._tok.encode(text, add_special_tokens=add_special).ids
            bos = self.bos_id
            if (
                add_special
                and bos is not None
                and ids[:2] == [bos, bos]
                and text.startswith(self.bos_token or "\0")
            ):
                del ids[0]
            return ids
        with self._lock:
            self._tok.encode_special_tokens = True
            try:
                return self._tok.encode(text, add_special_tokens=add_special).ids
            finally:
                self._tok.encode_special_tokens = False

    def decode(self, ids: Iterable[int], skip_special: bool = True) -> str:
        """Text for ``ids``; special tokens (BOS, ``<|im_end|>``, ...) are dropped unless ``skip_special=False``."""
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=skip_special)

    def token_to_id(self, token: str) -> int | None:
        return self._tok.token_to_id(token)

    def id_to_token(self, token_id: int) -> str | None:
        tok = self._tok.id_to_token(int(token_id))
        if (
            tok is None
            and self._id_to_token_fallback is not None
            and 0 <= token_id < len(self._id_to_token_fallback)
        ):
            tok = self._id_to_token_fallback[token_id]
        return tok

    def is_special(self, token_id: int) -> bool:
        """True for control tokens (BOS, EOS, ``<|im_start|>``, ...)."""
        return int(token_id) in self._special_ids

    @property
    def _special_ids(self) -> frozenset[int]:
        cached = getattr(self, "_special_ids_cache", None)
        if cached is None:
            decoder = self._tok.get_added_tokens_decoder()
            cached = frozenset(i for i, t in decoder.items() if t.special)
            self._special_ids_cache = cached
        return cached

    def stream_decoder(self, skip_special: bool = True) -> StreamDecoder:
        return StreamDecoder(self, skip_special=skip_special)

    # ---------------------------------------------------------- chat template
    def apply_chat_template(
        self, messages: Sequence[Mapping[str, Any]], add_generation_prompt: bool = True, **kwargs: Any
    ) -> str:
        """Render ``messages`` (``[{"role": ..., "content": ...}]``) with the model's chat template.

        A model without a template gets ``chat_template.fallback_template``."""
        from rocmforge.chat_template import fallback_template, render

        template = self.chat_template or fallback_template(self)
        return render(
            template,
            messages,
            add_generation_prompt=add_generation_prompt,
            bos_token=self.bos_token or "",
            eos_token=self.eos_token or "",
            **kwargs,
        )

    def encode_chat(
        self, messages: Sequence[Mapping[str, Any]], add_generation_prompt: bool = True, **kwargs: Any
    ) -> list[int]:
        """Token ids of the rendered chat, with BOS exactly once.

        Templates that write ``bos_token`` themselves (Gemma, Llama 3) keep
        theirs; for templates that don't (ChatML) ``encode`` adds it when the
        model wants one."""
        text = self.apply_chat_template(messages, add_generation_prompt=add_generation_prompt, **kwargs)
        return self.encode(text)

    # ------------------------------------------------------------ constructors
    @classmethod
    def from_gguf_metadata(cls, metadata: Mapping[str, Any], source: str = "<gguf>") -> Tokenizer:
        """Build from GGUF metadata: key -> plain Python value (strings, lists)."""
        model = metadata.get("tokenizer.ggml.model")
        tokens = metadata.get("tokenizer.ggml.tokens")
        if model is None or tokens is None:
            raise ModelFormatError(
                f"{source}: no tokenizer in the GGUF metadata (expected keys 'tokenizer.ggml.model' and "
                f"'tokenizer.ggml.tokens', found model={model!r}, tokens={'present' if tokens else 'absent'})"
            )
        tokens = list(tokens)
        types = list(metadata.get("tokenizer.ggml.token_type") or [_NORMAL] * len(tokens))
        if len(types) != len(tokens):
            raise ModelFormatError(
                f"{source}: tokenizer.ggml.token_type has {len(types)} entries, expected {len(tokens)} "
                f"(one per token)"
            )
        if model == "gpt2":
            backend = _build_byte_level_bpe(metadata, tokens, types, source)
            default_add_bos = False
        elif model == "llama":
            backend = _build_sentencepiece_bpe(metadata, tokens, types, source)
            # llama.cpp adds BOS for a SentencePiece vocabulary that does not say otherwise
            default_add_bos = True
        else:
            raise RocmforgeError(
                f"{source}: tokenizer.ggml.model is {model!r}; supported: 'gpt2' (byte-level BPE) and "
                f"'llama' (SentencePiece)"
            )

        def _id(key: str) -> int | None:
            v = metadata.get(f"tokenizer.ggml.{key}")
            if v is None:
                return None
            v = int(v)
            if not 0 <= v < len(tokens):
                raise ModelFormatError(
                    f"{source}: tokenizer.ggml.{key} = {v} is outside the vocabulary (0..{len(tokens) - 1})"
                )
            return v

        bos_id, eos_id = _id("bos_token_id"), _id("eos_token_id")
        add_bos = bool(metadata.get("tokenizer.ggml.add_bos_token", default_add_bos)) and bos_id is not None
        add_eos = bool(metadata.get("tokenizer.ggml.add_eos_token", False)) and eos_id is not None
        _set_post_processor(
            backend,
            bos=(tokens[bos_id], bos_id) if add_bos else None,
            eos=(tokens[eos_id], eos_id) if add_eos else None,
        )

        eos_ids = {i for i in (eos_id, _id("eot_token_id"), _id("eom_token_id")) if i is not None}
        for text in _END_OF_TURN_TEXTS:
            i = backend.token_to_id(text)
            if i is not None and i < len(types) and types[i] == _CONTROL:
                eos_ids.add(i)

        return cls(
            backend,
            bos_id=bos_id,
            eos_id=eos_id,
            eos_ids=eos_ids,
            chat_template=metadata.get("tokenizer.chat_template"),
            vocab_size=len(tokens),
            id_to_token_fallback=tokens,
            source=source,
        )

    @classmethod
    def from_hf_folder(cls, path: str | os.PathLike) -> Tokenizer:
        """Build from a Hugging Face folder: ``tokenizer.json`` plus, when present,
        ``tokenizer_config.json``, ``special_tokens_map.json``, ``chat_template.jinja``
        / ``chat_template.json`` and ``generation_config.json`` (extra EOS ids)."""
        from tokenizers import Tokenizer as _Backend

        folder = pathlib.Path(path)
        tj = folder / "tokenizer.json"
        if not tj.is_file():
            raise ModelFormatError(
                f"{folder}: no tokenizer.json (only fast tokenizers are supported; convert a "
                f"SentencePiece tokenizer.model with transformers' save_pretrained first)"
            )
        try:
            backend = _Backend.from_file(str(tj))
        except Exception as e:
            raise ModelFormatError(f"{tj}: not a valid tokenizers file: {e}") from e
        config = _read_json(folder / "tokenizer_config.json")
        special_map = _read_json(folder / "special_tokens_map.json")
        gen_config = _read_json(folder / "generation_config.json")

        def token_text(v: Any) -> str | None:
            if isinstance(v, dict):  # serialized AddedToken
                return v.get("content")
            return v if isinstance(v, str) else None

        def token_id(name: str) -> int | None:
            text = token_text(config.get(name)) or token_text(special_map.get(name))
            return backend.token_to_id(text) if text else None

        bos_id, eos_id = token_id("bos_token"), token_id("eos_token")

        # BOS: the post-processor may add it already (Llama 3); otherwise the
        # config's add_bos_token asks for it (older Llama/Gemma exports).
        probe = backend.encode("a", add_special_tokens=True).ids
        adds_bos = bos_id is not None and bool(probe) and probe[0] == bos_id
        if not adds_bos and config.get("add_bos_token") and bos_id is not None:
            add_eos = bool(config.get("add_eos_token")) and eos_id is not None
            _set_post_processor(
                backend,
                bos=(backend.id_to_token(bos_id), bos_id),
                eos=(backend.id_to_token(eos_id), eos_id) if add_eos else None,
            )

        eos_ids: set[int] = set()
        if eos_id is not None:
            eos_ids.add(eos_id)
        gen_eos = gen_config.get("eos_token_id")
        for i in gen_eos if isinstance(gen_eos, list) else [gen_eos]:
            if isinstance(i, int):
                eos_ids.add(i)
        specials = backend.get_added_tokens_decoder()
        for text in _END_OF_TURN_TEXTS:
            i = backend.token_to_id(text)
            if i is not None and i in specials and specials[i].special:
                eos_ids.add(i)

        return cls(
            backend,
            bos_id=bos_id,
            eos_id=eos_id,
            eos_ids=eos_ids,
            chat_template=_hf_chat_template(folder, config),
            source=str(folder),
        )

    def __repr__(self) -> str:
        return (
            f"Tokenizer(source={self.source!r}, vocab_size={self.vocab_size}, bos_id={self.bos_id}, "
            f"eos_ids={sorted(self.eos_ids)})"
        )


class StreamDecoder:
    """Turn token ids, fed one at a time, into text pieces.

    A piece never ends inside a UTF-8 character: the bytes of an incomplete
    character (which decode to U+FFFD) are held back until it is complete.
    At the end of the stream, ``flush()`` returns whatever is still held
    back, and ``"".join(pieces) + flush() == tokenizer.decode(all_ids)``.

    Each step decodes a short window of tokens: those not yet settled plus
    the ones back to the previous settled boundary, so rules that depend on
    the neighbouring token (SentencePiece's ``▁``, the leading-space strip)
    see the same context as a full decode and the cost per token stays
    constant."""

    # After this many unsettled tokens whose text still ends in U+FFFD, the
    # U+FFFD is taken as final (the model produced invalid bytes), so a stream
    # of garbage cannot grow the window without bound.
    MAX_PENDING = 16

    def __init__(self, tokenizer: Tokenizer, skip_special: bool = True):
        self._tok = tokenizer
        self._skip = skip_special
        self._ids: list[int] = []
        self._prefix = 0  # window start
        self._read = 0  # text of ids[_prefix:_read] is settled and emitted
        self._partial = ""  # text emitted from ids[_read:] (complete characters before a pending one)

    def put(self, token_id: int) -> str:
        """Feed one id; return the new text (possibly "")."""
        self._ids.append(int(token_id))
        prefix_text = self._decode(self._prefix, self._read)
        full_text = self._decode(self._prefix, len(self._ids))
        if not full_text.startswith(prefix_text):
            return ""  # context changed the settled text; wait for more (not seen with our decoders)
        new = full_text[len(prefix_text) :]
        if not new.startswith(self._partial):
            return ""
        pending = new.endswith("\ufffd") and len(self._ids) - self._read < self.MAX_PENDING
        if pending:
            # emit the complete characters before the incomplete one
            stable = new.rstrip("\ufffd")
            piece = stable[len(self._partial) :]
            self._partial = stable if piece else self._partial
            return piece
        piece = new[len(self._partial) :]
        self._prefix, self._read, self._partial = self._read, len(self._ids), ""
        return piece

    __call__ = put

    def flush(self) -> str:
        """At the end of the stream: the text still held back (an incomplete character becomes U+FFFD)."""
        prefix_text = self._decode(self._prefix, self._read)
        full_text = self._decode(self._prefix, len(self._ids))
        new = full_text.removeprefix(prefix_text)
        piece = new.removeprefix(self._partial)
        self._prefix, self._read, self._partial = self._read, len(self._ids), ""
        return piece

    @property
    def ids(self) -> list[int]:
        """Every id fed so far."""
        return list(self._ids)

    def _decode(self, start: int, stop: int) -> str:
        if start >= stop:
            return ""
        return self._tok.decode(self._ids[start:stop], skip_special=self._skip)


# ---------------------------------------------------------------- GGUF builders


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


def _build_byte_level_bpe(
    metadata: Mapping[str, Any], tokens: list[str], types: list[int], source: str
) -> Any:
    from tokenizers import AddedToken, Regex, decoders, models, pre_tokenizers
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
    special = [
        AddedToken(t, special=True, normalized=False)
        for t, ty in zip(tokens, types)
        if ty in (_CONTROL, _UNKNOWN) and set(t) <= spelled
    ]
    user = [
        AddedToken(t, special=False, normalized=False)
        for t, ty in zip(tokens, types)
        if ty == _USER_DEFINED and t in vocab
    ]
    backend.add_special_tokens(special)
    backend.add_tokens(user)
    return backend


def _build_sentencepiece_bpe(
    metadata: Mapping[str, Any], tokens: list[str], types: list[int], source: str
) -> Any:
    from tokenizers import AddedToken, decoders, models, normalizers
    from tokenizers import Tokenizer as _Backend

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

    special = [
        AddedToken(t, special=True, normalized=False)
        for t, ty in zip(tokens, types)
        if ty in (_CONTROL, _UNKNOWN)
    ]
    user = [
        AddedToken(t, special=False, normalized=False)
        for t, ty in zip(tokens, types)
        if ty == _USER_DEFINED and t in vocab
    ]
    backend.add_special_tokens(special)
    backend.add_tokens(user)
    return backend


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


def _set_post_processor(backend: Any, bos: tuple[str, int] | None, eos: tuple[str, int] | None) -> None:
    from tokenizers import processors

    if bos is None and eos is None:
        return
    single = (["$A:0"] if bos is None else [f"{bos[0]}:0", "$A:0"]) + ([] if eos is None else [f"{eos[0]}:0"])
    pair = single + [x.replace("$A", "$B").replace(":0", ":1") for x in single]
    backend.post_processor = processors.TemplateProcessing(
        single=single, pair=pair, special_tokens=[t for t in (bos, eos) if t is not None]
    )


# ---------------------------------------------------------------- HF helpers


def _read_json(path: pathlib.Path) -> dict:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ModelFormatError(f"{path}: not valid JSON: {e}") from e
    return data if isinstance(data, dict) else {}


def _hf_chat_template(folder: pathlib.Path, config: Mapping[str, Any]) -> str | None:
    jinja = folder / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8")
    tmpl = _read_json(folder / "chat_template.json").get("chat_template") or config.get("chat_template")
    if isinstance(tmpl, list):  # named templates: [{"name": "default", "template": ...}, ...]
        named = {t.get("name"): t.get("template") for t in tmpl if isinstance(t, dict)}
        tmpl = named.get("default") or next(iter(named.values()), None)
    return tmpl if isinstance(tmpl, str) else None
