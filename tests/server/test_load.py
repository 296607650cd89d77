"""Many clients at once against the real server: the pool drains, the prefix cache is reused and visible."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest

from .conftest import scrape

SYSTEM = ("You are a careful assistant for a small bakery in Lyon. You answer questions about opening hours, "
          "bread, pastries, cakes for birthdays and weddings, allergens (gluten, nuts, milk, eggs), prices in "
          "euros, delivery within the city, and orders placed at least two days ahead. Keep answers short, "
          "polite and precise, and never invent products the bakery does not sell.")


def test_prefix_cache_reuse_is_visible_in_metrics(server):
    before = scrape(server)
    bodies = [{"messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": q}],
               "max_tokens": 2, "temperature": 0} for q in ("When do you open?", "Do you sell croissants?")]
    first = httpx.post(server + "/v1/chat/completions", json=bodies[0], timeout=60).json()
    second = httpx.post(server + "/v1/chat/completions", json=bodies[1], timeout=60).json()
    after = scrape(server)
    shared = 64     # the system prompt alone is well over four 16-token blocks
    assert second["usage"]["prompt_tokens_details"]["cached_tokens"] >= shared, second["usage"]
    assert after["vllm:prefix_cache_hits_total"] - before["vllm:prefix_cache_hits_total"] >= shared
    assert after["vllm:prefix_cache_queries_total"] - before["vllm:prefix_cache_queries_total"] >= \
        first["usage"]["prompt_tokens"] + second["usage"]["prompt_tokens"]


async def _stream(client: httpx.AsyncClient, i: int) -> int:
    body = {"prompt": f"Story number {i}: once upon a time", "max_tokens": 4, "stream": True, "temperature": 0.8,
            "seed": i}
    n = 0
    async with client.stream("POST", "/v1/completions", json=body) as r:
        assert r.status_code == 200
        async for line in r.aiter_lines():
            if line.startswith("data: {"):
                n += 1
            if line == "data: [DONE]":
                return n
    raise AssertionError("the stream ended without [DONE]")


def test_64_streams_a_third_cancelled_then_the_pool_is_empty(server):
    async def go():
        limits = httpx.Limits(max_connections=100)
        async with httpx.AsyncClient(base_url=server, timeout=120, limits=limits) as client:
            tasks = [asyncio.create_task(_stream(client, i)) for i in range(64)]
            await asyncio.sleep(0.5)
            cancelled = [t for i, t in enumerate(tasks) if i % 3 == 0]
            for t in cancelled:
                t.cancel()
            results = await asyncio.gather(*tasks, return_exceptions=True)
        return [r for i, r in enumerate(results) if i % 3]

    t0 = time.monotonic()
    finished = asyncio.run(go())
    assert all(isinstance(n, int) and n >= 1 for n in finished), finished
    deadline = time.monotonic() + 10
    while True:         # the engine frees a cancelled request before its next step
        m = scrape(server)
        if m["vllm:num_requests_running"] == 0 and m["vllm:kv_cache_usage_perc"] == 0:
            break
        assert time.monotonic() < deadline, m
        time.sleep(0.1)
    assert m["vllm:num_requests_waiting"] == 0
    t1 = time.monotonic()
    r = httpx.post(server + "/v1/completions", json={"prompt": "Hello", "max_tokens": 4}, timeout=30)
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] >= 1
    assert time.monotonic() - t1 < 5
    print(f"load: {time.monotonic() - t0:.1f}s")


@pytest.mark.parametrize("path", ["/health", "/v1/models"])
def test_still_healthy(server, path):
    assert httpx.get(server + path, timeout=10).status_code == 200
