"""LFM2 beyond its conformance model: the FFN width the config implies, conv biases, and what the
short convolution keeps as its state."""

from __future__ import annotations

import numpy as np
import pytest

from rocmforge.hparams import resolve_hparams
from rocmforge.registry import architectures

transformers = pytest.importorskip("transformers")
pytest.importorskip("torch")


@pytest.mark.parametrize("ff,auto,mult,multiple", [(100, True, 1.5, 16), (12288, True, 1.0, 256),
                                                   (8192, True, 1.0, 256), (200, False, 1.0, 256),
                                                   (1000, True, 0.8, 9)])
def test_ffn_width_is_transformers(ff, auto, mult, multiple):
    """The recipe's n_ff from intermediate_size and the block_* keys == the width Lfm2MLP builds."""
    cfg = transformers.Lfm2Config(hidden_size=8, num_attention_heads=2, num_key_value_heads=1, intermediate_size=ff,
                                  block_auto_adjust_ff_dim=auto, block_ffn_dim_multiplier=mult,
                                  block_multiple_of=multiple, num_hidden_layers=2, layer_types=["conv", "full_attention"])
    want = transformers.models.lfm2.modeling_lfm2.Lfm2MLP(cfg).w1.out_features
    hp = resolve_hparams(architectures()["lfm2"].recipe_obj, "hf", cfg.to_dict(), {}, "test")
    assert hp["n_ff"] == want
    assert hp["conv_layers"] == [True, False] and hp["kv_heads"] == [0, 1]


@pytest.fixture(scope="module")
def biased(tmp_path_factory):
    """A conv, attention LFM2 with conv_bias (in_proj, conv and out_proj biases) and a 4-tap conv."""
    from rocmforge.testing.tiny import make_hf_model

    cfg = {"model_type": "lfm2", "vocab_size": 256, "hidden_size": 64, "intermediate_size": 96,
           "block_auto_adjust_ff_dim": False, "num_hidden_layers": 2, "num_attention_heads": 4,
           "num_key_value_heads": 2, "layer_types": ["conv", "full_attention"], "conv_L_cache": 4,
           "conv_bias": True, "max_position_embeddings": 256, "tie_word_embeddings": True}
    return make_hf_model("Lfm2ForCausalLM", cfg, tmp_path_factory.mktemp("lfm2") / "biased", seed=3)


IDS = [5, 17, 200, 3, 99, 41, 7, 128, 64, 250, 11, 2]


def test_conv_bias_matches_transformers(biased):
    from rocmforge import load_model
    from rocmforge.testing.tiny import hf_logits

    m = load_model(str(biased), tokenizer=False)
    assert m.hparams["conv_bias"] and m.hparams["l_cache"] == 4
    assert "blk.0.shortconv.conv.bias" in m.tensors
    ref = hf_logits(biased, IDS)
    got = m.logits(IDS)
    assert float(((got - ref) ** 2).sum() / (ref ** 2).sum()) < 1e-10
    s = m.new_session(len(IDS))
    rows = [s.feed(IDS[:5], all_logits=True)] + [s.feed([t], all_logits=True) for t in IDS[5:]]
    assert float(((np.concatenate(rows) - got) ** 2).sum() / (got ** 2).sum()) < 1e-10


def test_conv_state_is_the_last_inputs(biased):
    """After a prompt, a conv layer's state is the last L - 1 rows of B * x (of in_proj's B and x chunks);
    attention layers hold none."""
    from safetensors.numpy import load_file

    from rocmforge import load_model

    m = load_model(str(biased), tokenizer=False)
    s = m.new_session(len(IDS))
    s.feed(IDS)
    assert s.state.layers() == [0]
    w = load_file(str(biased / "model.safetensors"))
    x = w["model.embed_tokens.weight"][IDS]
    h = x / np.sqrt((x * x).mean(-1, keepdims=True) + 1e-5) * w["model.layers.0.operator_norm.weight"]
    bcx = h @ w["model.layers.0.conv.in_proj.weight"].T + w["model.layers.0.conv.in_proj.bias"]
    B, _, xs = np.split(bcx, 3, axis=1)
    np.testing.assert_allclose(s.state.get(0, "conv"), (B * xs)[-3:], rtol=1e-5, atol=1e-6)
