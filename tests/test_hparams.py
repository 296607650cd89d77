"""Hyperparameters: metadata lookup, defaults, derivation from tensor shapes and the cross-check."""

import pytest

from rocmforge.errors import ModelFormatError
from rocmforge.hparams import resolve_hparams
from rocmforge.registry import get

LLAMA_META = {
    "general.architecture": "llama", "llama.block_count": 2, "llama.embedding_length": 64,
    "llama.attention.head_count": 4, "llama.feed_forward_length": 96,
}
SHAPES = {"token_embd": (256, 64), "blk.0.ffn_up": (96, 64), "blk.1.ffn_up": (96, 64)}


def resolve(meta, shapes=SHAPES, arch="llama", fmt="gguf"):
    return resolve_hparams(get(arch).recipe_obj, fmt, meta, shapes, "model.gguf")


def test_metadata_defaults_and_derived_values():
    hp = resolve(LLAMA_META)
    assert hp["n_embd"] == 64 and hp["n_head_kv"] == 4 and hp["head_dim"] == 16
    assert hp["vocab_size"] == 256          # no metadata key: derived from token_embd rows
    assert hp["norm_eps"] == 1e-5 and hp["rope_scaling_type"] == "none"


@pytest.mark.parametrize("key,value,tensor", [
    ("llama.embedding_length", 80, "token_embd"),
    ("llama.feed_forward_length", 128, "blk.0.ffn_up"),
    ("llama.vocab_size", 300, "token_embd"),
])
def test_metadata_that_disagrees_with_the_tensors_is_refused(key, value, tensor):
    with pytest.raises(ModelFormatError, match=rf"model.gguf: metadata says \w+={value} but tensor '{tensor}'"):
        resolve({**LLAMA_META, key: value})


def test_missing_required_hparam_names_the_keys_looked_for():
    meta = {k: v for k, v in LLAMA_META.items() if k != "llama.block_count"}
    with pytest.raises(ModelFormatError, match=r"required hyperparameter 'n_layer' not found.*llama.block_count"):
        resolve(meta)


def test_hf_nested_keys():
    config = {"num_hidden_layers": 2, "hidden_size": 64, "num_attention_heads": 4, "intermediate_size": 96,
              "rope_parameters": {"rope_type": "llama3", "rope_theta": 5e5, "factor": 8.0}}
    hp = resolve(config, fmt="hf")
    assert hp["rope_theta"] == 5e5 and hp["rope_scaling_type"] == "llama3" and hp["rope_scaling_factor"] == 8.0
