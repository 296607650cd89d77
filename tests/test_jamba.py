"""Jamba: which layers attend / hold experts (per-layer hparams from metadata, tensors or the config's
periods), and the Mamba projection / conv bias switches against transformers."""

import numpy as np
import pytest

from rocmforge.hparams import resolve_hparams
from rocmforge.registry import get

CONFIG = {"num_hidden_layers": 4, "hidden_size": 64, "num_attention_heads": 4, "num_key_value_heads": 2,
          "intermediate_size": 64, "num_experts": 4, "mamba_dt_rank": 4, "vocab_size": 256,
          "attn_layer_period": 2, "attn_layer_offset": 1, "expert_layer_period": 2, "expert_layer_offset": 0}


def _hp(fmt, meta, shapes):
    return resolve_hparams(get("jamba").recipe_obj, fmt, meta, shapes, "model")


def test_layer_kinds_from_the_config_periods_without_tensors():
    hp = _hp("hf", CONFIG, {})
    assert hp["kv_heads"] == [0, 2, 0, 2]
    assert hp["layer_experts"] == [4, 0, 4, 0]


def test_expert_layers_are_the_layers_holding_a_router():
    # llama.cpp's GGUF writes no expert period: the routers say which layers are MoE (not the default 2/1)
    meta = {"general.architecture": "jamba", "jamba.block_count": 4, "jamba.embedding_length": 64,
            "jamba.attention.head_count": 4, "jamba.attention.head_count_kv": [2, 0, 0, 2],
            "jamba.feed_forward_length": 64, "jamba.ssm.time_step_rank": 4}
    shapes = {"token_embd": (256, 64), "blk.0.ffn_gate_inp": (8, 64), "blk.2.ffn_gate_inp": (8, 64)}
    hp = _hp("gguf", meta, shapes)
    assert hp["kv_heads"] == [2, 0, 0, 2]
    assert hp["layer_experts"] == [8, 0, 8, 0]


def test_mamba_projection_bias_and_no_conv_bias_match_transformers(tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from rocmforge import load_model
    from rocmforge.testing.conformance import NMSE_TRANSFORMERS, PROMPT, nmse
    from rocmforge.testing.tiny import hf_logits, make_hf_model

    config = {"model_type": "jamba", **{k: v for k, v in CONFIG.items() if k != "num_hidden_layers"},
              "num_hidden_layers": 2, "num_experts_per_tok": 2, "mamba_proj_bias": True, "mamba_conv_bias": False,
              "max_position_embeddings": 64}
    folder = make_hf_model("JambaForCausalLM", config, tmp_path / "hf", seed=3)
    ids = PROMPT[:12]
    m = load_model(str(folder), tokenizer=False)
    assert "blk.0.ssm_in.bias" in m.tensors and "blk.0.ssm_conv1d.bias" not in m.tensors
    e = nmse(m.logits(ids), hf_logits(folder, ids))
    assert np.isfinite(e) and e <= NMSE_TRANSFORMERS, e
