"""``rocmforge serve --device gpu``: real server processes on a tiny random LLaMA (GQA) model, on the GPU.

The model is the prebuilt ``.gpu-models/llama/llama-gqa/model-{F32,Q4_0}.gguf`` (benchmarks/gpu_conformance.py
--build; the GPU machine carries it), else built here with transformers, else the tests skip. It has no
vocabulary, so a copy gets a byte-level BPE one: <|endoftext|> (EOS), printable ASCII and newline, 159 merged
ASCII pairs (256 = the model's vocabulary), every token a distinct ASCII string, so text streams byte-exact and
a logprobs token string names one id.

The model's logits are small (std ~0.16), so its top two are often within 1e-3 of each other. Greedy tokens are
compared up to the first step where the reference's top-2 gap is below what the two computations may differ by
(MARGIN), and each test requires most of its tokens to be compared. Without a GPU the whole module skips
(marked ``gpu``); ``ROCMFORGE_SERVER_TEST_DEVICE=cpu`` (a developer switch) runs the same logic on the CPU.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import string
import time
from pathlib import Path

import numpy as np
import pytest

from .conftest import scrape, serve_process

httpx = pytest.importorskip("httpx")

# a developer switch, never set in CI: "cpu" runs this module's logic on the CPU, unmarked
DEVICE = os.environ.get("ROCMFORGE_SERVER_TEST_DEVICE", "gpu")
pytestmark = [pytest.mark.gpu] if DEVICE == "gpu" else []
ROOT = Path(__file__).resolve().parents[2]
NAME = "tiny"
TEMPLATE = ("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
            "{% if add_generation_prompt %}assistant:{% endif %}")
ENGINE = ["--served-model-name", NAME, "--max-model-len", "512", "--max-num-seqs", "32", "--kv-cache-gb", "0.05"]
# Q4_0 on the GPU: up to 8 rows a linear runs the int8-activation matvec, more rows the fp16 GEMM, and the two
# differ by ~7e-3 in a logit (measured: the Numba int8 kernels against NumPy, same file) -- more than many of
# this model's top-2 gaps. A step budget of 8 tokens keeps every step on the matvec, alone or batched, so
# batching changes only the summation order (~1e-6) and MARGIN = 1e-3 holds for both files.
SMALL_STEPS = ["--max-num-batched-tokens", "8"]
MARGIN = 1e-3
# GPU vs CPU (F32): fp16 KV and fp32 kernels move a logprob by ~1e-4; changing one earlier token of the context
# moves the later logprobs of this model by up to ~0.1 (mean 0.04), so 0.01 separates rounding from a bug.
LOGPROB_TOL = 0.01


def _vocabulary() -> tuple[list[str], list[str]]:
    """256 byte-level tokens (GPT-2's byte alphabet) and the merges that make the two-character ones."""
    from rocmforge.tokenizer_gguf import _byte_alphabet

    spell = _byte_alphabet()
    chars = [spell[b] for b in [*range(0x20, 0x7F), 0x0A]]
    pairs = ["Ġ" + c for c in string.ascii_lowercase] + [a + b for a in string.ascii_lowercase for b in "etaoinsrh"]
    pairs = pairs[:256 - 1 - len(chars)]
    return ["<|endoftext|>", *chars, *pairs], [f"{p[0]} {p[1:]}" for p in pairs]


def _with_tokenizer(src: Path, dst: Path) -> Path:
    """A copy of the GGUF ``src`` with the byte-level vocabulary and a plain chat template."""
    gguf = pytest.importorskip("gguf")
    r = gguf.GGUFReader(str(src))
    arch = r.get_field("general.architecture").contents()
    w = gguf.GGUFWriter(str(dst), arch)
    for key, f in r.fields.items():
        if key.startswith(("GGUF.", "tokenizer.")) or key == "general.architecture":
            continue
        array = f.types[0] == gguf.GGUFValueType.ARRAY
        w.add_key_value(key, f.contents(), f.types[0], sub_type=f.types[-1] if array else None)
    tokens, merges = _vocabulary()
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_types([gguf.TokenType.CONTROL] + [gguf.TokenType.NORMAL] * (len(tokens) - 1))
    w.add_token_merges(merges)
    w.add_eos_token_id(0)
    w.add_chat_template(TEMPLATE)
    plain = (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16)
    for t in r.tensors:
        q = gguf.GGMLQuantizationType(t.tensor_type)
        if q in plain:
            w.add_tensor(t.name, np.asarray(t.data))
        else:
            shape = tuple(int(s) for s in reversed(t.shape))
            w.add_tensor(t.name, np.asarray(t.data), raw_shape=gguf.quant_shape_to_byte_shape(shape, q), raw_dtype=q)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return dst


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    """model_file(qtype) -> the tiny llama-gqa GGUF (F32 or Q4_0) with a vocabulary."""
    tmp = tmp_path_factory.mktemp("served")
    made = {}

    def get(qtype: str) -> Path:
        if qtype not in made:
            src = ROOT / ".gpu-models" / "llama" / "llama-gqa" / f"model-{qtype}.gguf"
            if not src.exists():
                pytest.importorskip("transformers")
                pytest.importorskip("torch")
                from rocmforge.registry import architectures
                from rocmforge.testing.tiny import hf_to_gguf, make_hf_model

                t = next(t for t in architectures()["llama"].recipe_obj.tiny if t["name"] == "llama-gqa")
                hf = tmp / "hf"
                if not hf.exists():
                    make_hf_model(t["hf_class"], t["config"], hf, seed=3)
                src = hf_to_gguf(hf, tmp / f"model-{qtype}.gguf", qtype)
            made[qtype] = _with_tokenizer(src, tmp / f"tiny-{qtype}.gguf")
        return made[qtype]

    return get


async def _warm_up(url: str) -> None:
    """Prefill, batched and single decode once: the first GPU server compiles its kernels here, in the
    fixture (CuPy keeps them on disk for the next servers), not in the first test."""
    async with httpx.AsyncClient(base_url=url, timeout=600) as c:
        rs = await asyncio.gather(*(c.post("/v1/completions", json={
            "prompt": "warm up " * (3 + 4 * i), "max_tokens": 4 + 4 * i, "ignore_eos": True}) for i in range(3)))
    assert all(r.status_code == 200 for r in rs), [r.text for r in rs]


@pytest.fixture(scope="module")
def serve(model_file):
    """serve(qtype, device, *extra) -> the base URL of a server of that file (started once per module)."""
    for mod in ("fastapi", "uvicorn", "llguidance", "prometheus_client"):
        pytest.importorskip(mod)
    running, stack = {}, contextlib.ExitStack()

    def get(qtype: str, device: str, *extra: str) -> str:
        key = (qtype, device, extra)
        if key not in running:
            url = stack.enter_context(serve_process(str(model_file(qtype)), "--device", device, *ENGINE, *extra,
                                                    startup_s=300))
            asyncio.run(_warm_up(url))
            running[key] = url
        return running[key]

    with stack:
        yield get


@pytest.fixture(scope="module")
def f32(serve):
    """F32 on the GPU, the engine's defaults (prefill through the GEMMs)."""
    return serve("F32", DEVICE)


@pytest.fixture(scope="module")
def q4_0(serve):
    """Q4_0 on the GPU, steps of at most 8 tokens (see SMALL_STEPS)."""
    return serve("Q4_0", DEVICE, *SMALL_STEPS)


@pytest.fixture(scope="module")
def cpu_f32(serve):
    """F32 on the CPU: the reference."""
    return serve("F32", "cpu")


@pytest.fixture
def url(request):
    """The server fixture named by the test's parameter."""
    return request.getfixturevalue(request.param)


def _openai(url: str):
    openai = pytest.importorskip("openai")
    return openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=60)


