"""AsyncEngine: the step loop in a background thread, asyncio generators outside, aborts on disconnect."""

import asyncio
import time

import pytest

from rocmforge.engine.async_engine import AsyncEngine
from rocmforge.engine.protocol import Engine, EngineRequest, SamplingOptions
from rocmforge.generate import generate_ids
from rocmforge.sampler import SamplingParams

P = [3, 17, 42, 99, 7, 250, 128, 64, 5, 31, 200, 11, 77, 150, 9, 240, 1, 33, 66, 180, 2, 8, 101, 55]


@pytest.fixture(scope="module")
def model(tiny_model):
    return tiny_model("llama", "llama-gqa")


@pytest.fixture
def engine(model):
    eng = AsyncEngine(model, max_num_seqs=8, num_blocks=96, block_size=4, max_num_batched_tokens=32)
    yield eng
    eng.shutdown_now()
    assert not eng._thread.is_alive()


def greedy(rid, prompt, n=6):
    return EngineRequest(rid, list(prompt), SamplingOptions(max_tokens=n, temperature=0))


async def collect(eng, req):
    return [ev async for ev in eng.generate(req)]


def wait_for(cond, timeout=5.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.01)
    return cond()


def test_it_is_an_engine(engine):
    for name in ("generate", "abort", "stats", "shutdown", "vocab_size", "max_model_len"):
        assert hasattr(engine, name) and hasattr(Engine, name) or name in Engine.__annotations__
    assert engine.vocab_size == 256 and engine.max_model_len == 512


def test_concurrent_requests_get_their_own_greedy_tokens(engine, model):
    prompts = [P[i:i + 8 + i] for i in range(6)]
    ref = [list(generate_ids(model, p, 6, SamplingParams(temperature=0))) for p in prompts]

    async def main():
        return await asyncio.gather(*(collect(engine, greedy(f"r{i}", p)) for i, p in enumerate(prompts)))

    outs = asyncio.run(main())
    for evs, want in zip(outs, ref):
        assert [e.token_id for e in evs] == want and evs[-1].finish_reason == "length"
    assert wait_for(lambda: engine.stats().kv_blocks_used == 0)
    assert engine.stats().generation_tokens_total == 36


def test_requests_that_cannot_run_raise_value_error(engine):
    async def first(req):
        return await engine.generate(req).__anext__()

    with pytest.raises(ValueError, match="maximum length"):
        asyncio.run(first(greedy("x", P, n=1000)))
    with pytest.raises(ValueError, match="no tokens"):
        asyncio.run(first(greedy("y", [])))


def test_abort_ends_the_stream_with_abort(engine):
    async def main():
        evs = []
        async for ev in engine.generate(greedy("a", P[:5], n=200)):
            evs.append(ev)
            if len(evs) == 2:
                engine.abort("a")
        return evs

    evs = asyncio.run(main())
    assert evs[-1].finish_reason == "abort" and len(evs) < 200
    assert wait_for(lambda: engine.stats().kv_blocks_used == 0)


def test_stress_with_a_third_of_the_clients_leaving_early(engine):
    n = 24

    async def client(i):
        agen = engine.generate(greedy(f"s{i}", P[i % 10:i % 10 + 6 + i % 7], n=40))
        got = []
        if i % 3 == 0:             # this client disconnects after two tokens
            async for ev in agen:
                got.append(ev)
                if len(got) == 2:
                    break
            await agen.aclose()
            return got
        async for ev in agen:
            got.append(ev)
        return got

    async def cancelled(i):        # and this one's task is cancelled mid-stream
        task = asyncio.ensure_future(collect(engine, greedy(f"c{i}", P[:9], n=200)))
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    async def main():
        return await asyncio.wait_for(asyncio.gather(*(client(i) for i in range(n)), cancelled(0), cancelled(1)),
                                      timeout=120)

    outs = asyncio.run(main())
    for i, evs in enumerate(outs[:n]):
        if i % 3:
            assert evs[-1].finish_reason == "length" and len(evs) == 40
        else:
            assert len(evs) == 2
    assert wait_for(lambda: engine.stats().kv_blocks_used == 0 and engine.stats().running == 0
                    and engine.stats().waiting == 0)
    start = time.monotonic()
    fresh = asyncio.run(collect(engine, greedy("fresh", P[:7], n=5)))
    assert fresh[-1].finish_reason == "length" and len(fresh) == 5
    assert time.monotonic() - start < 10


def test_shutdown_aborts_what_is_running(model):
    eng = AsyncEngine(model, num_blocks=64, block_size=4)

    async def main():
        agen = eng.generate(greedy("long", P[:5], n=200))
        first = await agen.__anext__()
        await eng.shutdown()
        rest = [ev async for ev in agen]
        return first, rest

    first, rest = asyncio.run(main())
    assert first.token_id is not None and rest[-1].finish_reason == "abort"
    assert not eng._thread.is_alive()
