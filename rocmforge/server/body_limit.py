"""Refuse oversized bodies while they arrive, before any of them is parsed.

A pure ASGI middleware: it reads the body itself, stops at the limit with a 413,
and replays what it read to the app. A lying or missing Content-Length cannot
get past it, and a client cannot make the server buffer more than the limit.
"""

from __future__ import annotations

import json

from .errors import error_body


class BodyLimitMiddleware:
    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            return await self._too_large(send)
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                return await self._too_large(send)
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body, replayed = b"".join(chunks), False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()   # after the body: disconnects reach the app as usual

        await self.app(scope, replay, send)

    async def _too_large(self, send):
        payload = json.dumps(error_body(f"request body larger than {self.max_bytes} bytes "
                                        f"(rocmforge serve --max-body-mb)", 413)).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(payload)).encode()), (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": payload})