def _complete(url: str, body: dict) -> dict:
    r = httpx.post(url + "/v1/completions", json={"model": NAME, "temperature": 0, **body}, timeout=60)
    assert r.status_code == 200, r.text
    return r.json()["choices"][0]


def _greedy_body(prompt: str, n: int) -> dict:
    return {"model": NAME, "prompt": prompt, "max_tokens": n, "temperature": 0, "ignore_eos": True, "logprobs": 2}


def _gaps(choice: dict) -> list[float]:
    """Per generated token: top-1 minus top-2 logprob."""
    out = []
    for top in choice["logprobs"]["top_logprobs"]:
        a, b = sorted(top.values(), reverse=True)[:2]
        out.append(a - b)
    return out


def _decided(ref: dict, margin: float) -> int:
    """How many of ``ref``'s tokens were chosen by more than ``margin`` (up to its first near-tie)."""
    gaps = _gaps(ref)
    return next((i for i, g in enumerate(gaps) if g < margin), len(gaps))


# ---------------------------------------------------------------- the openai client


@pytest.mark.parametrize("url", ["f32", "q4_0"], indirect=True)
def test_completions_chat_and_streams_through_openai(url):
    c = _openai(url)
    assert [m.id for m in c.models.list().data] == [NAME]
    prompt = "The capital of France is"
    r = c.completions.create(model=NAME, prompt=prompt, max_tokens=8, temperature=0, extra_body={"ignore_eos": True})
    n_prompt = httpx.post(url + "/tokenize", json={"prompt": prompt}, timeout=10).json()["count"]
    assert r.usage.prompt_tokens == n_prompt == 17 and r.usage.completion_tokens == 8
    assert r.choices[0].finish_reason == "length" and r.choices[0].text
    chunks = list(c.completions.create(model=NAME, prompt=prompt, max_tokens=8, temperature=0, stream=True,
                                       stream_options={"include_usage": True}, extra_body={"ignore_eos": True}))
    assert "".join(ch.choices[0].text for ch in chunks if ch.choices) == r.choices[0].text
    assert chunks[-1].usage.completion_tokens == 8

    msgs = [{"role": "user", "content": "What is the capital of France?"}]
    eos = {"ignore_eos": True}
    chat = c.chat.completions.create(model=NAME, messages=msgs, max_tokens=8, temperature=0, logprobs=True,
                                     top_logprobs=2, extra_body=eos)
    text = chat.choices[0].message.content
    assert chat.choices[0].message.role == "assistant"
    assert len(chat.choices[0].logprobs.content) == chat.usage.completion_tokens == 8
    # (an EOS drawn despite ignore_eos is a logprobs token but no text)
    assert "".join(e.token for e in chat.choices[0].logprobs.content if e.token != "<|endoftext|>") == text
    stream = c.chat.completions.create(model=NAME, messages=msgs, max_tokens=8, temperature=0, stream=True,
                                       extra_body=eos)
    assert "".join(ch.choices[0].delta.content or "" for ch in stream if ch.choices) == text


