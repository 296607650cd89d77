"""Mamba-2 / attention hybrids beyond their conformance tiny models.

granitemoehybrid: llama.cpp's converter picks attention layers by ``layer_types == "attention"`` (the
names Hub checkpoints carry), while transformers>=5 saves "full_attention", so the conformance suite's
llama.cpp check cannot run on its tiny model; here the same model, with the Hub's names, goes through
the converter. A second model covers the other branches: no experts (the shared MLP alone) and rope.

falcon_h1: its tiny model has no Mamba norm (as released); here the gated norm normalises before the
gate, and the Mamba in/out projections carry biases (mamba_proj_bias, projectors_bias).
"""

from __future__ import annotations

import json
import shutil

import pytest

from rocmforge import load_model
from rocmforge.registry import architectures
from rocmforge.testing.conformance import NMSE_EXACT, NMSE_TRANSFORMERS, PROMPT, nmse

pytest.importorskip("transformers")

_HUB_NAMES = {"linear_attention": "mamba", "full_attention": "attention"}


def _tiny(arch: str, **changes) -> tuple[str, dict]:
    tiny = architectures()[arch].recipe_obj.tiny[0]
    return tiny["hf_class"], {**tiny["config"], **changes}


def test_granitemoehybrid_llamacpp_gguf_with_hub_layer_names(tmp_path):
    from rocmforge.config_audit import unaccounted_gguf
    from rocmforge.testing.llamacpp import convert, source_dir
    from rocmforge.testing.tiny import hf_logits, make_hf_model

    src = source_dir()
    if src is None:
        pytest.skip("llama.cpp's converter is not available")
    hf_class, config = _tiny("granitemoehybrid")
    folder = make_hf_model(hf_class, config, tmp_path / "hf", seed=1)
    hub = shutil.copytree(folder, tmp_path / "hub")
    cfg = json.loads((hub / "config.json").read_text())
    cfg["layer_types"] = [_HUB_NAMES[t] for t in cfg["layer_types"]]
    (hub / "config.json").write_text(json.dumps(cfg))
    convert(hub, tmp_path / "llamacpp.gguf", src)
    m = load_model(str(tmp_path / "llamacpp.gguf"), tokenizer=False)
    assert m.metadata["granitehybrid.attention.head_count_kv"] == [0, 2, 0]   # how llama.cpp marks Mamba layers
    assert not unaccounted_gguf(m.spec.recipe_obj, "granitehybrid", set(m.metadata))
    prompt = [p % 256 for p in PROMPT]
    ref = hf_logits(folder, prompt)
    for model in (m, load_model(str(hub), tokenizer=False)):
        e = nmse(model.logits(prompt), ref)
        assert e <= NMSE_TRANSFORMERS, f"{model.arch}: NMSE {e:.3g}"


def test_granitemoehybrid_dense_with_rope(tmp_path):
    """num_local_experts 0: shared_mlp is the layer's FFN (ffn_gate/up/down); rope on the attention layer."""
    from rocmforge.testing.tiny import hf_logits, hf_to_gguf, make_hf_model

    hf_class, config = _tiny("granitemoehybrid", num_local_experts=0, num_hidden_layers=2,
                             layer_types=["attention", "mamba"], position_embedding_type="rope")
    folder = make_hf_model(hf_class, config, tmp_path / "hf", seed=2)
    prompt = [p % 256 for p in PROMPT]
    m = load_model(str(folder), tokenizer=False)
    assert m.hparams["use_rope"] and m.hparams["n_expert"] == 0
    got = m.logits(prompt)
    e = nmse(got, hf_logits(folder, prompt))
    assert e <= NMSE_TRANSFORMERS, f"NMSE {e:.3g}"
    g = load_model(str(hf_to_gguf(folder, tmp_path / "m.gguf")), tokenizer=False)
    assert g.hparams["use_rope"] and g.hparams["ssm_layer"] == [False, True]
    assert nmse(g.logits(prompt), got) <= NMSE_EXACT


def test_falcon_h1_norm_before_gate_and_projection_biases(tmp_path):
    from rocmforge.testing.tiny import hf_logits, hf_to_gguf, make_hf_model

    hf_class, config = _tiny("falcon_h1", mamba_rms_norm=True, mamba_norm_before_gate=True, mamba_proj_bias=True,
                             projectors_bias=True)
    folder = make_hf_model(hf_class, config, tmp_path / "hf", seed=2)
    prompt = [p % 256 for p in PROMPT]
    m = load_model(str(folder), tokenizer=False)
    assert m.hparams["ssm_rms_norm"] and m.hparams["norm_before_gate"] and m.hparams["ssm_out_bias"]
    got = m.logits(prompt)
    e = nmse(got, hf_logits(folder, prompt))
    assert e <= NMSE_TRANSFORMERS, f"NMSE {e:.3g}"
    # GGUF: the flags come back from the tensors the file holds (and our norm_before_gate key)
    g = load_model(str(hf_to_gguf(folder, tmp_path / "m.gguf")), tokenizer=False)
    assert g.hparams["ssm_rms_norm"] and g.hparams["ssm_in_bias"] and g.hparams["ssm_out_bias"]
    assert nmse(g.logits(prompt), got) <= NMSE_EXACT
