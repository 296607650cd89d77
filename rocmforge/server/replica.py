"""One engine replica behind Ray Serve: its model, its engine, the same OpenAI app as ``rocmforge serve``.

Ray Serve builds an ``EngineReplica`` in each replica's own process and asks it for its ASGI app
(``__serve_build_asgi_app__``, called after ``__init__``), so every replica serves exactly the
single-engine server's app, streaming included. Nothing here imports Ray at module level: the
launcher (``replicas.py``) wraps the class with ``serve.ingress`` once Ray is known to be there.
"""

from __future__ import annotations

import logging
import os
import socket
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

REPLICA_HEADER = "x-rocmforge-replica"          # Ray Serve's id of the replica that answered
REPLICA_PID_HEADER = "x-rocmforge-replica-pid"  # its process on its node (for operators and the failover test)
REPLICA_NODE_HEADER = "x-rocmforge-replica-node"


@dataclass(frozen=True)
class ReplicaOptions:
    """What a replica needs to build its engine: plain data, pickled to every replica."""
    model: str
    device: str = "cpu"
    kv_cache_dtype: str = "auto"
    engine_kwargs: dict = field(default_factory=dict)
    served_model_name: str | None = None
    max_body_bytes: int = 4 * 1024 * 1024


class ReplicaHeaders:
    """ASGI middleware: every HTTP response (SSE streams too) names the replica that produced it.

    Pure ASGI, not Starlette's BaseHTTPMiddleware: only the response-start message is touched,
    a streamed body passes through as it is sent."""

    def __init__(self, app, replica_id: str, pid: int, node: str):
        self.app = app
        self.headers = [(REPLICA_HEADER.encode(), replica_id.encode()),
                        (REPLICA_PID_HEADER.encode(), str(pid).encode()),
                        (REPLICA_NODE_HEADER.encode(), node.encode())]

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def send_named(message):
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *self.headers]}
            await send(message)

        return await self.app(scope, receive, send_named)


class EngineReplica:
    """A Ray Serve deployment body: loads the model and starts the engine in this replica's process."""

    def __init__(self, options: ReplicaOptions):
        from ..engine.async_engine import AsyncEngine
        from ..model import load_model

        self.options = options
        self.replica_id = _replica_id()
        self.model = load_model(options.model, device=options.device,
                                kv_cache_dtype=options.kv_cache_dtype).prepare()
        if self.model.tokenizer is None:
            raise ValueError(f"{options.model} has no tokenizer; rocmforge serve needs one")
        self.engine = AsyncEngine(self.model, **options.engine_kwargs)
        log.warning("rocmforge replica %s (pid %d): %s (%s on %s)", self.replica_id, os.getpid(),
                    self.model.path, self.model.arch, self.model.backend.name)

    def __serve_build_asgi_app__(self):
        from .app import create_app

        app = create_app(self.engine, self.model, served_model_name=self.options.served_model_name,
                         max_body_bytes=self.options.max_body_bytes)
        # added to the FastAPI app itself, which Ray Serve then still sees as one (docs, error handlers)
        app.add_middleware(ReplicaHeaders, replica_id=self.replica_id, pid=os.getpid(), node=socket.gethostname())
        return app


def _replica_id() -> str:
    try:
        from ray import serve

        return serve.get_replica_context().replica_id.unique_id
    except Exception:   # noqa: BLE001 - outside a Serve replica (a unit test): the process names it
        return f"pid-{os.getpid()}"
