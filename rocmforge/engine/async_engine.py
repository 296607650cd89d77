"""The engine for the server: LLMEngine's step loop in one background thread, asyncio on the outside.

The model is not thread-safe, so exactly one thread (``rocmforge-engine``) touches the LLMEngine:
requests and aborts reach it through a thread-safe queue, and each request's events go back to the
asyncio queue of the ``generate`` call that made it, through ``loop.call_soon_threadsafe``. When a
client goes away, its ``generate`` iterator is closed (GeneratorExit or CancelledError inside it):
that sends an abort, and the thread frees the request's blocks before its next step.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from collections.abc import AsyncIterator, Hashable
from dataclasses import replace

from .llm_engine import LLMEngine
from .protocol import EngineRequest, EngineStats, TokenEvent

log = logging.getLogger(__name__)

_IDLE_WAIT_S = 0.5      # how long the idle thread sleeps on the inbox before checking for shutdown


class AsyncEngine:
    """Implements rocmforge.engine.protocol.Engine. Arguments are LLMEngine's; a server's engine captures
    its GPU decode graphs at start-up (``capture_graphs``)."""

    def __init__(self, model, max_num_seqs: int = 16, max_model_len: int | None = None,
                 kv_cache_gb: float | None = None, num_blocks: int | None = None, block_size: int = 16,
                 max_num_batched_tokens: int | None = None, enable_prefix_caching: bool = True, model_step=None,
                 eos_ids=None, capture_graphs: bool = True):
        self.engine = LLMEngine(model, max_num_seqs=max_num_seqs, max_model_len=max_model_len,
                                kv_cache_gb=kv_cache_gb, num_blocks=num_blocks, block_size=block_size,
                                max_num_batched_tokens=max_num_batched_tokens,
                                enable_prefix_caching=enable_prefix_caching, model_step=model_step, eos_ids=eos_ids,
                                capture_graphs=capture_graphs)
        self.vocab_size = self.engine.vocab_size
        self.max_model_len = self.engine.max_model_len
        self._inbox: queue.Queue = queue.Queue()
        self._outboxes: dict[Hashable, tuple[asyncio.AbstractEventLoop, asyncio.Queue]] = {}   # engine thread only
        self._lock = threading.Lock()
        self._active: set[Hashable] = set()        # ids handed to generate() and not finished
        self._stats = self.engine.stats()
        self._stopping = False
        self._pending: list = []       # the last step's events, handed on during the next (_deliver_pending)
        self._thread = threading.Thread(target=self._run, name="rocmforge-engine", daemon=True)
        self._thread.start()

    # ---- the face's side
    async def generate(self, request: EngineRequest) -> AsyncIterator[TokenEvent]:
        if self._stopping:
            raise RuntimeError("the engine is shut down")
        self.engine.validate(request)
        rid = request.request_id
        with self._lock:
            if rid in self._active:
                raise ValueError(f"request id {rid!r} is already in use")
            self._active.add(rid)
        events: asyncio.Queue = asyncio.Queue()
        self._inbox.put(("add", request, asyncio.get_running_loop(), events))
        done = False
        try:
            while True:
                ev = await events.get()
                if isinstance(ev, BaseException):
                    done = True
                    raise ev
                if ev.finish_reason is not None:
                    done = True
                yield ev
                if done:
                    return
        finally:
            if not done:     # the consumer left early: free the request's blocks now
                self._inbox.put(("abort", rid))

    def abort(self, request_id: Hashable) -> None:
        self._inbox.put(("abort", request_id))

    def stats(self) -> EngineStats:
        with self._lock:
            return replace(self._stats, extra=dict(self._stats.extra))

    async def shutdown(self) -> None:
        self._stop()
        await asyncio.get_running_loop().run_in_executor(None, self._thread.join)

    def shutdown_now(self) -> None:
        """shutdown() for code without an event loop."""
        self._stop()
        self._thread.join()

    def _stop(self) -> None:
        if not self._stopping:
            self._stopping = True
            self._inbox.put(("stop",))

    # ---- the engine thread
    def _run(self) -> None:
        eng = self.engine
        while True:
            try:
                cmd = self._inbox.get(timeout=_IDLE_WAIT_S) if not eng.has_unfinished() else self._inbox.get_nowait()
            except queue.Empty:
                cmd = None
            stop = False
            while cmd is not None:
                stop |= self._command(cmd)
                try:
                    cmd = self._inbox.get_nowait()
                except queue.Empty:
                    cmd = None
            if stop:
                for rid in list(eng.requests):
                    self._deliver(eng.abort(rid))
                self._snapshot()
                if eng.trace is not None:
                    eng.trace.close()
                return
            if eng.has_unfinished():
                try:
                    events = eng.step(while_running=self._deliver_pending)
                except Exception as exc:     # noqa: BLE001 - a bug in a step must not kill the server
                    log.exception("engine step failed; failing its requests")
                    self._deliver_pending()
                    events = [eng.fail(rid, f"engine step failed: {type(exc).__name__}: {exc}")
                              for rid in list(eng.requests)]
                self._deliver_pending()      # a step that ran no forward did not hand them on
                self._pending = events
                if not eng.has_unfinished():
                    self._deliver_pending()
                if eng.trace is not None:
                    eng.trace.mark()
            else:
                self._deliver_pending()
            self._snapshot()

    def _deliver_pending(self) -> None:
        """Hand the last step's events to the event loop. The thread calls this once the next step's
        forward is queued (LLMEngine.step's ``while_running``), so the event loop's work on them (SSE
        chunks, detokenising) runs while the GPU computes, not against the next step's launches for
        the GIL; a token reaches its client one launch later, ~0.2 ms."""
        events, self._pending = self._pending, []
        if events:
            self._deliver_all(events)

    def _command(self, cmd: tuple) -> bool:
        self._deliver_pending()     # an abort's last event must follow the request's earlier ones
        if cmd[0] == "stop":
            return True
        if cmd[0] == "add":
            _, request, loop, events = cmd
            self._outboxes[request.request_id] = (loop, events)
            try:
                self.engine.add_request(request)
            except ValueError as exc:
                self._put(request.request_id, exc, last=True)
        elif cmd[0] == "abort":
            ev = self.engine.abort(cmd[1])
            if ev is not None:
                self._deliver(ev)
        return False

    def _deliver_all(self, events: list) -> None:
        """A step's events, one wake-up per event loop: call_soon_threadsafe writes the loop's self-pipe
        each time, and 64 streams made 64 wake-ups a step (benchmarks/serve_overhead.py)."""
        batches: dict = {}
        for ev in events:
            if ev is None:
                continue
            last = ev.finish_reason is not None
            target = self._outboxes.pop(ev.request_id, None) if last else self._outboxes.get(ev.request_id)
            if last:
                with self._lock:
                    self._active.discard(ev.request_id)
            if target is not None:
                loop, queue_ = target
                batches.setdefault(loop, []).append((queue_, ev, last))
        for loop, items in batches.items():
            try:
                loop.call_soon_threadsafe(_put_all, items)
            except RuntimeError:      # the consumers' event loop is closed: nobody is listening
                for _, ev, last in items:
                    if not last:
                        self._command(("abort", ev.request_id))

    def _deliver(self, ev: TokenEvent | None) -> None:
        if ev is not None:
            self._put(ev.request_id, ev, last=ev.finish_reason is not None)

    def _put(self, rid: Hashable, item, last: bool) -> None:
        target = self._outboxes.pop(rid, None) if last else self._outboxes.get(rid)
        if last:
            with self._lock:
                self._active.discard(rid)
        if target is None:
            return
        loop, events = target
        try:
            loop.call_soon_threadsafe(events.put_nowait, item)
        except RuntimeError:      # the consumer's event loop is closed: nobody is listening
            if not last:
                self._command(("abort", rid))

    def _snapshot(self) -> None:
        st = self.engine.stats()
        with self._lock:
            self._stats = st


def _put_all(items) -> None:
    """On the event loop: hand each event to its generate() call's queue."""
    for queue_, ev, _ in items:
        queue_.put_nowait(ev)
