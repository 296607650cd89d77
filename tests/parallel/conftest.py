"""Tiny random models for the tensor-parallel tests, written once per session (HF folders and GGUF files)."""

from pathlib import Path

import numpy as np
import pytest

# Hidden and feed-forward widths that split into whole Q4_0 / Q8_0 blocks (32) over 2 and 4 ranks:
# o and ffn_down are cut along their input dimension (128 / 4 = 32), which the recipe tiny models'
# 64 / 96 do not allow.
# blocky-llama8: 8 query heads (2 KV heads, replicated from 4 ranks on) for 8 GPUs.
_LLAMA = {"model_type": "llama", "vocab_size": 256, "num_hidden_layers": 2, "max_position_embeddings": 512,
          "rms_norm_eps": 1.0e-5, "tie_word_embeddings": False}
BLOCKY = {
    "blocky-llama": {**_LLAMA, "hidden_size": 128, "intermediate_size": 128, "num_attention_heads": 4,
                     "num_key_value_heads": 2},
    "blocky-llama8": {**_LLAMA, "hidden_size": 256, "intermediate_size": 256, "num_attention_heads": 8,
                      "num_key_value_heads": 2},
}


@pytest.fixture(scope="session")
def tiny_path(tmp_path_factory):
    """tiny_path(arch, name, form="hf") -> the folder or GGUF file (form: hf, F32, Q8_0, Q4_0, ...) of a
    tiny model: the recipe's tiny model ``name``, or one of BLOCKY."""
    pytest.importorskip("transformers")
    pytest.importorskip("torch")
    from rocmforge.registry import architectures
    from rocmforge.testing.tiny import hf_to_gguf, make_hf_model

    built: dict[tuple[str, str], Path] = {}

    def make(arch: str, name: str, form: str = "hf") -> Path:
        if (name, "hf") not in built:
            if name in BLOCKY:
                hf_class, config = "LlamaForCausalLM", BLOCKY[name]
            else:
                t = next(t for t in architectures()[arch].recipe_obj.tiny if t["name"] == name)
                hf_class, config = t["hf_class"], t["config"]
            built[name, "hf"] = make_hf_model(hf_class, config, tmp_path_factory.mktemp(name), seed=5)
        if (name, form) not in built:
            built[name, form] = hf_to_gguf(built[name, "hf"], built[name, "hf"].parent / f"{name}-{form}.gguf", form)
        return built[name, form]

    return make


def greedy(model, prompt: list[int], n: int) -> tuple[list[int], np.ndarray]:
    """n greedy tokens after ``prompt`` through a Session (prefill, then one decode step each), and the
    logits of the last step."""
    s = model.new_session(len(prompt) + n + 1)
    logits = s.feed(prompt)
    out = []
    for _ in range(n):
        out.append(int(np.argmax(logits)))
        logits = s.feed([out[-1]])
    return out, logits
