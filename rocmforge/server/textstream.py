"""Token ids in, final text out: the stream decoder plus stop strings.

Text that may be the start of a stop string is held back until the next tokens
show it is not; when a stop string appears, the text before it is the last
piece and ``stopped`` tells the caller to end the request (the engine never
sees stop strings: they are text, and text is the face's business).
"""

from __future__ import annotations

from rocmforge.tokenizer import StreamDecoder, Tokenizer


def _held_back(text: str, stops: list[str]) -> int:
    """How many trailing characters of ``text`` could begin a stop string."""
    return max((k for s in stops for k in range(min(len(s) - 1, len(text)), 0, -1)
                if text.endswith(s[:k])), default=0)


class TextStream:
    def __init__(self, tokenizer: Tokenizer, stop: list[str] | None = None, skip_special: bool = True):
        self._decoder = StreamDecoder(tokenizer, skip_special=skip_special)
        self._stops = [s for s in (stop or []) if s]
        self._pending = ""
        self.stopped = False           # a stop string was found; nothing more will be emitted
        self.stop_string: str | None = None

    def put(self, token_id: int) -> str:
        """Feed one generated id; the text that is now final (possibly "")."""
        if self.stopped:
            return ""
        return self._release(self._decoder.put(token_id))

    def finish(self) -> str:
        """The end of the request: whatever was held back."""
        if self.stopped:
            return ""
        text = self._release(self._decoder.flush(), final=True)
        return text

    def _release(self, new: str, final: bool = False) -> str:
        text = self._pending + new
        if not self._stops:
            self._pending = ""
            return text
        hits = [(text.find(s), s) for s in self._stops if s in text]
        if hits:
            at, self.stop_string = min(hits)
            self.stopped, self._pending = True, ""
            return text[:at]
        keep = 0 if final else _held_back(text, self._stops)
        self._pending = text[len(text) - keep:] if keep else ""
        return text[: len(text) - keep]
