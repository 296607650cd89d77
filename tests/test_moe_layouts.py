"""MoE expert layouts in HF folders: per-expert tensors (stacked by ``{j}``) and
transformers' fused ``gate_up_proj`` (split by ``hf_fused``) give the same model."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from rocmforge.errors import TensorMapError
from rocmforge.registry import get

pytest.importorskip("transformers")
torch = pytest.importorskip("torch")

PROMPT = [3, 17, 42, 99, 7, 250, 128, 64]


def _tiny(arch: str, name: str) -> dict:
    return next(t for t in get(arch).recipe_obj.tiny if t["name"] == name)


def _per_expert_folder(arch: str, name: str, tmp_path):
    from rocmforge.testing.tiny import make_hf_model

    t = _tiny(arch, name)
    return make_hf_model(t["hf_class"], t["config"], tmp_path / "per_expert", seed=3)


def _fused_folder(src, tmp_path):
    """The same weights saved under transformers' in-memory names (fused experts)."""
    import transformers
    from safetensors.torch import save_file

    model = transformers.AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    if model.config.tie_word_embeddings:
        state.pop("lm_head.weight", None)
    assert any(k.endswith("experts.gate_up_proj") for k in state), "transformers no longer fuses experts"
    dst = tmp_path / "fused"
    dst.mkdir()
    shutil.copy(src / "config.json", dst / "config.json")
    save_file(state, str(dst / "model.safetensors"), metadata={"format": "pt"})
    return dst


@pytest.mark.parametrize(("arch", "name"), [("llama", "mixtral-moe"), ("qwen2moe", "qwen2moe-shared"),
                                            ("qwen3moe", "qwen3moe-headdim")])
def test_fused_and_per_expert_layouts_agree(arch, name, tmp_path):
    from rocmforge import load_model

    per = _per_expert_folder(arch, name, tmp_path)
    fused = _fused_folder(per, tmp_path)
    a = load_model(str(per), tokenizer=False)
    b = load_model(str(fused), tokenizer=False)
    assert a.arch == b.arch == arch
    assert b.tensors["blk.0.ffn_gate_exps"].raw.shape == a.tensors["blk.0.ffn_gate_exps"].raw.shape
    np.testing.assert_array_equal(a.logits(PROMPT), b.logits(PROMPT))


def test_missing_expert_is_a_clear_error(tmp_path):
    from safetensors.numpy import load_file, save_file

    from rocmforge import load_model

    per = _per_expert_folder("llama", "mixtral-moe", tmp_path)
    tensors = load_file(str(per / "model.safetensors"))
    del tensors["model.layers.1.block_sparse_moe.experts.2.w3.weight"]
    save_file(tensors, str(per / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(TensorMapError, match=r"blk\.1\.ffn_up_exps.*part\(s\) \[2\] are missing"):
        load_model(str(per), tokenizer=False)


def test_dropped_last_expert_is_a_clear_error(tmp_path):
    from safetensors.numpy import load_file, save_file

    from rocmforge import load_model

    per = _per_expert_folder("llama", "mixtral-moe", tmp_path)
    tensors = load_file(str(per / "model.safetensors"))
    for w in ("w1", "w2", "w3"):
        del tensors[f"model.layers.0.block_sparse_moe.experts.3.{w}.weight"]
    save_file(tensors, str(per / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(TensorMapError, match="expert counts differ"):
        load_model(str(per), tokenizer=False).logits(PROMPT)