def test_structured_output_json_schema(f32):
    jsonschema = pytest.importorskip("jsonschema")
    schema = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 12},
                                               "population": {"type": "integer", "minimum": 0, "maximum": 99999999}},
              "required": ["city", "population"], "additionalProperties": False}
    r = _openai(f32).chat.completions.create(
        model=NAME, messages=[{"role": "user", "content": "Give the capital of France as JSON."}],
        max_tokens=64, temperature=0,
        response_format={"type": "json_schema", "json_schema": {"name": "city", "schema": schema}})
    assert r.choices[0].finish_reason == "stop", r.choices[0].message.content
    jsonschema.validate(json.loads(r.choices[0].message.content), schema)
    # sampled under a mask: the allowed ids of the GPU's logits only
    year = _complete(f32, {"prompt": "Year:", "max_tokens": 8, "temperature": 0.8, "seed": 1,
                           "guided_regex": "(19|20)[0-9]{2}"})
    assert re.fullmatch(r"(19|20)[0-9]{2}", year["text"]) and year["finish_reason"] == "stop", year


# ---------------------------------------------------------------- batching


# Prompts for the greedy comparisons. Which of a random model's tokens are clear of a near-tie depends on its
# weights: each test takes several prompts and asks for a share of their tokens (chosen so that both the
# prebuilt file and the one built here with transformers pass it, with room).
PROMPTS = ["The capital of France is", "def add(a, b):", "Story number 7: once upon a time", "for i in range(10):",
           "import numpy as np", "In the beginning", "x = 1\ny = 2\n", "The weather today", "Roses are red,",
           "Once upon a time", "Hello", "My name is"]


@pytest.mark.parametrize("url", ["f32", "q4_0"], indirect=True)
def test_batched_greedy_equals_alone(url):
    """4 concurrent greedy requests == each alone, token for token up to the alone run's first near-tie;
    two rounds of four."""
    n, prompts = 16, PROMPTS[:8]

    async def together(ps):
        async with httpx.AsyncClient(base_url=url, timeout=60) as c:
            rs = await asyncio.gather(*(c.post("/v1/completions", json=_greedy_body(p, n)) for p in ps))
        return [r.json()["choices"][0] for r in rs]

    before = scrape(url)["vllm:generation_tokens_total"]
    batched = asyncio.run(together(prompts[:4])) + asyncio.run(together(prompts[4:]))
    alone = [_complete(url, _greedy_body(p, n)) for p in prompts]
    assert scrape(url)["vllm:generation_tokens_total"] - before == 2 * n * len(prompts)
    compared = 0
    for p, b, a in zip(prompts, batched, alone):
        k = _decided(a, MARGIN)
        assert b["logprobs"]["tokens"][:k] == a["logprobs"]["tokens"][:k], (p, k)
        compared += k
    assert compared >= 0.6 * n * len(prompts), f"only {compared} tokens clear of a near-tie"


# ---------------------------------------------------------------- load


