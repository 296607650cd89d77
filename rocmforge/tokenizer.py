"""Tokenizers: text <-> token ids, built from GGUF metadata or a Hugging Face folder.

Everything runs on the ``tokenizers`` library (Rust); this module wraps the
right ``tokenizers.Tokenizer`` for a model with what the engine needs: BOS
handling, the set of ids that end a turn, chat templates and a streaming
decoder. How a GGUF's metadata becomes a tokenizer is in ``tokenizer_gguf``.
"""

from __future__ import annotations

import json
import logging
import os
import pathlib
import threading
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from rocmforge.errors import ModelFormatError, RocmforgeError
from rocmforge.tokenizer_gguf import (
    CONTROL,
    END_OF_TURN_TEXTS,
    NORMAL,
    build_byte_level_bpe,
    build_sentencepiece_bpe,
    set_post_processor,
)

log = logging.getLogger(__name__)

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
        types = list(metadata.get("tokenizer.ggml.token_type") or [NORMAL] * len(tokens))
        if len(types) != len(tokens):
            raise ModelFormatError(
                f"{source}: tokenizer.ggml.token_type has {len(types)} entries, expected {len(tokens)} "
                f"(one per token)"
            )
        if model == "gpt2":
            backend = build_byte_level_bpe(metadata, tokens, types, source)
            default_add_bos = False
        elif model == "llama":
            backend = build_sentencepiece_bpe(metadata, tokens, types, source)
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
        set_post_processor(
            backend,
            bos=(tokens[bos_id], bos_id) if add_bos else None,
            eos=(tokens[eos_id], eos_id) if add_eos else None,
        )

        eos_ids = {i for i in (eos_id, _id("eot_token_id"), _id("eom_token_id")) if i is not None}
        for text in END_OF_TURN_TEXTS:
            i = backend.token_to_id(text)
            if i is not None and i < len(types) and types[i] == CONTROL:
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
            set_post_processor(
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
        for text in END_OF_TURN_TEXTS:
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
