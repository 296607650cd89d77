"""Bad requests get a 4xx with an OpenAI error body and the server keeps serving; failures stay per request."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest
from fastapi.testclient import TestClient

from rocmforge.server import create_app

from .fakes import FakeEngine
from .test_face import sse_events

CHAT = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}


@pytest.fixture
def engine(smollm):
    return FakeEngine(smollm.tokenizer, smollm.hparams["vocab_size"], max_model_len=64)


@pytest.fixture
def client(engine, smollm):
    with TestClient(create_app(engine, smollm, served_model_name="smol", max_body_bytes=4096),
                    raise_server_exceptions=False) as c:
        yield c


def assert_error(r, status: int, param: str | None = "any"):
    assert r.status_code == status, (r.status_code, r.text)
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    if param != "any":
        assert err["param"] == param, err
    return err


def still_up(client):
    r = client.post("/v1/completions", json={"prompt": "Hi", "max_tokens": 1})
    assert r.status_code == 200, r.text


@pytest.mark.parametrize("max_tokens", [0, -1, "5", 2.5, True, [3]])
def test_bad_max_tokens(client, max_tokens):
    assert_error(client.post("/v1/completions", json={"prompt": "Hi", "max_tokens": max_tokens}), 400, "max_tokens")
    still_up(client)


def test_huge_max_tokens_and_long_prompts(client):
    err = assert_error(client.post("/v1/completions", json={"prompt": "Hi", "max_tokens": 10**12}), 400)
    assert err["code"] == "context_length_exceeded"
    long = "word " * 200
    err = assert_error(client.post("/v1/completions", json={"prompt": long, "max_tokens": 1}), 400, "prompt")
    assert "context length is 64" in err["message"]
    assert_error(client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": long}]}),
                 400, "messages")
    still_up(client)


@pytest.mark.parametrize("body,param", [
    ({"prompt": "Hi", "temperature": -1}, "temperature"),
    ({"prompt": "Hi", "top_p": 0}, "top_p"),
    ({"prompt": "Hi", "n": 0}, "n"),
    ({"prompt": "Hi", "stop": 3}, "stop.str"),
    ({"prompt": "Hi", "stream": "yes"}, "stream"),
    ({"prompt": "Hi", "logprobs": 99}, "logprobs"),
    ({"prompt": "Hi", "presence_penalty": 5}, "presence_penalty"),
    ({"prompt": "Hi", "stream_options": {"include_usage": 1}}, "stream_options.include_usage"),
    ({"prompt": [100000000]}, "prompt"),
    ({"prompt": []}, "prompt"),
    ({"prompt": "Hi", "logit_bias": {"5": 1.0}}, "logit_bias"),
    ({"prompt": "Hi", "suffix": "x"}, "suffix"),
    ({}, "prompt"),
])
def test_bad_completion_fields(client, body, param):
    err = assert_error(client.post("/v1/completions", json=body), 400)
    assert err["param"] is not None and err["param"].startswith(param.split(".")[0]), err
    still_up(client)


@pytest.mark.parametrize("body", [
    {"messages": []},
    {"messages": [{"role": "wizard", "content": "Hi"}]},
    {"messages": [{"role": "user", "content": 5}]},
    {"messages": "Hi"},
    {**CHAT, "top_logprobs": 2},
    {**CHAT, "tools": [{"type": "function", "function": {"name": "f"}}]},
    {**CHAT, "response_format": {"type": "xml"}},
    {**CHAT, "response_format": {"type": "json_schema"}},
])
def test_bad_chat_fields(client, body):
    assert_error(client.post("/v1/chat/completions", json=body), 400)
    still_up(client)


def test_unknown_fields_are_ignored(client):
    r = client.post("/v1/chat/completions", json={**CHAT, "service_tier": "auto", "metadata": {"a": 1}})
    assert r.status_code == 200, r.text


def test_unknown_model(client):
    err = assert_error(client.post("/v1/chat/completions", json={**CHAT, "model": "gpt-9"}), 404, "model")
    assert err["code"] == "model_not_found" and "smol" in err["message"]


def test_invalid_json_and_non_utf8(client):
    h = {"content-type": "application/json"}
    err = assert_error(client.post("/v1/completions", content=b'{"prompt": "Hi",', headers=h), 400)
    assert "JSON" in err["message"]
    assert_error(client.post("/v1/completions", content=b'{"prompt": "\xff\xfe"}', headers=h), 400)
    assert_error(client.post("/v1/completions", content=b'[1, 2]', headers=h), 400)
    assert_error(client.post("/v1/completions", content=b'', headers=h), 400)
    still_up(client)


def test_wrong_content_type(client):
    assert_error(client.post("/v1/completions", content=json.dumps({"prompt": "Hi"}),
                             headers={"content-type": "text/plain"}), 415)
    assert_error(client.post("/tokenize", data={"prompt": "Hi"}), 415)
    still_up(client)


def test_oversized_body_is_refused_while_reading(client):
    big = {"prompt": "x" * 10_000, "max_tokens": 1}
    assert_error(client.post("/v1/completions", json=big), 413)

    def chunks():        # no Content-Length: only counting while reading can catch it
        for _ in range(100):
            yield b" " * 1000
    assert_error(client.post("/v1/completions", content=chunks(), headers={"content-type": "application/json"}),
                 413)
    still_up(client)


def test_uncompilable_schema_and_grammars(client):
    bad = [{"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {
               "type": "object", "properties": {"a": {"$ref": "#/nowhere"}}}}}},
           {"guided_regex": "(["},
           {"guided_grammar": "start: nonsense_rule"},
           {"guided_json": "{not json"},
           {"guided_regex": "a", "guided_choice": ["a"]}]
    for extra in bad:
        assert_error(client.post("/v1/chat/completions", json={**CHAT, **extra}), 400)
    still_up(client)


def test_unknown_path_and_method(client):
    assert_error(client.get("/v1/nothing"), 404)
    assert_error(client.get("/v1/completions"), 405)


def test_engine_refusal_is_a_400(client, engine):
    engine.max_model_len = 10      # the engine says no even though the face let it through
    assert_error(client.post("/v1/completions", json={"prompt": "Hi", "max_tokens": 20}), 400)


def test_engine_error_fails_that_request_only(client, engine):
    engine.fail_after = 1
    r = client.post("/v1/completions", json={"prompt": "Hi", "max_tokens": 5})
    err = assert_error(r, 500)
    assert "out of KV blocks" in err["message"]
    chunks = sse_events(client.post("/v1/completions", json={"prompt": "Hi", "max_tokens": 5, "stream": True}).text)
    assert chunks[0]["choices"][0]["text"] == "Hello" and "out of KV blocks" in chunks[-1]["error"]["message"]
    engine.fail_after = None
    still_up(client)
    assert engine.open == set()


def test_engine_exception_is_a_500_and_the_server_stays_up(client, engine, monkeypatch):
    monkeypatch.setattr(engine, "generate", lambda r: (_ for _ in ()).throw(RuntimeError("boom")))
    assert_error(client.post("/v1/completions", json={"prompt": "Hi", "max_tokens": 1}), 500)
    monkeypatch.undo()
    still_up(client)


def test_client_disconnect_closes_the_engine_iterator(engine, smollm):
    engine.delay = 0.02
    app = create_app(engine, smollm)

    async def go():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            async with c.stream("POST", "/v1/completions",
                                json={"prompt": "Hi", "max_tokens": 60, "stream": True, "n": 3}) as r:
                async for line in r.aiter_lines():
                    if line.startswith("data: {"):
                        break          # leave mid-stream
            for _ in range(100):
                if not engine.open:
                    break
                await asyncio.sleep(0.01)
            return set(engine.open), sum(1 for q in engine.requests)

    still_open, started = asyncio.run(go())
    assert started == 3 and still_open == set()
    assert engine.generated < 3 * 60


def test_tiny_temperature_is_greedy_and_tiny_penalties_are_refused(client, engine):
    r = client.post("/v1/completions", json={"prompt": "Hi", "max_tokens": 1, "temperature": 5e-324})
    assert r.status_code == 200 and engine.requests[-1].sampling.temperature == 0.0
    assert_error(client.post("/v1/completions", json={"prompt": "Hi", "repetition_penalty": 2e-309}), 400,
                 "repetition_penalty")