async def _stream(client: httpx.AsyncClient, i: int, max_tokens: int) -> int:
    """One sampled stream: the completion tokens its usage chunk counts."""
    body = {"prompt": f"Story number {i}: once upon a time", "max_tokens": max_tokens, "stream": True,
            "temperature": 0.8, "seed": i, "ignore_eos": True, "stream_options": {"include_usage": True}}
    n = None
    async with client.stream("POST", "/v1/completions", json=body) as r:
        assert r.status_code == 200
        async for line in r.aiter_lines():
            if line.startswith("data: {") and json.loads(line[6:]).get("usage"):
                n = json.loads(line[6:])["usage"]["completion_tokens"]
            if line == "data: [DONE]":
                return n
    raise AssertionError("the stream ended without [DONE]")


def _idle(url: str, within_s: float) -> dict[str, float]:
    """/metrics once nothing runs and no KV block is held (fails after ``within_s``)."""
    end = time.monotonic() + within_s
    m = scrape(url)
    while m["vllm:num_requests_running"] or m["rocmforge:kv_blocks_used"]:
        assert time.monotonic() < end, m
        time.sleep(0.1)
        m = scrape(url)
    return m


def test_32_streams_a_third_cancelled_then_the_pool_is_empty(f32):
    url = f32

    async def go():
        async with httpx.AsyncClient(base_url=url, timeout=120, limits=httpx.Limits(max_connections=64)) as c:
            # the ones to cancel ask for far more than 0.5 s of tokens: they are mid-stream when cancelled
            tasks = [asyncio.create_task(_stream(c, i, 480 if i % 3 == 0 else 16)) for i in range(32)]
            await asyncio.sleep(0.5)
            live = 0
            for t in tasks[::3]:
                live += not t.done()
                t.cancel()
            results = await asyncio.gather(*tasks, return_exceptions=True)
        return live, [r for i, r in enumerate(results) if i % 3]

    live, finished = asyncio.run(go())
    assert live == len(range(0, 32, 3)), f"only {live} of the cancelled streams were still running"
    assert finished == [16] * len(finished), finished
    m = _idle(url, 10)     # the engine frees a cancelled request before its next step
    assert m["vllm:num_requests_waiting"] == 0 and m["vllm:kv_cache_usage_perc"] == 0
    t0 = time.monotonic()
    r = httpx.post(url + "/v1/completions", json={"prompt": "Hello", "max_tokens": 4, "ignore_eos": True}, timeout=30)
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 4
    assert time.monotonic() - t0 < 5
    assert httpx.get(url + "/health", timeout=10).status_code == 200


# ---------------------------------------------------------------- GPU == CPU


def test_gpu_and_cpu_servers_agree(f32, cpu_f32):
    """F32: the same greedy tokens while the CPU's choice is clear by 2 * LOGPROB_TOL, their logprobs within
    LOGPROB_TOL; and every logprob of the CPU's whole greedy text, fed back as a prompt (echo: the prefill
    path), within LOGPROB_TOL."""
    gpu, cpu = f32, cpu_f32
    tokens, _ = _vocabulary()
    from rocmforge.tokenizer_gguf import _byte_alphabet

    text = {c: bytes([b]).decode("latin-1") for b, c in _byte_alphabet().items()}
    token_id = {"".join(text.get(ch, ch) for ch in t) if i else t: i for i, t in enumerate(tokens)}
    n, compared = 10, 0
    for p in PROMPTS:
        ref, got = _complete(cpu, _greedy_body(p, n)), _complete(gpu, _greedy_body(p, n))
        k = _decided(ref, 2 * LOGPROB_TOL)
        assert got["logprobs"]["tokens"][:k] == ref["logprobs"]["tokens"][:k], (p, k)
        dl = np.abs(np.subtract(got["logprobs"]["token_logprobs"][:k], ref["logprobs"]["token_logprobs"][:k]))
        assert (dl <= LOGPROB_TOL).all(), (p, dl)
        compared += k
        ids = httpx.post(cpu + "/tokenize", json={"prompt": p}, timeout=10).json()["tokens"]
        ids += [token_id[t] for t in ref["logprobs"]["tokens"]]
        echo = {"prompt": ids, "max_tokens": 1, "echo": True, "logprobs": 0}
        a = _complete(cpu, echo)["logprobs"]["token_logprobs"][1:len(ids)]
        b = _complete(gpu, echo)["logprobs"]["token_logprobs"][1:len(ids)]
        assert len(a) == len(b) == len(ids) - 1
        d = np.abs(np.subtract(a, b))
        assert (d <= LOGPROB_TOL).all(), (p, d.max())
    assert compared >= 15, f"only {compared} greedy tokens clear of a near-tie"
