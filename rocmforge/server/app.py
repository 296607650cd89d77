"""The app factory: ``create_app(engine, model)`` wires an engine to the OpenAI face.

Tests hand it a fake engine; ``rocmforge serve`` hands it the real one. The app
owns nothing the engine owns: it validates, converts, streams and counts.
"""

from __future__ import annotations

import logging
import os
from contextlib import asynccontextmanager

from fastapi import FastAPI

from .body_limit import BodyLimitMiddleware
from .errors import install_error_handlers
from .formatting import TokenText
from .metrics import Metrics
from .routes_generate import router as generate_router
from .routes_info import router as info_router
from .state import ServerState
from .structured import GrammarCompiler

log = logging.getLogger(__name__)

DEFAULT_MAX_BODY_BYTES = 4 * 1024 * 1024


def create_app(engine, model, *, served_model_name: str | None = None,
               max_body_bytes: int = DEFAULT_MAX_BODY_BYTES) -> FastAPI:
    """An ASGI app serving ``model`` (its tokenizer and name) through ``engine`` (rocmforge.engine.protocol.Engine)."""
    tokenizer = model.tokenizer
    if tokenizer is None:
        raise ValueError(f"{model.path} has no tokenizer; the server needs one to turn text into tokens")
    name = served_model_name or os.path.basename(str(model.path).rstrip("/"))

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        await engine.shutdown()

    app = FastAPI(title="rocmforge", version=_version(), lifespan=lifespan,
                  description="An OpenAI-compatible API over the rocmforge engine.")
    app.state.rocmforge = ServerState(
        engine=engine, tokenizer=tokenizer, model_name=name, max_model_len=engine.max_model_len,
        vocab_size=engine.vocab_size, metrics=Metrics(engine, name),
        compiler=GrammarCompiler(tokenizer, engine.vocab_size), token_text=TokenText(tokenizer))
    install_error_handlers(app)
    app.include_router(generate_router)
    app.include_router(info_router)
    app.add_middleware(BodyLimitMiddleware, max_bytes=max_body_bytes)
    return app


def _version() -> str:
    from rocmforge import __version__

    return __version__
