"""load_model refuses what the forward pass could not run: missing tensors (per layer, with the
recipe's conditions), per-layer hparams that disagree with the recipe, and unknown architectures
(naming the plugin to install where one is known)."""

import numpy as np
import pytest

import rocmforge
from rocmforge.errors import ModelFormatError, TensorMapError, UnknownArchitectureError


def _write_llama_gguf(path, drop=(), head_count_kv=2, n_layer=2, arch="llama"):
    import gguf

    rng = np.random.default_rng(0)
    d, ff, vocab, heads = 64, 96, 128, 4
    w = gguf.GGUFWriter(str(path), arch)
    w.add_uint32(f"{arch}.block_count", n_layer)
    w.add_uint32(f"{arch}.embedding_length", d)
    w.add_uint32(f"{arch}.feed_forward_length", ff)
    w.add_uint32(f"{arch}.attention.head_count", heads)
    if isinstance(head_count_kv, list):
        w.add_array(f"{arch}.attention.head_count_kv", head_count_kv)
    else:
        w.add_uint32(f"{arch}.attention.head_count_kv", head_count_kv)
    w.add_float32(f"{arch}.attention.layer_norm_rms_epsilon", 1e-5)
    kv = head_count_kv[0] if isinstance(head_count_kv, list) else head_count_kv
    shapes = {"token_embd": (vocab, d), "output_norm": (d,), "output": (vocab, d)}
    for i in range(n_layer):
        shapes.update({f"blk.{i}.attn_norm": (d,), f"blk.{i}.attn_q": (d, d), f"blk.{i}.attn_k": (kv * 16, d),
                       f"blk.{i}.attn_v": (kv * 16, d), f"blk.{i}.attn_output": (d, d), f"blk.{i}.ffn_norm": (d,),
                       f"blk.{i}.ffn_gate": (ff, d), f"blk.{i}.ffn_up": (ff, d), f"blk.{i}.ffn_down": (d, ff)})
    for name, shape in shapes.items():
        if name not in drop:
            w.add_tensor(name + ".weight", rng.standard_normal(shape).astype(np.float32) * 0.1)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_complete_gguf_loads_and_runs(tmp_path):
    m = rocmforge.load_model(_write_llama_gguf(tmp_path / "ok.gguf"), tokenizer=False)
    assert np.isfinite(m.logits([1, 2, 3])).all()


def test_missing_ffn_down_fails_in_load_model(tmp_path):
    path = _write_llama_gguf(tmp_path / "no-down.gguf", drop={"blk.0.ffn_down", "blk.1.ffn_up"})
    with pytest.raises(TensorMapError) as exc:
        rocmforge.load_model(path, tokenizer=False)
    msg = str(exc.value)
    assert "blk.0.ffn_down" in msg and "blk.1.ffn_up" in msg and "2 tensor(s)" in msg


def test_uniform_per_layer_array_reads_as_one_value(tmp_path):
    m = rocmforge.load_model(_write_llama_gguf(tmp_path / "arr.gguf", head_count_kv=[2, 2]), tokenizer=False)
    assert m.hparams["n_head_kv"] == 2


def test_differing_per_layer_values_are_refused(tmp_path):
    path = _write_llama_gguf(tmp_path / "mixed.gguf", head_count_kv=[2, 1])
    with pytest.raises(ModelFormatError, match=r"'n_head_kv' differs between layers \(\[2, 1\]\)"):
        rocmforge.load_model(path, tokenizer=False)


def test_unknown_arch_names_the_plugin_to_install(tmp_path):
    path = _write_llama_gguf(tmp_path / "phi3.gguf", arch="phi3")
    with pytest.raises(UnknownArchitectureError, match=r"pip install rocmforge-phi3"):
        rocmforge.load_model(path, tokenizer=False)


def test_per_layer_hparam_lengths_are_checked():
    from rocmforge.hparams import resolve_hparams
    from rocmforge.registry import get

    recipe = get("gemma3").recipe_obj
    meta = {"architectures": ["Gemma3ForCausalLM"], "num_hidden_layers": 3, "hidden_size": 64,
            "num_attention_heads": 4, "intermediate_size": 96, "vocab_size": 256,
            "layer_types": ["sliding_attention", "full_attention"]}
    with pytest.raises(ModelFormatError, match=r"'swa_layers' has 2 per-layer values for 3 layers"):
        resolve_hparams(recipe, "hf", meta, {}, "cfg")
    meta["layer_types"] = ["sliding_attention", "full_attention", "chunked_attention"]
    with pytest.raises(ModelFormatError, match=r"'chunked_attention'; this architecture supports"):
        resolve_hparams(recipe, "hf", meta, {}, "cfg")
    meta["layer_types"] = ["full_attention", "sliding_attention", "sliding_attention"]
    assert resolve_hparams(recipe, "hf", meta, {}, "cfg")["swa_layers"] == [False, True, True]
    del meta["layer_types"]
    meta["sliding_window_pattern"] = 2     # no list in the file: the period rule
    assert resolve_hparams(recipe, "hf", meta, {}, "cfg")["swa_layers"] == [True, False, True]
