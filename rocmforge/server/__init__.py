"""The OpenAI-compatible HTTP face of `rocmforge serve`: validation, the wire format, streaming, metrics.

FastAPI and friends come with the ``serve`` extra, so they are imported only
when the server is used, never by ``import rocmforge``.
"""

from __future__ import annotations

__all__ = ["create_app"]


def __getattr__(name: str):
    if name == "create_app":
        from .app import create_app

        return create_app
    raise AttributeError(name)
