"""``rocmforge serve smollm2 --replicas 2``: two CPU engine replicas behind one endpoint through Ray Serve.

A real server process: concurrent requests reach both replicas (the x-rocmforge-replica header
says which), both answer the same greedy text, streamed too; one replica's process is killed and
every later request is still answered while Ray starts a replacement; then the server stops and
no process it started (the local Ray instance included) is left behind.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from models import needs_smollm2

from .conftest import serve_process

pytest.importorskip("ray.serve", reason="the replica server needs the ray extra: pip install 'rocmforge[ray]'")
httpx = pytest.importorskip("httpx")

REPLICA = "x-rocmforge-replica"
PID = "x-rocmforge-replica-pid"
NODE = "x-rocmforge-replica-node"
BODY = {"model": "smol", "prompt": "The capital of France is", "max_tokens": 6, "temperature": 0}


def _complete(url: str) -> httpx.Response:
    r = httpx.post(url + "/v1/completions", json=BODY, timeout=60)
    assert r.status_code == 200, r.text
    return r


def _until(deadline_s: float, what: str, probe):
    """Call probe() until it returns something truthy; fail naming ``what`` after ``deadline_s``."""
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        got = probe()
        if got:
            return got
        time.sleep(0.2)
    pytest.fail(f"{what} within {deadline_s:g} s")


def _server_pid(url: str) -> int:
    """The ``rocmforge serve`` child of this test process listening on ``url``'s port."""
    port = url.rsplit(":", 1)[1]
    for p in _descendants(os.getpid(), depth=1):
        args = Path(f"/proc/{p}/cmdline").read_bytes().split(b"\0")
        if b"serve" in args and port.encode() in args:
            return p
    pytest.fail(f"no server process for {url} among this test's children")


def _descendants(root: int, depth: int = 64) -> dict[int, str]:
    """pid -> its start time (field 22 of /proc/pid/stat) for every process below ``root``."""
    parent, start = {}, {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            parent[int(d.name)], start[int(d.name)] = int(fields[1]), fields[19]
    found, level = {}, [root]
    for _ in range(depth):
        level = [c for c, pp in parent.items() if pp in level and c not in found]
        if not level:
            break
        found.update({c: start[c] for c in level})
    return found


def _alive(pid: int, started: str) -> bool:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return False
    return fields[19] == started and fields[0] != "Z"


@needs_smollm2
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="the orphan check reads /proc (Linux)")
def test_two_replicas_serve_survive_a_kill_and_leave_nothing(monkeypatch):
    # Ray's sockets live under RAY_TMPDIR: a short private path (unix socket paths are short)
    ray_tmp = tempfile.mkdtemp(prefix="rfray-", dir="/tmp")
    monkeypatch.setenv("RAY_TMPDIR", ray_tmp)
    t0 = time.monotonic()
    with serve_process("smollm2", "--replicas", "2", "--replica-cpus", "0.5", "--served-model-name", "smol",
                       "--max-model-len", "512", "--max-num-seqs", "8", "--kv-cache-gb", "0.05") as url:
        started_s = time.monotonic() - t0
        # /health answers once the first replica is up: send concurrent batches until both have served
        seen: dict[str, httpx.Response] = {}

        def both_served():
            with ThreadPoolExecutor(8) as pool:
                for r in pool.map(lambda _: _complete(url), range(8)):
                    seen.setdefault(r.headers[REPLICA], r)
            return len(seen) == 2

        _until(60, "two replicas did not both serve", both_served)
        texts = {rid: r.json()["choices"][0]["text"] for rid, r in seen.items()}
        assert len(set(texts.values())) == 1 and next(iter(texts.values())), texts   # same model, same greedy text
        with httpx.stream("POST", url + "/v1/completions", json={**BODY, "stream": True}, timeout=60) as s:
            assert s.status_code == 200 and s.headers[REPLICA] in seen
            events = [line for line in s.iter_lines() if line.startswith("data: ")]
        assert events[-1] == "data: [DONE]" and len(events) > 2
        # every process the server started, its local Ray instance included, for the orphan check below
        procs = _descendants(_server_pid(url))

        victim = next(iter(seen.values()))
        assert victim.headers[NODE] == socket.gethostname() and int(victim.headers[PID]) in procs
        dead, survivor = victim.headers[REPLICA], next(r for r in seen if r != victim.headers[REPLICA])
        os.kill(int(victim.headers[PID]), signal.SIGKILL)
        t_kill = time.monotonic()
        # no request may fail: the router routes around the dead replica at once (none was in flight on it)
        answered = [_complete(url).headers[REPLICA] for _ in range(4)]
        assert dead not in answered, answered
        # ... and Ray starts a replacement: a third replica id answers, the endpoint serving throughout
        new = _until(45, "Ray did not start a replacement replica",
                     lambda: {h for h in (_complete(url).headers[REPLICA] for _ in range(4))} - {dead, survivor})
        replaced_s = time.monotonic() - t_kill
    stopped_s = time.monotonic() - t0
    left = [p for p, st in procs.items() if _alive(p, st)]
    for p in left:               # ours, by pid: don't leave them to the next test
        os.kill(p, signal.SIGKILL)
    assert not left, f"processes left behind after the server stopped: {left}"
    shutil.rmtree(ray_tmp, ignore_errors=True)     # kept when the test fails: Ray's logs are in it
    print(f"replicas: up {started_s:.1f} s, replacement {sorted(new)} after {replaced_s:.1f} s, "
          f"whole run {stopped_s:.1f} s")
