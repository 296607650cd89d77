"""The OpenAI face over the real engine serving a tiny Mamba-2 model (a recurrent state per request).

In process (the app through fastapi's TestClient, the engine's own thread behind it) rather than a
``rocmforge serve`` process: the same app and engine, without paying for a process start in CI.
The random model has no vocabulary, so its folder gets a character-level BPE one: <eos>, printable
ASCII and newline, then two-character merges up to the model's 256 ids, every token a distinct
ASCII string (text streams byte-exact; decode is plain concatenation).
"""

from __future__ import annotations

import json
import string

import pytest

openai = pytest.importorskip("openai")
pytest.importorskip("transformers")
pytest.importorskip("torch")

TEMPLATE = ("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
            "{% if add_generation_prompt %}assistant:{% endif %}")


def write_ascii_tokenizer(folder, vocab_size: int) -> None:
    from tokenizers import Tokenizer, decoders, models

    chars = list(string.printable[:95]) + ["\n"]             # digits, letters, punctuation, space, newline
    vocab = {"<eos>": 0, **{c: i + 1 for i, c in enumerate(chars)}}
    letters = string.ascii_lowercase + " "
    merges = []
    for a in letters:
        for b in letters:
            if len(vocab) == vocab_size:
                break
            vocab[a + b] = len(vocab)
            merges.append((a, b))
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token=None))
    tok.add_special_tokens(["<eos>"])
    tok.decoder = decoders.Fuse()
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<eos>", "chat_template": TEMPLATE}))


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    from fastapi.testclient import TestClient

    import rocmforge
    from rocmforge.engine.async_engine import AsyncEngine
    from rocmforge.registry import architectures
    from rocmforge.server import create_app
    from rocmforge.testing.tiny import make_hf_model

    t = next(t for t in architectures()["mamba2"].recipe_obj.tiny if t["name"] == "mamba2-groups")
    folder = make_hf_model(t["hf_class"], t["config"], tmp_path_factory.mktemp("mamba2-served"), seed=3)
    write_ascii_tokenizer(folder, t["config"]["vocab_size"])
    model = rocmforge.load_model(str(folder))
    engine = AsyncEngine(model, max_num_seqs=4, max_model_len=256)
    with TestClient(create_app(engine, model, served_model_name="tiny-mamba2")) as client:
        yield model, client, openai.OpenAI(base_url="http://testserver/v1", api_key="unused", max_retries=0,
                                           http_client=client)


def metrics(client) -> dict[str, float]:
    from prometheus_client.parser import text_string_to_metric_families

    return {s.name: s.value for fam in text_string_to_metric_families(client.get("/metrics").text)
            for s in fam.samples}


def test_chat_on_a_recurrent_model_equals_generate(served):
    from rocmforge.generate import generate_ids
    from rocmforge.sampler import SamplingParams

    model, client, oai = served
    msgs = [{"role": "user", "content": "what is the state of the art?"}]
    ids = model.tokenizer.encode_chat(msgs)
    assert max(ids) < 256 and len(ids) > 20
    expect = model.tokenizer.decode(list(generate_ids(model, ids, 12, SamplingParams(temperature=0),
                                                      model.tokenizer.eos_ids)))
    r = oai.chat.completions.create(model="tiny-mamba2", messages=msgs, max_tokens=12, temperature=0)
    assert r.choices[0].message.content == expect and expect
    assert r.usage.prompt_tokens == len(ids)
    stream = oai.chat.completions.create(model="tiny-mamba2", messages=msgs, max_tokens=12, temperature=0,
                                         stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == expect
    m = metrics(client)
    assert m["rocmforge:recurrent_states"] == 0 and m["rocmforge:recurrent_state_bytes"] == 0
    assert m["rocmforge:kv_blocks_used"] == 0
    assert m["rocmforge:prefix_caching"] == 0 and m["vllm:prefix_cache_queries_total"] == 0
