import contextlib

import pytest


@pytest.fixture(scope="session")
def smollm():
    """SmolLM2-135M (the tokenizer and chat template are all the in-process tests use of it)."""
    from models import SMOLLM2_DIST, installed

    if not installed(SMOLLM2_DIST):
        pytest.skip(f"{SMOLLM2_DIST} not installed")
    import rocmforge

    return rocmforge.load_model("smollm2", device="numpy")     # what `rocmforge serve` runs on the CPU


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serve_process(model: str, *args: str, startup_s: float = 120):
    """A real ``python -m rocmforge serve MODEL ARGS...`` process on 127.0.0.1: its base URL. Killed on exit."""
    import os
    import subprocess
    import sys
    import time
    from pathlib import Path

    import httpx

    port = _free_port()
    root = Path(__file__).resolve().parents[2]
    cmd = [sys.executable, "-m", "rocmforge", "serve", model, "--port", str(port), *args]
    log = open(Path(os.environ.get("TMPDIR", "/tmp")) / f"rocmforge-serve-{port}.log", "w+")
    proc = subprocess.Popen(cmd, cwd=root, stdout=log, stderr=subprocess.STDOUT,
                            # keep the caller's PYTHONPATH (the GPU machine puts its carried wheels there)
                            env={**os.environ, "PYTHONPATH": os.pathsep.join(
                                filter(None, [str(root), os.environ.get("PYTHONPATH")]))})
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + startup_s
    try:
        while True:
            if proc.poll() is not None:
                log.seek(0)
                pytest.fail(f"the server exited ({proc.returncode}):\n{log.read()[-3000:]}")
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                log.seek(0)
                pytest.fail(f"the server did not answer /health within {startup_s:g} s:\n{log.read()[-3000:]}")
            time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


@pytest.fixture(scope="session")
def server(smollm):
    """``rocmforge serve smollm2`` on the CPU, served as "smol"."""
    with serve_process("smollm2", "--served-model-name", "smol", "--max-model-len", "2048", "--max-num-seqs", "64",
                       "--kv-cache-gb", "0.25") as url:
        yield url


@pytest.fixture(scope="session")
def openai_client(server):
    openai = pytest.importorskip("openai")
    return openai.OpenAI(base_url=server + "/v1", api_key="unused", max_retries=0, timeout=60)


def scrape(url: str) -> dict[str, float]:
    """/metrics as {sample name: value}, labels dropped (one model per server)."""
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(url + "/metrics", timeout=10).text
    return {s.name: s.value for fam in text_string_to_metric_families(text) for s in fam.samples
            if "le" not in s.labels and "finished_reason" not in s.labels}
