"""A client that leaves before its answer: the server gives the request up at once, streaming or not."""

from __future__ import annotations

import time

import httpx
import pytest

from .conftest import scrape


def _idle_within(server: str, seconds: float) -> dict:
    deadline = time.time() + seconds
    while True:
        m = scrape(server)
        if m["vllm:num_requests_running"] == 0 and m["vllm:num_requests_waiting"] == 0 or time.time() > deadline:
            return m
        time.sleep(0.2)


def test_a_non_streaming_client_that_leaves_frees_its_request(server):
    # ~2,000 tokens would take a minute on a CPU: the client gives up after one second
    body = {"prompt": "Tell me a long story about a river and the town beside it.", "max_tokens": 1900,
            "temperature": 0, "ignore_eos": True}
    with pytest.raises(httpx.TimeoutException):
        httpx.post(server + "/v1/completions", json=body, timeout=1.0)
    m = _idle_within(server, 5.0)
    assert m["vllm:num_requests_running"] == 0 and m["vllm:num_requests_waiting"] == 0, m
    assert m["rocmforge:kv_blocks_used"] == 0, m
    # and the server still answers
    r = httpx.post(server + "/v1/completions", json={"prompt": "Hi", "max_tokens": 2}, timeout=30)
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 2
