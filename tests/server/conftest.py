import pytest


@pytest.fixture(scope="session")
def smollm():
    """SmolLM2-135M (the tokenizer and chat template are all the in-process tests use of it)."""
    from models import SMOLLM2_DIST, installed

    if not installed(SMOLLM2_DIST):
        pytest.skip(f"{SMOLLM2_DIST} not installed")
    import rocmforge

    return rocmforge.load_model("smollm2")


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def server(smollm):
    """A real ``python -m rocmforge serve smollm2`` process on 127.0.0.1: its base URL. Killed at the end."""
    import os
    import subprocess
    import sys
    import time
    from pathlib import Path

    import httpx

    port = _free_port()
    root = Path(__file__).resolve().parents[2]
    cmd = [sys.executable, "-m", "rocmforge", "serve", "smollm2", "--port", str(port), "--served-model-name",
           "smol", "--max-model-len", "2048", "--max-num-seqs", "64", "--kv-cache-gb", "0.25"]
    log = open(Path(os.environ.get("TMPDIR", "/tmp")) / f"rocmforge-serve-{port}.log", "w+")
    proc = subprocess.Popen(cmd, cwd=root, stdout=log, stderr=subprocess.STDOUT,
                            env={**os.environ, "PYTHONPATH": str(root)})
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
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
                pytest.fail("the server did not answer /health within 120 s")
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
