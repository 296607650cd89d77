"""The official openai client against a real server process running SmolLM2 on the CPU."""

from __future__ import annotations

import json

import pytest

openai = pytest.importorskip("openai")

PROMPT = "The capital of France is"


def test_models(openai_client):
    assert [m.id for m in openai_client.models.list().data] == ["smol"]


def test_completion_greedy_matches_generate(openai_client, smollm):
    r = openai_client.completions.create(model="smol", prompt=PROMPT, max_tokens=6, temperature=0)
    expect = "".join(smollm.generate(PROMPT, max_tokens=6, temperature=0))
    assert r.choices[0].text == expect
    assert r.choices[0].finish_reason in ("length", "stop")
    assert r.usage.prompt_tokens == len(smollm.tokenizer.encode(PROMPT))
    assert 0 < r.usage.completion_tokens <= 6


def test_completion_stream(openai_client):
    whole = openai_client.completions.create(model="smol", prompt=PROMPT, max_tokens=6, temperature=0)
    chunks = list(openai_client.completions.create(model="smol", prompt=PROMPT, max_tokens=6, temperature=0,
                                                   stream=True, stream_options={"include_usage": True}))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == whole.choices[0].text
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens


def test_chat_and_chat_stream(openai_client):
    msgs = [{"role": "user", "content": "What is the capital of France?"}]
    r = openai_client.chat.completions.create(model="smol", messages=msgs, max_tokens=8, temperature=0)
    text = r.choices[0].message.content
    assert r.choices[0].message.role == "assistant" and text
    stream = openai_client.chat.completions.create(model="smol", messages=msgs, max_tokens=8, temperature=0,
                                                   stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == text


def test_chat_logprobs_and_seeded_sampling(openai_client):
    msgs = [{"role": "user", "content": "Say something."}]
    a, b = (openai_client.chat.completions.create(model="smol", messages=msgs, max_tokens=5, temperature=1.0,
                                                  seed=123, logprobs=True, top_logprobs=3) for _ in range(2))
    assert a.choices[0].message.content == b.choices[0].message.content
    lp = a.choices[0].logprobs.content
    assert len(lp) == a.usage.completion_tokens and all(e.logprob <= 0 for e in lp)
    assert all(len(e.top_logprobs) == 3 for e in lp)


def test_stop_string(openai_client):
    r = openai_client.completions.create(model="smol", prompt="1, 2, 3, 4,", max_tokens=12, temperature=0,
                                         stop=[" 7"])
    assert " 7" not in r.choices[0].text and r.choices[0].finish_reason == "stop"


def test_structured_output_json_schema(openai_client):
    jsonschema = pytest.importorskip("jsonschema")
    schema = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 12},
                                               "population": {"type": "integer", "minimum": 0, "maximum": 99999999}},
              "required": ["city", "population"], "additionalProperties": False}
    r = openai_client.chat.completions.create(
        model="smol", messages=[{"role": "user", "content": "Give the capital of France as JSON."}],
        max_tokens=40, temperature=0,
        response_format={"type": "json_schema", "json_schema": {"name": "city", "schema": schema}})
    assert r.choices[0].finish_reason == "stop", r.choices[0].message.content
    jsonschema.validate(json.loads(r.choices[0].message.content), schema)


def test_structured_output_json_object_and_regex(openai_client):
    r = openai_client.chat.completions.create(
        model="smol", messages=[{"role": "user", "content": "Some JSON please."}], max_tokens=24, temperature=0,
        response_format={"type": "json_object"}, extra_body={"guided_json": None})
    if r.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(r.choices[0].message.content), dict)
    r = openai_client.completions.create(model="smol", prompt="Year:", max_tokens=8, temperature=0.8, seed=1,
                                         extra_body={"guided_regex": "(19|20)[0-9]{2}"})
    import re

    assert re.fullmatch(r"(19|20)[0-9]{2}", r.choices[0].text) and r.choices[0].finish_reason == "stop"


def test_errors_reach_the_client_as_api_errors(openai_client):
    with pytest.raises(openai.BadRequestError) as e:
        openai_client.completions.create(model="smol", prompt="Hi", max_tokens=0)
    assert e.value.body["param"] == "max_tokens"
    with pytest.raises(openai.NotFoundError):
        openai_client.completions.create(model="gpt-4", prompt="Hi", max_tokens=1)
    with pytest.raises(openai.BadRequestError):
        openai_client.chat.completions.create(model="smol", messages=[{"role": "user", "content": "Hi"}],
                                              max_tokens=5, response_format={"type": "json_schema", "json_schema": {
                                                  "name": "x", "schema": {"$ref": "#/missing"}}})
