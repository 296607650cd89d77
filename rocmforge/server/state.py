"""What every endpoint needs: the engine, the tokenizer, the model's name and limits."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from fastapi import Request

from .errors import APIError
from .formatting import TokenText
from .metrics import Metrics
from .structured import GrammarCompiler


@dataclass
class ServerState:
    engine: object
    tokenizer: object
    model_name: str
    max_model_len: int
    vocab_size: int
    metrics: Metrics
    compiler: GrammarCompiler
    token_text: TokenText
    created: int = field(default_factory=lambda: int(time.time()))

    def check_model(self, name: str | None) -> None:
        # OpenAI clients must name a model; we accept the served name or none at all
        if name is not None and name != self.model_name:
            raise APIError(f"the model {name!r} does not exist; this server serves {self.model_name!r}",
                           status=404, param="model", code="model_not_found")


def get_state(request: Request) -> ServerState:
    return request.app.state.rocmforge
