"""Structured outputs: JSON schemas, regexes and grammars compiled by llguidance into token masks.

llguidance walks the grammar over the tokenizer's byte strings and answers, for
each step, which token ids may come next (a bitmask). ``GrammarConstraint`` is
that matcher behind the engine's ``Constraint`` protocol: a NumPy bool mask as
wide as the model's logits (the tokenizer may be narrower: the extra ids are
never allowed), ``accept`` after each sampled token, ``is_finished`` once the
grammar can only end. Compile errors are a 400 before the engine sees anything.
"""

from __future__ import annotations

import json
import threading
from typing import Any

import numpy as np

from .errors import APIError

# compact JSON: the model cannot wander into unbounded whitespace between tokens
_JSON_OPTIONS = {"whitespace_flexible": False}


class GrammarConstraint:
    """One request's matcher (rocmforge.engine.protocol.Constraint)."""

    def __init__(self, matcher: Any, vocab_size: int):
        self._m = matcher
        self._vocab = vocab_size

    def allowed(self) -> np.ndarray:
        bits = np.unpackbits(np.frombuffer(self._m.compute_bitmask(), np.uint8), bitorder="little")
        mask = np.zeros(self._vocab, dtype=bool)
        n = min(self._vocab, bits.size)
        mask[:n] = bits[:n].astype(bool)
        return mask

    def accept(self, token_id: int) -> None:
        if not self._m.consume_token(int(token_id)):
            raise ValueError(f"token {token_id} is not allowed by the grammar: {self._m.get_error()}")

    def is_finished(self) -> bool:
        return self._m.is_stopped()


class GrammarCompiler:
    """Builds grammars for one model's tokenizer; the llguidance tokenizer is made once (~0.5 s)."""

    def __init__(self, tokenizer, vocab_size: int):
        self._tokenizer = tokenizer
        self.vocab_size = vocab_size
        self._ll = None
        self._lock = threading.Lock()

    def _ll_tokenizer(self):
        with self._lock:
            if self._ll is None:
                import llguidance

                text, eos = self._tokenizer.backend.to_str(), sorted(self._tokenizer.eos_ids) or None
                try:
                    self._ll = llguidance.LLTokenizer(text, n_vocab=self.vocab_size, eos_token=eos)
                except TypeError:
                    # llguidance before 1.9 takes one end token: the grammar then ends on the main one
                    # (the engine still stops on every id in eos_ids)
                    main = self._tokenizer.eos_id if self._tokenizer.eos_id is not None else (eos or [None])[0]
                    self._ll = llguidance.LLTokenizer(text, n_vocab=self.vocab_size, eos_token=main)
            return self._ll

    def grammar(self, kind: str, spec: Any, param: str) -> str:
        """llguidance grammar text for ``kind`` in json_schema | regex | lark | choice; 400 when it cannot."""
        from llguidance import LLMatcher

        try:
            if kind == "json_schema":
                if isinstance(spec, str):
                    spec = json.loads(spec)
                if not isinstance(spec, dict):
                    raise ValueError("a JSON schema must be an object")
                return LLMatcher.grammar_from_json_schema(spec, overrides=_JSON_OPTIONS)
            if kind == "regex":
                return LLMatcher.grammar_from_regex(spec)
            if kind == "lark":
                from llguidance import grammar_from

                return grammar_from("grammar", spec)    # Lark, or llama.cpp's GBNF converted to Lark
            if kind == "choice":
                return LLMatcher.grammar_from_lark("start: " + " | ".join(json.dumps(c) for c in spec))
        except (ValueError, TypeError) as exc:
            raise APIError(f"{param}: cannot compile: {exc}", param=param) from None
        raise AssertionError(kind)

    def check(self, grammar: str, param: str) -> None:
        from llguidance import LLMatcher

        is_error, messages = LLMatcher.validate_grammar_with_warnings(grammar, self._ll_tokenizer())
        if is_error:
            raise APIError(f"{param}: cannot compile: {messages[0].strip()}", param=param)

    def constraint(self, grammar: str) -> GrammarConstraint:
        from llguidance import LLMatcher

        matcher = LLMatcher(self._ll_tokenizer(), grammar, log_level=0)
        if matcher.is_error():
            raise APIError(f"cannot compile the grammar: {matcher.get_error()}")
        return GrammarConstraint(matcher, self.vocab_size)
