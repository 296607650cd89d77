"""The HTTP face in-process, against a scripted engine: wire format, streaming, stop strings, errors."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient

from rocmforge.server import create_app

from .fakes import FakeEngine


@pytest.fixture
def engine(smollm):
    return FakeEngine(smollm.tokenizer, smollm.hparams["vocab_size"] + 64)   # logits wider than the tokenizer


@pytest.fixture
def client(engine, smollm):
    with TestClient(create_app(engine, smollm, served_model_name="smol")) as c:
        yield c


def sse_events(text: str) -> list:
    lines = [ln[len("data: "):] for ln in text.split("\n\n") if ln.startswith("data: ")]
    assert lines[-1] == "[DONE]", lines[-3:]
    return [json.loads(x) for x in lines[:-1]]


def test_models_and_health(client):
    r = client.get("/v1/models")
    assert r.status_code == 200
    assert [m["id"] for m in r.json()["data"]] == ["smol"]
    h = client.get("/health").json()
    assert h["status"] == "ok" and h["running"] == 0


def test_completion_whole(client, engine):
    r = client.post("/v1/completions", json={"model": "smol", "prompt": "Hi", "max_tokens": 3, "temperature": 0})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "text_completion"
    expect = engine.tokenizer.decode(engine.reply_ids[:3])
    assert body["choices"][0]["text"] == expect
    assert body["choices"][0]["finish_reason"] == "length"
    n_prompt = len(engine.tokenizer.encode("Hi"))
    assert body["usage"] == {"prompt_tokens": n_prompt, "completion_tokens": 3, "total_tokens": n_prompt + 3,
                             "prompt_tokens_details": {"cached_tokens": 0}}
    opts = engine.requests[-1].sampling
    assert (opts.max_tokens, opts.temperature, opts.top_k) == (3, 0.0, 0)


def test_completion_runs_to_the_engines_stop(client, engine):
    body = client.post("/v1/completions", json={"prompt": "Hi", "max_tokens": 100}).json()
    assert body["choices"][0]["text"] == "Hello there, world!"
    assert body["choices"][0]["finish_reason"] == "stop"


def test_sampling_fields_reach_the_engine(client, engine):
    r = client.post("/v1/completions", json={
        "prompt": "Hi", "max_tokens": 2, "temperature": 0.5, "top_p": 0.9, "top_k": 7, "min_p": 0.1, "seed": 5,
        "presence_penalty": 0.5, "frequency_penalty": -0.5, "repetition_penalty": 1.1, "n": 2,
        "stop_token_ids": [9], "ignore_eos": True})
    assert r.status_code == 200, r.text
    assert [c["index"] for c in r.json()["choices"]] == [0, 1]
    a, b = (q.sampling for q in engine.requests[-2:])
    assert (a.temperature, a.top_p, a.top_k, a.min_p) == (0.5, 0.9, 7, 0.1)
    assert (a.presence_penalty, a.frequency_penalty, a.repetition_penalty) == (0.5, -0.5, 1.1)
    assert (a.seed, b.seed) == (5, 6)          # n choices must not be n copies of one answer
    assert a.stop_token_ids == frozenset({9}) and a.ignore_eos


def test_stop_string_holds_back_and_closes_the_engine_iterator(client, engine):
    r = client.post("/v1/completions", json={"prompt": "Hi", "max_tokens": 20, "stop": [", wor"]})
    c = r.json()["choices"][0]
    assert c["text"] == "Hello there" and c["finish_reason"] == "stop"
    assert engine.open == set()
    # streamed: no piece ever shows the stop string or its start
    r = client.post("/v1/completions", json={"prompt": "Hi", "max_tokens": 20, "stop": "there", "stream": True})
    chunks = sse_events(r.text)
    text = "".join(ch["choices"][0]["text"] for ch in chunks)
    assert text == "Hello " and chunks[-1]["choices"][0]["finish_reason"] == "stop"
    assert engine.open == set()


def test_completion_stream_with_usage(client, engine):
    r = client.post("/v1/completions", json={"prompt": "Hi", "max_tokens": 4, "stream": True,
                                             "stream_options": {"include_usage": True}})
    assert r.headers["content-type"].startswith("text/event-stream")
    chunks = sse_events(r.text)
    assert "".join(c["choices"][0]["text"] for c in chunks[:-1]) == engine.tokenizer.decode(engine.reply_ids[:4])
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 4


def test_chat_whole_and_stream(client, engine, smollm):
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": [{"type": "text", "text": "Hi"}]}]
    r = client.post("/v1/chat/completions", json={"model": "smol", "messages": msgs, "max_tokens": 3})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "chat.completion"
    assert body["choices"][0]["message"] == {"role": "assistant", "content": "Hello there,"}
    expect = smollm.tokenizer.encode_chat([{"role": "system", "content": "Be brief."},
                                           {"role": "user", "content": "Hi"}])
    assert engine.requests[-1].prompt_ids == expect
    r = client.post("/v1/chat/completions", json={"messages": msgs, "max_completion_tokens": 3, "stream": True})
    chunks = sse_events(r.text)
    assert chunks[0]["object"] == "chat.completion.chunk"
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks) == "Hello there,"
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"


def test_chat_default_max_tokens_is_the_rest_of_the_context(client, engine):
    client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "Hi"}]})
    req = engine.requests[-1]
    assert req.sampling.max_tokens == engine.max_model_len - len(req.prompt_ids)


def test_chat_logprobs(client):
    r = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2,
                                                  "logprobs": True, "top_logprobs": 2})
    lp = r.json()["choices"][0]["logprobs"]["content"]
    assert [e["token"] for e in lp] == ["Hello", " there"]
    assert lp[0]["logprob"] == -0.25 and len(lp[0]["top_logprobs"]) == 2
    assert lp[0]["bytes"] == list(b"Hello")


def test_completion_logprobs_and_echo(client, engine):
    r = client.post("/v1/completions", json={"prompt": "Hi you", "max_tokens": 2, "logprobs": 1, "echo": True})
    c = r.json()["choices"][0]
    prompt_ids = engine.requests[-1].prompt_ids
    assert c["text"] == engine.tokenizer.decode(prompt_ids, skip_special=False) + "Hello there"
    lp = c["logprobs"]
    assert len(lp["tokens"]) == len(prompt_ids) + 2
    assert lp["token_logprobs"][0] is None and lp["token_logprobs"][-1] == -0.25
    assert lp["text_offset"] == sorted(lp["text_offset"])
    assert engine.requests[-1].sampling.prompt_logprobs


def test_token_id_prompts_and_batches(client, engine):
    r = client.post("/v1/completions", json={"prompt": [[1, 2, 3], [4, 5]], "max_tokens": 1, "n": 2})
    assert r.status_code == 200, r.text
    assert [q.prompt_ids for q in engine.requests[-4:]] == [[1, 2, 3]] * 2 + [[4, 5]] * 2
    assert r.json()["usage"]["prompt_tokens"] == 5


def test_tokenize_detokenize(client, smollm):
    r = client.post("/tokenize", json={"prompt": "Hello world", "return_token_strs": True})
    body = r.json()
    assert body["tokens"] == smollm.tokenizer.encode("Hello world") and body["count"] == len(body["tokens"])
    assert len(body["token_strs"]) == body["count"]
    chat = client.post("/tokenize", json={"messages": [{"role": "user", "content": "Hi"}]}).json()
    assert chat["tokens"] == smollm.tokenizer.encode_chat([{"role": "user", "content": "Hi"}])
    r = client.post("/detokenize", json={"tokens": smollm.tokenizer.encode("Hello world", add_special=False)})
    assert r.json() == {"prompt": "Hello world"}


def test_metrics_names(client):
    client.post("/v1/completions", json={"prompt": "Hi", "max_tokens": 2})
    text = client.get("/metrics").text
    for name in ("vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:kv_cache_usage_perc",
                 "vllm:time_to_first_token_seconds_count", "vllm:inter_token_latency_seconds_count",
                 "vllm:prompt_tokens_total", "vllm:generation_tokens_total", "vllm:prefix_cache_queries_total",
                 "vllm:prefix_cache_hits_total", "vllm:num_preemptions_total", "rocmforge:steps"):
        assert name in text, name
    assert 'vllm:request_success_total{finished_reason="length",model_name="smol"} 1.0' in text
    assert 'vllm:time_to_first_token_seconds_count{model_name="smol"} 1.0' in text


def test_two_apps_do_not_share_metrics(engine, smollm):
    a, b = create_app(engine, smollm, served_model_name="a"), create_app(engine, smollm, served_model_name="b")
    with TestClient(a) as ca, TestClient(b) as cb:
        ca.post("/v1/completions", json={"prompt": "Hi", "max_tokens": 1})
        assert 'vllm:time_to_first_token_seconds_count{model_name="a"} 1.0' in ca.get("/metrics").text
        assert 'vllm:time_to_first_token_seconds_count{model_name="b"} 0.0' in cb.get("/metrics").text


def test_shutdown_reaches_the_engine(engine, smollm):
    with TestClient(create_app(engine, smollm)):
        pass
    assert engine.shut


def test_serve_help_teaches_and_python_m_works():
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "rocmforge", "serve", "--help"], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    for words in ("--max-num-seqs", "--kv-cache-gb", "--max-body-mb", "examples:", "openai.OpenAI", "/metrics"):
        assert words in out.stdout, words
    bad = subprocess.run([sys.executable, "-m", "rocmforge", "serve", "smollm2", "--max-num-seqs", "0"],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "must be > 0" in bad.stderr


def test_structured_choice_and_regex_through_the_constraint(client, engine):
    r = client.post("/v1/completions", json={"prompt": "Pick:", "max_tokens": 10,
                                             "guided_choice": ["yes", "no way"]})
    assert r.json()["choices"][0]["text"] in ("yes", "no way")
    assert r.json()["choices"][0]["finish_reason"] == "stop"
    r = client.post("/v1/completions", json={"prompt": "Year:", "max_tokens": 10, "guided_regex": "[0-9]{3}"})
    text = r.json()["choices"][0]["text"]
    assert len(text) == 3 and text.isdigit()


def test_constraint_mask_is_as_wide_as_the_logits(smollm):
    from rocmforge.server.structured import GrammarCompiler

    width = smollm.hparams["vocab_size"] + 64
    comp = GrammarCompiler(smollm.tokenizer, width)
    c = comp.constraint(comp.grammar("json_schema", {"type": "object"}, "x"))
    mask = c.allowed()
    assert mask.shape == (width,) and mask.dtype == bool
    assert not mask[smollm.hparams["vocab_size"]:].any()
    assert mask[smollm.tokenizer.encode("{", add_special=False)[0]]
    assert not mask[smollm.tokenizer.encode("hello", add_special=False)[0]]
